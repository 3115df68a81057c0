"""Device probe: the mma.sync attention's key shares merged inside their cluster (the rule since stop 46,
CudaBackend.attention_merge_cluster: at most 8 shares) against attention_merge behind the kernel (as many shares as
attention_split_count gives, up to 32), in the 8B step at longer contexts, by turns in one process: plain decode and
T = 4 (both on the 4-warp mma.sync kernel below 16k keys), ms a step (bench_gpu.step_times).

    PYTHONPATH=$PWD python3 notes/scripts/cluster_merge_contexts.py [rounds] [context,...]
"""
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, in_turn, llama_8b_config, random_model_on_gpu, require_gpu, step_times
from minispec.model import Model

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
CONTEXTS = [int(c) for c in sys.argv[2].split(",")] if len(sys.argv) > 2 else [512, 2048, 4096, 8000]
be = CudaBackend()
cfg = llama_8b_config()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
print(f"# cluster_merge_contexts on {card_name()}: 8B shapes, ms a step (cluster: shares merged in the kernel's cluster; "
      "merge: attention_merge)", flush=True)
results = {}
for r in range(ROUNDS):
    for variant in in_turn(["cluster", "merge"], r):
        be.attention_cluster_merge = None if variant == "cluster" else False
        for context in CONTEXTS:
            for T, t in step_times(model, context, tree_sizes=(4,)).items():
                results.setdefault((variant, context, T), []).append(t)
        print(f"round {r} {variant}: " + "  ".join(f"{c}: {results[(variant, c, 1)][-1] * 1e3:.3f} / {results[(variant, c, 4)][-1] * 1e3:.3f}"
                                                   for c in CONTEXTS), flush=True)
print("medians, T = 1 / T = 4 ms (cluster / merge)")
for context in CONTEXTS:
    cells = []
    for T in (1, 4):
        c, m = (float(np.median(results[(v, context, T)])) for v in ("cluster", "merge"))
        cells.append(f"T={T} {c * 1e3:.3f} / {m * 1e3:.3f} ({c / m:.3f}x)")
    print(f"context {context:5d}: " + "  ".join(cells), flush=True)
