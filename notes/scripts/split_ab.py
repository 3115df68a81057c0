"""Device probe: attention's key shares in the 8B layer-by-layer decode step (random weights), by turns in one
process: the rule's count (attention_split_count: 8 at 512 keys, batch 1) against forced counts, each step's graph
captured anew, at a few contexts; plain decode (T = 1) and decode one step ahead.

    PYTHONPATH=$PWD python3 notes/scripts/split_ab.py [rounds] [splits,...] [context,...]
"""
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, copy_bandwidth, decode_ahead_time, in_turn, llama_8b_config, random_model_on_gpu, require_gpu, step_times, weight_bytes
from minispec.model import Model

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["rule", "1", "2", "4"]
CONTEXTS = [int(c) for c in sys.argv[3].split(",")] if len(sys.argv) > 3 else [512, 2048]
be = CudaBackend()
cfg = llama_8b_config()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
floor = weight_bytes(model.weights) / copy_bandwidth()
print(f"# split_ab on {card_name()}: 8B shapes, weight floor {floor * 1e3:.3f} ms; ms a step", flush=True)
results = {}
for r in range(ROUNDS):
    for variant in in_turn(VARIANTS, r):
        be.attention_splits = None if variant == "rule" else int(variant)
        cells = []
        for context in CONTEXTS:
            t = step_times(model, context, tree_sizes=())[1]
            ahead = decode_ahead_time(model, context)
            results.setdefault((variant, context, "T=1"), []).append(t)
            results.setdefault((variant, context, "ahead"), []).append(ahead)
            cells.append(f"{context}: {t * 1e3:.3f} / {ahead * 1e3:.3f}")
        print(f"round {r} splits {variant:5s} (T=1 / ahead) " + "  ".join(cells), flush=True)
be.attention_splits = None
print("medians: ms (x floor)")
for variant in VARIANTS:
    cells = [f"{c} {kind} {np.median(results[(variant, c, kind)]) * 1e3:.3f} ({np.median(results[(variant, c, kind)]) / floor:.3f}x)"
             for c in CONTEXTS for kind in ("T=1", "ahead")]
    print(f"splits {variant:5s} " + "  ".join(cells), flush=True)
