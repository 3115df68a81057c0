"""Device probe: where a layer-by-layer step's time goes, op by op (8B shapes, random weights, context 512).

  python3 notes/scripts/op_times.py [T ...]

For each T: the whole step replayed as its CUDA graph, then every op of a layer timed alone as a captured graph of
20 calls (bench_gpu.time_captured), with consecutive calls on consecutive layers' weights and caches (as the step
reads them), and the sum of the ops over the layers beside the step. The gap between the two is launch spacing and
the ops' ramps inside the step's graph."""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, time_captured, time_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
sizes = [int(a) for a in sys.argv[1:]] or [64, 1]
be = CudaBackend()
cfg = llama_8b_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be)
w, L = model.weights, cfg.num_layers
H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
context = 512
cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
table = []
cache.prepare(table, 0, context + 64)
rng = np.random.default_rng(0)
print(f"# op_times on {card_name()}: 8B shapes, context {context}, µs")
for T in sizes:
    parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
    plan = build_plan([StepItem.tree(table, context, Tree(rng.integers(0, 1000, T), parents))], 16)
    step = time_gpu(lambda: model.forward(plan, cache).argmax(), 2, 10) * 1e6
    fused = be.fused_rows(model, be.prepare_plan(plan))
    dp = be.prepare_plan(plan)
    x = cp.asarray(rng.standard_normal((T, cfg.hidden_size), dtype=np.float32))
    h, residual = be.add_rmsnorm(x, None, w.layers[0].attn_norm, cfg.rms_norm_eps)
    qkv = be.linear(h, w.layers[0].wqkv)
    q = be.rope_write_kv(qkv, dp, model.inv_freq, cache.k[0], cache.v[0], H, Hkv, D)
    o = be.attention(q, cache.k[0], cache.v[0], dp, model.scale)
    act = be.gate_up_silu(h, w.layers[0].w_gate_up)
    counter = iter(range(10**9))

    def layer():  # the next layer's index, so weights and caches rotate as in the step
        return next(counter) % L

    ops = {
        "add_rmsnorm": lambda: be.add_rmsnorm(x, residual, w.layers[layer()].attn_norm, cfg.rms_norm_eps),
        "qkv gemm": lambda: be.linear(h, w.layers[layer()].wqkv),
        "rope_write_kv": lambda: (lambda i: be.rope_write_kv(qkv, dp, model.inv_freq, cache.k[i], cache.v[i], H, Hkv, D))(layer()),
        "attention (+merge)": lambda: (lambda i: be.attention(q, cache.k[i], cache.v[i], dp, model.scale))(layer()),
        "o gemm": lambda: be.linear(o, w.layers[layer()].wo),
        "gate/up + SiLU·mul": lambda: be.gate_up_silu(h, w.layers[layer()].w_gate_up),
        "down gemm": lambda: be.linear(act, w.layers[layer()].w_down),
    }
    print(f"T = {T}: step {step:.1f} ({'fused ' + str(fused) + ' rows' if fused else 'layer by layer'})")
    total = 0.0
    for name, fn in ops.items():
        t = time_captured(fn) * 1e6
        per_step = t * (2 if name == "add_rmsnorm" else 1) * L
        total += per_step
        print(f"  {name:20s} {t:8.2f}   x{2 * L if name == 'add_rmsnorm' else L} = {per_step:8.1f}")
    hf = be.add_rmsnorm(x, residual, w.final_norm, cfg.rms_norm_eps)[0]
    head = time_captured(lambda: be.argmax_device(be.logits(hf, w.lm_head))) * 1e6
    total += head
    print(f"  {'lm head + argmax':20s} {head:8.2f}")
    print(f"  sum of ops {total:.1f}, step {step:.1f}, gap {step - total:.1f} ({(step - total) / L:.2f} per layer)")
