"""A/B of step graphs: µs per replay (20 back to back) of model.forward(plan) on random weights.
usage (repo root): [CASES=512/1,512/8] [SET="knob=value ..."] PYTHONPATH=$PWD python3 notes/scripts/graph_ab.py TAG [smol,8b,8bfused] [nopdl]
(nopdl: every launch through CuPy, without programmatic dependent launch, so no kernel overlaps the one before it;
SET: backend attributes set on each model's CudaBackend, values Python literals, e.g. SET=fused_max_rows=0 for the
layer-by-layer path where the fused kernel would serve)
An older build beside it: `git archive REV minispec kernels | tar -x -C .old`, then in .old
`PYTHONPATH=$PWD python3 ../notes/scripts/graph_ab.py old` (the script imports whichever minispec is on the path)."""
import ast
import hashlib
import os
import sys
import numpy as np
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import llama_8b_config, random_model_on_gpu, require_gpu, smollm2_135m_config, time_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree
import minispec
cp = require_gpu()
tag = sys.argv[1]
models = sys.argv[2].split(",") if len(sys.argv) > 2 else ["smol", "8b"]
print(tag, minispec.__file__, flush=True)
CASES = {"smol": [(513, 1), (513, 4), (513, 16), (1024, 1), (2049, 1), (2049, 4), (2049, 16), (4100, 1)],
         "8b": [(512, 1), (512, 4), (512, 16), (512, 64), (2049, 1), (2049, 16), (2049, 64)],
         "8bfused": [(513, 1), (2049, 1), (4100, 1)]}
if os.environ.get("CASES"):  # CASES=512/1,512/8: these (context, T) for every model instead
    CASES = {name: [tuple(int(v) for v in case.split("/")) for case in os.environ["CASES"].split(",")] for name in CASES}
for name in models:
    cfg = llama_8b_config() if name.startswith("8b") else smollm2_135m_config()
    be = CudaBackend()
    be.pdl = be.pdl and "nopdl" not in sys.argv[3:]
    for item in os.environ.get("SET", "").split():
        knob, value = item.split("=", 1)
        if not hasattr(be, knob):
            raise SystemExit(f"graph_ab: the backend has no {knob}")
        setattr(be, knob, ast.literal_eval(value))
    cp.random.seed(0)  # the same weights and pages in every build: equal digests mean equal bits
    model = Model(cfg, random_model_on_gpu(cfg, be), be)
    captured = []
    put = be.graphs.put
    be.graphs.put = lambda o, e, v: captured.append(v) or put(o, e, v)
    out = []
    for ctx, T in CASES[name]:
        rng = np.random.default_rng(T)
        cache = model.new_cache(-(-(ctx + 64) // 16) + 1, 16)
        table = []
        cache.prepare(table, 0, ctx + 64)
        for pages in cache.k + cache.v:  # K/V of the context: random bf16
            pages[...] = (cp.random.standard_normal(pages.shape, dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16)
        parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
        plan = build_plan([StepItem.tree(table, ctx, Tree(rng.integers(0, 1000, T), parents))], 16)
        logits = model.forward(plan, cache).host()
        digest = hashlib.sha1(np.ascontiguousarray(logits).tobytes()).hexdigest()[:8]  # equal digests: equal bits
        g = captured[-1].graph
        t = time_gpu(lambda: [g.launch(be.stream) for _ in range(20)], 3, 10) / 20 * 1e6
        out.append(f"{ctx}/T{T} {t:.1f} [{digest}]")
        del cache
    print(f"{tag} {name}: " + "  ".join(out), flush=True)
    del model, captured
    be.graphs.put = put
    cp.get_default_memory_pool().free_all_blocks()
