"""Device probe: decode on Llama-3.1-8B shapes (random weights), the fused-layers launch against the layer-by-layer
graph, alternating in one process (the same weights and pages), µs a step (its graph launched 20 times back to back).
Until the end of stop 18 CudaBackend.fused_row_limit sent 1-2 row steps of large models to the fused kernel; this
A/B (fused forced with fused_max_rows = 2, layered with 0) moved them layer by layer.
usage (repo root): PYTHONPATH=$PWD python3 notes/scripts/fused_vs_layered.py [contexts, default 513,2049,4100] [8b | 1b]
(1b: Llama-3.2-1B's shapes, a model between the two sizes stop 18 measured)"""
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, llama_8b_config, random_bf16, random_model_on_gpu, require_gpu, time_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
args = sys.argv[1:]
contexts = [int(c) for c in args[0].split(",")] if args and args[0][0].isdigit() else [513, 2049, 4100]
if "1b" in args:
    from minispec.config import ModelConfig

    cfg = ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                      head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=True)
else:
    cfg = llama_8b_config()
be = CudaBackend()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
captured = []
put = be.graphs.put
be.graphs.put = lambda o, e, v: captured.append(v) or put(o, e, v)
print(card_name(), "1B" if "1b" in args else "8B", "shapes, decode, µs a step", flush=True)
for ctx in contexts:
    cache = model.new_cache(-(-(ctx + 64) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, ctx + 64)
    for pages in cache.k + cache.v:
        pages[...] = random_bf16(cp, pages.shape)
    plan = build_plan([StepItem.tree(table, ctx, Tree.single(int(np.random.default_rng(ctx).integers(0, 1000))))], 16)
    times, graphs = {"fused": [], "layered": []}, {}
    for _ in range(3):
        for name, limit in (("fused", 2), ("layered", 0)):
            be.fused_max_rows = limit
            before = len(captured)
            model.forward(plan, cache).argmax()
            if len(captured) > before:  # this setting's step, captured now (the launch settings are part of its key)
                graphs[name] = captured[-1].graph
            graph = graphs[name]
            times[name].append(time_gpu(lambda: [graph.launch(be.stream) for _ in range(20)], 3, 10) / 20 * 1e6)
    print(f"context {ctx}: fused " + " / ".join(f"{t:.1f}" for t in times["fused"]) + "   layered "
          + " / ".join(f"{t:.1f}" for t in times["layered"]), flush=True)
    del cache
