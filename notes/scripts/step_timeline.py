"""Device probe: where a captured 8B step's time goes inside its graph, kernel by kernel (CUPTI activity records).

  python3 notes/scripts/step_timeline.py [T ...] [NAME=VALUE ...]   (needs cupti-python; random 8B weights, context 512)

NAME=VALUE sets a CudaBackend attribute first (a Python literal: gemm_norm=True, attention_splits=4), as the A/B
scripts' variants do.

op_times.py times each op alone, 20 in a row; inside the step the ops overlap their neighbours (programmatic
dependent launch) or wait on them, and the step differs from the ops' sum. Here CUPTI records every kernel node's
start and end in replays of the step's graph. A kernel's share of the step is its marginal time: its end less the
latest end before it (0 where it finishes under an earlier kernel). Printed per position in a layer (the mean over
the middle layers) with the kernel's own span and the idle time before it (start after every earlier end)."""
import ast
import sys
from collections import defaultdict

from cupti import cupti  # before CuPy makes its context, so kernel records start with it

records = []


def buffer_requested():
    return 16 * 1024 * 1024, 0


def buffer_completed(activities):
    for a in activities:
        if a.kind == cupti.ActivityKind.CONCURRENT_KERNEL:
            records.append((a.start, a.end, a.name, a.grid_x * a.grid_y * a.grid_z))


cupti.activity_register_callbacks(buffer_requested, buffer_completed)
cupti.activity_enable(cupti.ActivityKind.CONCURRENT_KERNEL)

import numpy as np  # noqa: E402

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, time_gpu  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402


def short(name: str) -> str:
    """A kernel's name without its C++ decoration (CuPy's name expressions are mangled)."""
    for prefix in ("_Z", "void "):
        name = name.removeprefix(prefix)
    while name[:1].isdigit():
        name = name[1:]
    return name[:48]


def period(names: list[str]) -> int:
    """The kernels a layer launches: the shortest shift under which the middle of the step repeats."""
    n = len(names)
    for p in range(2, n // 4):
        mid = range(n // 4, 3 * n // 4 - p)
        if all(names[i] == names[i + p] for i in mid):
            return p
    raise ValueError("no repeating layer pattern")


cp = require_gpu()
sizes = [int(a) for a in sys.argv[1:] if "=" not in a] or [64, 1]
be = CudaBackend()
for name, value in (a.split("=", 1) for a in sys.argv[1:] if "=" in a):
    if not hasattr(be, name):
        raise SystemExit(f"CudaBackend has no attribute {name!r}")
    setattr(be, name, ast.literal_eval(value))
cfg = llama_8b_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be)
context, replays = 512, 5
cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
table = []
cache.prepare(table, 0, context + 64)
rng = np.random.default_rng(0)
print(f"# step_timeline on {card_name()}: 8B shapes, context {context}, µs; a kernel's marginal time is its end less "
      f"the latest end before it, idle the time no kernel ran before it; set: {[a for a in sys.argv[1:] if '=' in a]}")
for T in sizes:
    parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
    plan = build_plan([StepItem.tree(table, context, Tree(rng.integers(0, 1000, T), parents))], 16)
    step = lambda: model.forward(plan, cache).argmax()  # noqa: E731
    traced = time_gpu(step, 3, 10) * 1e6
    cupti.activity_flush_all(1)
    records.clear()
    for _ in range(replays):
        step()
        cp.cuda.Device().synchronize()
    cupti.activity_flush_all(1)
    runs = sorted(records)
    n = len(runs) // replays
    if n * replays != len(runs):
        print(f"T = {T}: {len(runs)} kernel records for {replays} replays, not a multiple; skipped")
        continue
    cupti.activity_disable(cupti.ActivityKind.CONCURRENT_KERNEL)
    untraced = time_gpu(step, 3, 10) * 1e6
    cupti.activity_enable(cupti.ActivityKind.CONCURRENT_KERNEL)
    names = [short(r[2]) for r in runs[:n]]
    p = period(names)
    first = next(i for i in range(n) if all(names[j] == names[j + p] for j in range(i, i + p)))
    layers = (n - first) // p
    spans, marginal, idle = [], [], []
    for r in range(replays):
        run = runs[r * n:(r + 1) * n]
        latest = run[0][0]
        m, g = [], []
        for start, end, _, _ in run:
            g.append(max(0, start - latest) / 1e3)
            m.append(max(0, end - latest) / 1e3)
            latest = max(latest, end)
        spans.append((run[-1][1] - run[0][0]) / 1e3)
        marginal.append(m)
        idle.append(g)
    marginal, idle = np.median(marginal, axis=0), np.median(idle, axis=0)
    own = np.median([[(e - s) / 1e3 for s, e, _, _ in runs[r * n:(r + 1) * n]] for r in range(replays)], axis=0)
    print(f"\nT = {T}: {n} kernels a step, {p} a layer from kernel {first}; step {traced:.1f} traced, {untraced:.1f} "
          f"untraced (events), first start to last end {np.median(spans):.1f}; marginal sum {marginal.sum():.1f}, "
          f"idle {idle.sum():.1f}")
    per_pos = defaultdict(list)
    middle = range(first + 2 * p, first + (layers - 2) * p)
    for i in middle:
        per_pos[(i - first) % p].append(i)
    print(f"  {'kernel (one layer, mean of layers 2..' + str(layers - 3) + ')':<52} {'blocks':>6} {'own':>7} {'marginal':>9} {'idle':>6} {'x layers':>9}")
    for pos in range(p):
        ix = per_pos[pos]
        print(f"  {names[ix[0]]:<52} {runs[ix[0]][3]:>6} {own[ix].mean():7.2f} {marginal[ix].mean():9.2f} "
              f"{idle[ix].mean():6.2f} {marginal[ix].mean() * layers:9.1f}")
    rest = [i for i in range(n) if not first <= i < first + layers * p]
    print("  outside the layers: " + ", ".join(f"{names[i]} {marginal[i]:.1f}" for i in rest))
