"""Device probe: the fused-layers kernel's logits on a seeded random model with the default model's shapes, for
decode and tree steps of 4 and 16 rows at a few contexts, saved to $OUT/<tag>.npz: run it in two builds in one call
and compare the files (same bits expected where a change keeps every sum's order).
Usage: PYTHONPATH=$PWD python3 notes/scripts/fused_bits.py TAG"""
import os
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import random_bf16, random_model_on_gpu, require_gpu, smollm2_135m_config  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
cp.random.seed(0)
config = smollm2_135m_config()
backend = CudaBackend()
model = Model(config, random_model_on_gpu(config, backend), backend)
rng = np.random.default_rng(0)
out = {}
for context in (100, 250, 600, 3000):
    cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, context + 64)
    for pages in (*cache.k, *cache.v):  # the context's K/V: seeded, as every layer's pages are read
        pages[...] = random_bf16(cp, pages.shape)
    for T in (1, 4, 16):
        parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
        plan = build_plan([StepItem.tree(table, context, Tree(rng.integers(0, 1000, T), parents))], 16)
        out[f"c{context}_t{T}"] = cp.asnumpy(model.forward(plan, cache).device)
np.savez(os.path.join(os.environ.get("OUT", "."), sys.argv[1] + ".npz"), **out)
print(sys.argv[1], {k: float(np.abs(v).sum()) for k, v in out.items()})
