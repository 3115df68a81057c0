"""Device probe: the prefill of a short prompt on the default model's shapes (random weights, no download): the
replayed graph's GPU time per prompt length (ten forwards back to back between two events, so the host's fills
run ahead of the GPU), against one decode step and one T = 16 tree step at the same context; with `ncu N`, the
kernels of one N-token prefill (eager, for ncu to time one by one):
  python3 notes/scripts/prefill_probe.py [N ...]
  ncu --clock-control none --nvtx --nvtx-include "step/" --metrics gpu__time_duration.sum --csv \
      python3 notes/scripts/prefill_probe.py ncu 84
"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config, time_gpu  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
config = smollm2_135m_config()
backend = CudaBackend()
model = Model(config, random_model_on_gpu(config, backend), backend)
rng = np.random.default_rng(0)
cache = model.new_cache(64, 16)
table = []
cache.prepare(table, 0, 1000)


def prefill_plan(n):
    return build_plan([StepItem.chunk(table, 0, rng.integers(0, 1000, n))], 16)


if sys.argv[1:2] == ["ncu"]:
    backend.use_graphs = False
    plan = prefill_plan(int(sys.argv[2]))
    model.forward(plan, cache).argmax()
    cp.cuda.nvtx.RangePush("step")
    model.forward(plan, cache).argmax()
    cp.cuda.nvtx.RangePop()
    sys.exit()

print(card_name(), "SmolLM2-135M shapes, random weights; µs of GPU time a forward (graphs replayed, 10 back to back)")
for n in [int(a) for a in sys.argv[1:]] or [40, 64, 84, 110, 128, 200]:
    plans = {"prefill": prefill_plan(n), "decode": build_plan([StepItem.tree(table, n, Tree.single(1))], 16),
             "tree T=16": build_plan([StepItem.tree(table, n, Tree(rng.integers(0, 1000, 16), list(range(-1, 15))))], 16)}
    cells = []
    for name, plan in plans.items():
        seconds = time_gpu(lambda: [model.forward(plan, cache) for _ in range(10)], 2, 5) / 10
        cells.append(f"{name} {seconds * 1e6:.0f}")
    print(f"{n:>4} tokens: " + ", ".join(cells), flush=True)
