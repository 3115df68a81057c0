"""Device probe: the GPU cost of each stream operation around a replayed decode step (random weights, default
model's shapes, context 512): 32 steps back to back with only some of the pieces, CUDA events around the loop; how
long the host's forward() (plan copy from pageable memory, launch) takes with a graph in flight; and decode ahead's
loop at depths 1, 2 and 4. "sideread" (stop 25): the ids' copy on a stream of its own after an event, as a bound on
what moving it off the step's stream could give; "sideguard": the same, each replay waiting for the copy of the
replay before (which it would overwrite). Usage: python3 notes/scripts/step_gaps.py"""
import time
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.backends.cuda_steps import CapturedStep
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree
import cupyx

cp = require_gpu()
print(card_name(), flush=True)
be = CudaBackend()
cfg = smollm2_135m_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be)
context = 512
cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
table = []
cache.prepare(table, 0, context + 64)
plan = build_plan([StepItem.tree(table, context, Tree.single(7))], 16)
seen = []
fill = CapturedStep.fill
CapturedStep.fill = lambda self, p, stream: (seen.append(self), fill(self, p, stream))[1]
ids = model.forward(plan, cache).argmax_device()
step = seen[-1]
s = be.stream
pinned = cupyx.empty_pinned((1,), np.int32)
side = cp.cuda.Stream(non_blocking=True)  # "sideread": the ids' copy on a stream of its own, after an event


def loop(parts, n=32):
    a, b = cp.cuda.Event(), cp.cuda.Event()
    a.record(s)
    copied = None
    for _ in range(n):
        if "fill" in parts:
            step.fill(plan, s)
        if "tokens" in parts:
            step.plan.tokens[:1] = step.ids[:1]
        if copied is not None:  # "sideguard": the next replay (which overwrites the ids) waits for their copy
            s.wait_event(copied)
        step.graph.launch(s)
        if "read" in parts:
            be.to_host_soon(step.ids[:1])
        if "sideread" in parts or "sideguard" in parts:
            done = cp.cuda.Event(disable_timing=True)
            done.record(s)
            side.wait_event(done)
            cp.cuda.runtime.memcpyAsync(pinned.ctypes.data, step.ids.data.ptr, 4, cp.cuda.runtime.memcpyDeviceToHost, side.ptr)
            if "sideguard" in parts:
                copied = cp.cuda.Event(disable_timing=True)
                copied.record(side)
        if "d2h" in parts:
            cp.cuda.runtime.memcpyAsync(pinned.ctypes.data, step.ids.data.ptr, 4, cp.cuda.runtime.memcpyDeviceToHost, s.ptr)
    b.record(s)
    b.synchronize()
    return cp.cuda.get_elapsed_time(a, b) * 1e3 / n


def fill_time():  # the host's forward() behind a graph in flight: a copy that waited for the graph would take ~600 µs
    out = []
    for _ in range(20):
        model.forward(plan, cache)
        t = time.perf_counter()
        model.forward(plan, cache)
        out.append(time.perf_counter() - t)
        s.synchronize()
    return np.median(out) * 1e6


print(f"forward() host time with a graph in flight (pageable plan copy): {fill_time():.1f} us", flush=True)
cases = [(), ("fill",), ("tokens",), ("d2h",), ("read",), ("sideread",), ("fill", "tokens"), ("fill", "tokens", "read"),
         ("fill", "tokens", "sideread"), ("fill", "tokens", "sideguard")]
for _ in range(2):
    for parts in cases:
        t = np.median([loop(parts) for _ in range(7)])
        print(f"graph + {'+'.join(parts) or 'nothing':<20} {t:7.1f} us/step", flush=True)

# the ahead loop of bench_gpu.decode_ahead_time, varied: one plan for every step or a new one per step (build_plan),
# and the host waiting for step i - depth's token
def ahead(depth, new_plans, n=32):
    reads = []
    a, b = cp.cuda.Event(), cp.cuda.Event()
    a.record(s)
    ids = None
    for i in range(n):
        p = build_plan([StepItem.tree(table, context + i, Tree.single(0))], 16) if new_plans else plan
        ids = model.forward(p, cache, ids).argmax_device()
        reads.append(be.to_host_soon(ids))
        if len(reads) > depth:
            reads.pop(0)()
    for r in reads:
        r()
    b.record(s)
    b.synchronize()
    return cp.cuda.get_elapsed_time(a, b) * 1e3 / n

for _ in range(2):
    for depth in (1, 2, 4):
        for new_plans in (False, True):
            t = np.median([ahead(depth, new_plans) for _ in range(7)])
            print(f"ahead depth {depth} {'new plans' if new_plans else 'one plan '} {t:7.1f} us/step", flush=True)
