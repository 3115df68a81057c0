"""Device probe: where the host's share of a replayed step goes (random weights, context 512, batch 1), per T:
GPU time of the step's graph launched back to back; the host's time in graph.launch alone, in replay (plan fill,
copy and launch) and in forward + argmax to the host (as bench e2e's step_times runs a step); and that step's
time measured as bench e2e measures it.
  python3 notes/scripts/launch_probe.py [8b] [smol]"""
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, smollm2_135m_config, time_gpu  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
print(card_name(), "µs", flush=True)


def host_us(fn, reps=20):
    times = []
    for _ in range(reps):
        cp.cuda.runtime.deviceSynchronize()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cp.cuda.runtime.deviceSynchronize()
    return float(np.median(times)) * 1e6


for name in sys.argv[1:] or ["8b", "smol"]:
    cfg = llama_8b_config() if name == "8b" else smollm2_135m_config()
    be = CudaBackend()
    model = Model(cfg, random_model_on_gpu(cfg, be), be)
    captured = []
    put = be.graphs.put
    be.graphs.put = lambda objects, extra, value: captured.append(value) or put(objects, extra, value)
    rng = np.random.default_rng(0)
    for T in (1, 16, 32, 64):
        cache = model.new_cache(-(-(512 + 64) // 16) + 1, 16)
        table = []
        cache.prepare(table, 0, 512 + 64)
        parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
        plan = build_plan([StepItem.tree(table, 512, Tree(rng.integers(0, 1000, T), parents))], 16)
        model.forward(plan, cache).argmax()
        graph = captured[-1].graph
        gpu = time_gpu(lambda: [graph.launch(be.stream) for _ in range(20)], 2, 10) / 20 * 1e6
        launch = host_us(lambda: graph.launch(be.stream))
        replay = host_us(lambda: be.replay(model, plan, cache))
        step_host = host_us(lambda: model.forward(plan, cache).argmax())
        step = time_gpu(lambda: model.forward(plan, cache).argmax(), 2, 10) * 1e6
        print(f"{name} T={T:2d}: graph alone {gpu:8.1f}  host: launch {launch:6.1f}  replay {replay:6.1f}  "
              f"forward+argmax {step_host:8.1f}  step as bench e2e times it {step:8.1f}", flush=True)
    del model
    cp.get_default_memory_pool().free_all_blocks()
