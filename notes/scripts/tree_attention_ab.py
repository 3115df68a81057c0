"""Device probe: attention's launch at T = 64 in the 8B layer-by-layer tree verify step (random weights, context
512; the T = 64 ratio's largest per-layer growth over T = 1 after gate/up, notes/op_times_h200_stop38.log), by
turns in one process. For each variant: the attention op alone (a captured graph of 20 calls over consecutive
layers' caches, as op_times.py) and the whole T = 64 step (step_times, its graph captured anew).

  rule      the committed rules (wgmma kernel, 8 key shares at the 1k-key bucket, 2 producers, 64-key tiles)
  sN        N key shares
  mma       the 8-warp mma.sync kernel instead of wgmma
  w4        the 4-warp mma.sync kernel (64-row tiles)
  w8        the 8-warp kernel (mma.sync, or wgmma where the rule takes it)
  p1        one TMA producer warp
  kN        the wgmma kernel's key tiles of N keys (64 or 128; attention_keys)
  wg        the wgmma kernel wherever 8 warps run (attention_wgmma)
  A+B       both

    PYTHONPATH=$PWD [ATT_T=T] [ATT_CONTEXT=keys] python3 notes/scripts/tree_attention_ab.py [rounds] [variant,...]

ATT_T (default 64) sets the tree size: 1 is a decode step (the step column is then the plain step); ATT_CONTEXT
(default 512) the keys before the tree; the step is timed up to the 8B config's 8192 positions.
"""
import os
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, in_turn, llama_8b_config, random_model_on_gpu, require_gpu, step_times, time_captured
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["rule", "s4", "s16", "mma", "w4"]
CONTEXT, T = int(os.environ.get("ATT_CONTEXT", 512)), int(os.environ.get("ATT_T", 64))
be = CudaBackend()
cfg = llama_8b_config()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
H, Hkv, D, L = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
cache = model.new_cache(-(-(CONTEXT + T) // 16) + 1, 16)
table = []
cache.prepare(table, 0, CONTEXT + T)
rng = np.random.default_rng(0)
parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
plan = be.prepare_plan(build_plan([StepItem.tree(table, CONTEXT, Tree(rng.integers(0, 1000, T), parents))], 16))
q = cp.asarray(rng.standard_normal((T, H, D), dtype=np.float32))
for i in range(L):  # K/V pages of every layer filled (random, in the storage type)
    cache.k[i][...] = be.convert(rng.standard_normal(cache.k[i].shape, dtype=np.float32))
    cache.v[i][...] = be.convert(rng.standard_normal(cache.v[i].shape, dtype=np.float32))
KNOBS = ("attention_splits", "attention_wgmma", "attention_warps", "attention_producers", "attention_keys")


def apply(variant):
    for knob in KNOBS:
        setattr(be, knob, None)
    for part in variant.split("+"):
        if part.startswith("s"):
            be.attention_splits = int(part[1:])
        elif part == "mma":
            be.attention_wgmma = False
        elif part == "w4":
            be.attention_warps = 4
        elif part == "w8":
            be.attention_warps = 8
        elif part == "p1":
            be.attention_producers = 1
        elif part.startswith("k"):
            be.attention_keys = int(part[1:])
        elif part == "wg":
            be.attention_warps, be.attention_wgmma = 8, True
        elif part != "rule":
            raise SystemExit(f"unknown variant {part}")


print(f"# tree_attention_ab on {card_name()}: 8B heads, T = {T}, context {CONTEXT}; attention alone µs, step ms", flush=True)
reference = None
results = {}
for r in range(ROUNDS):
    for variant in in_turn(VARIANTS, r):
        apply(variant)
        out = (be.attention(q, cache.k[0], cache.v[0], plan, model.scale).astype(cp.uint32) << 16).view(cp.float32)  # bf16 bits
        if reference is None:
            reference = out
        error = float(cp.abs(out - reference).max())
        layer = iter(range(10**9))
        alone = time_captured(lambda: (lambda i: be.attention(q, cache.k[i], cache.v[i], plan, model.scale))(next(layer) % L)) * 1e6
        # (the step only within the 8B config's positions: its captured steps' page tables are sized by them)
        step = step_times(model, CONTEXT, tree_sizes=(T,))[T] * 1e3 if CONTEXT <= cfg.max_position_embeddings else float("nan")
        results.setdefault(variant, []).append((alone, step))
        print(f"round {r} {variant:12s} attention {alone:6.2f} µs  step {step:.3f} ms  (max |out - rule's| {error:.3g})", flush=True)
apply("rule")
print("medians")
for variant in VARIANTS:
    alone, step = np.median(np.array(results[variant]), axis=0)
    print(f"{variant:12s} attention {alone:6.2f} µs  step T={T} {step:.3f} ms", flush=True)
