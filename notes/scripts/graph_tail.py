"""Device probe: what a decode step's graph spends beyond the fused-layers kernel (random weights, the default
model's shapes): the whole graph replayed back to back against block 0's kernel span, then each op of the graph's
tail timed alone as a captured graph of 20 calls (the barrier memset, the embedding, the final norm, the LM head
on cuBLAS and on gemm_stream, the two argmax kernels). Usage: python3 notes/scripts/graph_tail.py [contexts]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.backends.cuda_steps import CapturedStep  # noqa: E402
from minispec.bench_gpu import (  # noqa: E402
    card_name, copy_bandwidth, fused_stamps, random_model_on_gpu, require_gpu, smollm2_135m_config, time_captured, time_gpu)
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
cfg = smollm2_135m_config()
backend = CudaBackend()
model = Model(cfg, random_model_on_gpu(cfg, backend), backend)
w = model.weights
print(card_name(), "SmolLM2-135M shapes, random weights", flush=True)
contexts = [int(a) for a in sys.argv[1:] if a.isdigit()] or [100, 512]
seen = []
fill = CapturedStep.fill
CapturedStep.fill = lambda self, p, stream: (seen.append(self), fill(self, p, stream))[1]
for context in contexts:
    cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, context + 64)
    plan = build_plan([StepItem.tree(table, context, Tree.single(7))], 16)
    model.forward(plan, cache).argmax_device()
    step = seen[-1]

    def loop(n=16):
        for _ in range(n):
            step.graph.launch(backend.stream)

    graph = time_gpu(loop, 2, 7) / 16
    stamps = fused_stamps(model, 1, context)
    span = (stamps[6 * cfg.num_layers] - stamps[0]) / 1e3
    print(f"context {context}: decode graph {graph * 1e6:.1f} µs back to back, fused kernel span (block 0) {span:.1f} µs, "
          f"rest {graph * 1e6 - span:.1f} µs", flush=True)

tokens = cp.asarray([7], dtype=cp.int32)
x = cp.asarray(np.random.default_rng(0).standard_normal((1, cfg.hidden_size)), dtype=cp.float32)
h, _ = backend.add_rmsnorm(x, None, w.final_norm, cfg.rms_norm_eps)
logits = backend.linear(h, w.lm_head)
barrier = cp.empty(32 * 64, dtype=cp.uint32)
ops = {
    "barrier memset": lambda: cp.cuda.runtime.memsetAsync(barrier.data.ptr, 0, barrier.nbytes, backend.stream.ptr),
    "embedding": lambda: backend.embedding(w.embed, tokens),
    "final norm": lambda: backend.add_rmsnorm(x, None, w.final_norm, cfg.rms_norm_eps),
    "LM head (engine's choice)": lambda: backend.linear(h, w.lm_head),
    "argmax (share + merge)": lambda: backend.argmax_device(logits),
    "LM head + argmax": lambda: backend.argmax_device(backend.linear(h, w.lm_head)),
    "norm + LM head + argmax": lambda: backend.argmax_device(backend.linear(backend.add_rmsnorm(x, None, w.final_norm, cfg.rms_norm_eps)[0], w.lm_head)),
}
floor_bytes = w.lm_head.nbytes
print(f"LM head weight floor {floor_bytes / copy_bandwidth() * 1e6:.1f} µs ({floor_bytes / 1e6:.1f} MB at the measured copy bandwidth)")
for name, fn in ops.items():
    print(f"{name:<28} {time_captured(fn) * 1e6:7.1f} µs", flush=True)
for M in (1, 4, 16):
    hM = cp.ascontiguousarray(cp.broadcast_to(h, (M, cfg.hidden_size)))
    times = []
    for gemm in ("own", "cublas"):
        backend.gemm = gemm
        times.append(time_captured(lambda: backend.linear(hM, w.lm_head)) * 1e6)
    backend.gemm = None
    print(f"LM head M={M:<2}: own {times[0]:6.1f} µs, cuBLAS {times[1]:6.1f} µs, engine's choice "
          f"{'own' if backend.own_gemm_chosen(M, *w.lm_head.shape) else 'cuBLAS'}", flush=True)
