"""Device probe: the host's part of a replayed tree step (Model.forward: the graph's fill and launch) and of its ids'
copy back, on a random model with the default model's shapes: the mean host µs of forward and of argmax over 300
steps, then a cProfile of 300 more (tottime per function, the C calls among them).
python3 notes/scripts/forward_host_probe.py [T] [context]"""
import cProfile
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

require_gpu()
T = int(sys.argv[1]) if len(sys.argv) > 1 else 16
context = int(sys.argv[2]) if len(sys.argv) > 2 else 120
cfg = smollm2_135m_config()
backend = CudaBackend()
model = Model(cfg, random_model_on_gpu(cfg, backend), backend)
cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
table = []
cache.prepare(table, 0, context + 64)
tree = Tree(list(range(1, T + 1)), [-1] + list(range(T - 1)))
plan = build_plan([StepItem.tree(table, context, tree)], 16)
for _ in range(5):
    model.forward(plan, cache).argmax()
spent = {"forward": 0.0, "argmax": 0.0}
N = 300
for _ in range(N):
    start = time.perf_counter()
    logits = model.forward(plan, cache)
    middle = time.perf_counter()
    backend.stream.synchronize()
    done = time.perf_counter()
    logits.argmax()
    spent["forward"] += middle - start
    spent["argmax"] += time.perf_counter() - done
print(card_name(), f"T = {T}, {context} keys: host µs a step, forward {spent['forward'] / N * 1e6:.1f}, argmax after the step {spent['argmax'] / N * 1e6:.1f}")
profile = cProfile.Profile()
profile.enable()
for _ in range(N):
    model.forward(plan, cache).argmax()
profile.disable()
pstats.Stats(profile).sort_stats("tottime").print_stats(22)
