"""Device probe: where a decode-ahead step's time goes beyond its graph (random weights, default model's shapes).

1. How long the host spends in CapturedStep.fill's copy (`packed.set`, pageable memory) while a graph runs: if the
   driver synchronises with the stream, it waits for the graph ahead, and decoding one step ahead overlaps nothing.
2. Seconds per step: the graph replayed back to back (no host reads), decode_ahead_time as bench e2e runs it, and
   the same with the plan staged through pinned memory (two buffers, each reused after its copy's event)."""
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from minispec.backends import cuda_backend
from minispec.backends.cuda_backend import CudaBackend, CapturedStep
from minispec.bench_gpu import card_name, decode_ahead_time, random_model_on_gpu, require_gpu, smollm2_135m_config
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

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
model.forward(plan, cache).argmax()

# 1. the fill's host time while the graph ahead runs
def fill_time():
    out = []
    for _ in range(20):
        model.forward(plan, cache)  # graph in flight
        t = time.perf_counter()
        model.forward(plan, cache)  # fill (copy) + launch, behind it
        out.append(time.perf_counter() - t)
        be.stream.synchronize()
    return np.median(out) * 1e6

def replay_b2b(n=32):
    ids = model.forward(plan, cache).argmax_device()
    s = be.stream
    a, b = cp.cuda.Event(), cp.cuda.Event()
    a.record(s)
    for _ in range(n):
        ids = model.forward(plan, cache, ids).argmax_device()
    b.record(s)
    b.synchronize()
    return cp.cuda.get_elapsed_time(a, b) * 1e3 / n

# the host's own work per step of the ahead loop (build_plan, forward's fill and launch, the ids copy), GPU left running
def host_work(steps=32):
    ids = model.forward(plan, cache).argmax_device()
    spent = 0.0
    reads = []
    for i in range(steps):
        t = time.perf_counter()
        p = build_plan([StepItem.tree(table, context + (i % 8), Tree.single(0))], 16)
        ids = model.forward(p, cache, ids).argmax_device()
        reads.append(be.to_host_soon(ids))
        spent += time.perf_counter() - t
    be.stream.synchronize()
    return spent / steps * 1e6

print(f"pageable fill: forward() host time with a graph in flight {fill_time():.1f} us", flush=True)
print(f"back to back (fill + tokens copy + graph): {np.median([replay_b2b() for _ in range(7)]):.1f} us/step", flush=True)
print(f"host work per step, pageable: {np.median([host_work() for _ in range(5)]):.1f} us", flush=True)
print(f"decode ahead (pageable plan): {decode_ahead_time(model, context) * 1e6:.1f} us/step", flush=True)

# pinned staging, two buffers
original_init, original_fill = CapturedStep.__init__, CapturedStep.fill
import cupyx

def init(self, cp_, *args, **kw):
    original_init(self, cp_, *args, **kw)
    self.pinned = [cupyx.empty_pinned(self.host.shape, np.int32) for _ in range(2)]
    self.copied = [None, None]
    self.turn = 0

def fill(self, plan_):
    pageable = self.host
    b = self.turn
    self.turn ^= 1
    if self.copied[b] is not None:
        self.copied[b].synchronize()
    self.host = self.pinned[b]
    self.tables = self.host[self.offsets[9] : self.offsets[10]].reshape(self.B, self.W)
    try:
        n, host, o = plan_.num_tokens, self.host, self.offsets
        host[:] = 0
        host[o[0] : o[0] + 2 * n] = plan_.masks.view(np.int32)
        host[o[1] : o[1] + n] = plan_.tokens
        host[o[2] : o[2] + n] = plan_.positions
        host[o[3] : o[4]] = -1
        host[o[3] : o[3] + n] = plan_.slots
        host[o[4] : o[5]] = self.rows
        host[o[4] : o[4] + len(plan_.logit_rows)] = plan_.logit_rows
        host[o[5] : o[6]] = plan_.cu_q
        host[o[6] : o[7]] = plan_.kv_len
        host[o[7] : o[8]] = plan_.tree_start
        host[o[8] : o[9]] = plan_.causal
        host[o[9] : o[10]] = -1
        self.tables[:, : plan_.page_tables.shape[1]] = plan_.page_tables
        stream = cuda_backend._STREAM
        cp.cuda.runtime.memcpyAsync(self.packed.data.ptr, host.ctypes.data, host.nbytes, cp.cuda.runtime.memcpyHostToDevice, stream.ptr)
        ev = cp.cuda.Event(disable_timing=True)
        ev.record(stream)
        self.copied[b] = ev
    finally:
        self.host = pageable

CapturedStep.__init__, CapturedStep.fill = init, fill
be.graphs.clear()
model.forward(plan, cache).argmax()
print(f"pinned fill: forward() host time with a graph in flight {fill_time():.1f} us", flush=True)
print(f"back to back, pinned: {np.median([replay_b2b() for _ in range(7)]):.1f} us/step", flush=True)
print(f"host work per step, pinned: {np.median([host_work() for _ in range(5)]):.1f} us", flush=True)
print(f"decode ahead (pinned plan): {decode_ahead_time(model, context) * 1e6:.1f} us/step", flush=True)
CapturedStep.__init__, CapturedStep.fill = original_init, original_fill
be.graphs.clear()
model.forward(plan, cache).argmax()
print(f"again pageable: decode ahead {decode_ahead_time(model, context) * 1e6:.1f} us/step, back to back {np.median([replay_b2b() for _ in range(7)]):.1f}", flush=True)
