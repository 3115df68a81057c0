"""Device probe: the LM heads at 17-64 rows on gemm_wgmma_tiles (persistent blocks, two an SM, each over several
tiles) against gemm_wgmma of a block a tile (w2_x64_s1), by turns in one process: µs a call (a captured graph of
20 calls over as many weight copies, so that none is read from L2) and % of copy bandwidth. Random bf16 weights.

    PYTHONPATH=$PWD python3 notes/scripts/lm_head_tiles_ab.py [rounds]
"""
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, copy_bandwidth, in_turn, random_bf16, require_gpu, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SHAPES = {"8B lm head": (4096, 128256), "smol lm head": (576, 49152)}  # (K, N)
be = CudaBackend()
be.gemm = "own"
copy = copy_bandwidth()
print(f"# lm_head_tiles_ab on {card_name()}: copy bandwidth {copy / 1e12:.2f} TB/s; µs a call (% of copy)", flush=True)
results = {}
for name, (K, N) in SHAPES.items():
    copies = max(2, -(-(200 << 20) // (N * K * 2)))  # >= 200 MB of weights in turn: past the L2
    weights = [random_bf16(cp, (N, K), K ** -0.5) for _ in range(copies)]
    for M in (17, 32, 48, 64):
        x = random_bf16(cp, (M, K))
        y = cp.empty((M, N), dtype=cp.float32)
        for r in range(ROUNDS):
            for tiles in in_turn([True, False], r):
                be.gemm_wgmma_tiles = tiles
                calls = iter(range(1 << 30))
                t = time_captured(lambda: be.gemm_wgmma(x, weights[next(calls) % copies], y))
                results.setdefault((name, M, tiles), []).append(t)
        line = []
        for tiles in (True, False):
            t = float(np.median(results[(name, M, tiles)]))
            line.append(f"{'tiles' if tiles else 'a block a tile'} {t * 1e6:7.1f} ({N * K * 2 / t / copy * 100:.0f}%)")
        print(f"{name:<13} M={M:<3} " + "   ".join(line), flush=True)
