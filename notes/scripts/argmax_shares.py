"""Device probe: argmax_share's grid (CudaSampling.row_shares: shares of >= 2048 logits, about K blocks an SM in
all, K = 2 the rule) against the rows it serves: µs of argmax_device alone (a captured graph of 20) for R rows of
Llama-3's and the default model's vocabularies, the ids checked equal at every K; then the 8B T = 64 step (forward +
argmax, random weights, context 512) by turns at K = 2 and the best K.

  python3 notes/scripts/argmax_shares.py [K ...]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, time_captured, time_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
be = CudaBackend()
ks = [int(a) for a in sys.argv[1:]] or [2, 4, 8, 16]
rule = be.row_shares


def shares_at(k):
    return lambda R, V: max(1, min(-(-V // 2048), -(-k * be.sm_count // R)))


print(f"# argmax_shares on {card_name()}: µs of argmax_device alone; K blocks an SM (2: the rule)")
best = {}
for V in (128256, 49152):
    for R in (1, 4, 16, 32, 64):
        logits = cp.random.standard_normal((R, V), dtype=cp.float32)
        logits[:, ::7919] = logits.max()  # ties: the lowest index must win at every grid
        expected = None
        row = []
        for k in ks:
            be.row_shares = shares_at(k)
            ids = be.argmax_device(logits).get()
            expected = ids if expected is None else expected
            assert (ids == expected).all() and (ids == logits.get().argmax(axis=1)).all(), (V, R, k)
            row.append((time_captured(lambda: be.argmax_device(logits)) * 1e6, k, be.row_shares(R, V)))
        best[(V, R)] = min(row)[1]
        print(f"V={V:>6} R={R:>2}  " + "  ".join(f"K={k} ({s} shares) {t:6.2f}" for t, k, s in row), flush=True)
be.row_shares = rule

cfg = llama_8b_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be)
cache = model.new_cache(-(-(512 + 64) // 16) + 1, 16)
table = []
cache.prepare(table, 0, 512 + 64)
rng = np.random.default_rng(0)
parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, 64)]
plan = build_plan([StepItem.tree(table, 512, Tree(rng.integers(0, 1000, 64), parents))], 16)
k_best = best[(128256, 64)]
for round_ in range(3):
    times = []
    for k in (2, k_best):
        be.row_shares = shares_at(k)
        be.graphs.clear()  # the argmax is in the step's graph: capture it anew at this grid
        times.append(time_gpu(lambda: model.forward(plan, cache).argmax(), 3, 10) * 1e6)
    print(f"round {round_}: 8B T = 64 step  K=2 {times[0]:.1f}  K={k_best} {times[1]:.1f} µs", flush=True)
