"""Device probe: the host's µs in each piece of a replayed tree step (Model.forward -> CudaBackend.replay), timed
inline with perf_counter on a random model with the default model's shapes, T = 16 at 120 keys: the plan, the
graph lookup, CapturedStep.fill's NumPy writes, the upload (CuPy's ndarray.set from pageable memory, and the same copy
as one cudaMemcpyAsync call), the graph launch; then the ids' read after the step (cp.asnumpy after a synchronize,
and StepLogits.fetch_argmax's copy queued at launch, waited for). Medians of 300 steps, each after the last finished.
python3 notes/scripts/replay_host_probe.py"""
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_steps import CapturedStep, context_bucket  # noqa: E402
from minispec.step import pow2_bucket  # noqa: E402
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402

backend = CudaBackend()
cfg = smollm2_135m_config()
model = Model(cfg, random_model_on_gpu(cfg, backend), backend)
cache = model.new_cache(16, 16)
table = []
cache.prepare(table, 0, 120 + 16)
tree = Tree(list(range(1, 17)), [-1] + list(range(15)))
seen = []
fill = CapturedStep.fill
CapturedStep.fill = lambda self, plan, stream: (seen.append(self), fill(self, plan, stream))[1]
for _ in range(3):
    model.forward(build_plan([StepItem.tree(table, 120, tree)], 16), cache).argmax()
CapturedStep.fill = fill
step, stream, runtime = seen[-1], backend.stream, cp.cuda.runtime
times = {}


class NoUpload:  # fill's copy skipped: the NumPy writes alone
    class data:
        ptr = 0



def clock(name, start):
    now = time.perf_counter()
    times.setdefault(name, []).append((now - start) * 1e6)
    return now


for i in range(300):
    t = time.perf_counter()
    plan = build_plan([StepItem.tree(table, 120, tree)], 16)
    t = clock("build_plan", t)
    backend.can_replay(plan, model)
    t = clock("can_replay", t)
    settings = (backend.fused_max_rows, backend.fused_blocks, id(backend.fused_clock), id(backend.cluster_clock), backend.attention_warps,
                backend.attention_splits, backend.attention_wgmma, backend.pdl, backend.cluster_decode)
    key = (plan.batch_size, pow2_bucket(plan.num_tokens), context_bucket(plan.max_kv_len), plan.has_causal, settings)
    assert backend.graphs.get((model, cache), key) is step
    t = clock("graph key and lookup", t)
    packed, step.packed, memcpy = step.packed, NoUpload, runtime.memcpyAsync
    runtime.memcpyAsync = lambda *args: None
    step.fill(plan, stream)
    step.packed, runtime.memcpyAsync = packed, memcpy
    t = clock("fill: NumPy writes", t)
    if i % 2:
        step.packed.set(step.host)
        t = clock("upload: ndarray.set", t)
    else:
        runtime.memcpyAsync(step.packed.data.ptr, step.host.ctypes.data, step.host.nbytes, runtime.memcpyHostToDevice, stream.ptr)
        t = clock("upload: one memcpyAsync", t)
    step.graph.launch(stream)
    t = clock("graph launch", t)
    ids = step.ids[:16]
    if i % 2:
        stream.synchronize()
        t = time.perf_counter()
        cp.asnumpy(ids)
        clock("ids: cp.asnumpy after the step", t)
    else:
        read = backend.to_host_soon(ids)
        t = clock("ids: copy queued at launch", t)
        stream.synchronize()
        t = time.perf_counter()
        read()
        clock("ids: read after the step", t)
print(card_name(), "T = 16, 120 keys; host µs, median (min) of", len(times["build_plan"]), "steps or half of them")
for name, values in times.items():
    print(f"  {name:<32} {np.median(values):7.1f} ({min(values):.1f})")
