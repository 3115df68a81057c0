"""Device probe: decode on Llama-3.1-8B shapes (random weights), the fused-layers launch against the layer-by-layer
graph, alternating in one process (the same weights and pages), µs a step (its graph launched 20 times back to back).
CudaBackend.fused_row_limit sends 1-2 row steps of large models to the fused kernel; this checks that choice.
usage (repo root): PYTHONPATH=$PWD python3 notes/scripts/fused_vs_layered.py [contexts, default 513,2049,4100]"""
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, time_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
contexts = [int(c) for c in sys.argv[1].split(",")] if len(sys.argv) > 1 else [513, 2049, 4100]
cfg = llama_8b_config()
be = CudaBackend()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
captured = []
put = be.graphs.put
be.graphs.put = lambda o, e, v: captured.append(v) or put(o, e, v)
print(card_name(), "8B shapes, decode, µs a step", flush=True)
for ctx in contexts:
    cache = model.new_cache(-(-(ctx + 64) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, ctx + 64)
    for pages in cache.k + cache.v:
        pages[...] = (cp.random.standard_normal(pages.shape, dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16)
    plan = build_plan([StepItem.tree(table, ctx, Tree.single(int(np.random.default_rng(ctx).integers(0, 1000))))], 16)
    times, graphs = {"fused": [], "layered": []}, {}
    for _ in range(3):
        for name, limit in (("fused", None), ("layered", 0)):
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
