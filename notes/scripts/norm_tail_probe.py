"""Device probe: the 8B O and down products followed by their RMSNorm, as two launches (linear, then add_rmsnorm)
and as one (gemm_wgmma_norm through linear_add_rmsnorm), each timed as a captured graph of 20 calls on rotating
weight copies (past L2, as a step's layers read them), by turns.

    PYTHONPATH=$PWD python3 notes/scripts/norm_tail_probe.py [rounds]
"""
import itertools
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, random_bf16, require_gpu, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
be = CudaBackend()
print(f"# norm_tail_probe on {card_name()}: µs a call (product + residual add + RMSNorm)")


def rotated(weight, total=100 << 20):
    copies = [weight] + [weight.copy() for _ in range(-(-total // weight.nbytes) - 1)]
    turn = itertools.count()
    return lambda: copies[next(turn) % len(copies)]


results = {}
for r in range(ROUNDS):
    for name, (N, K) in {"O": (4096, 4096), "down": (4096, 14336)}.items():
        weight = rotated(random_bf16(cp, (N, K), 1 / np.sqrt(K)))
        norm = cp.ones(N, dtype=cp.float32)
        for M in (1, 2):
            x = random_bf16(cp, (M, K))
            residual = cp.random.standard_normal((M, N), dtype=cp.float32)
            for variant in (("two", "one") if r % 2 == 0 else ("one", "two")):
                be.norm_tail_rows = 2 if variant == "one" else 0
                t = time_captured(lambda: be.linear_add_rmsnorm(x, weight(), residual, norm, 1e-5)) * 1e6
                results.setdefault((name, M, variant), []).append(t)
for (name, M, variant), times in results.items():
    print(f"{name:5s} M={M} {variant:3s} launch(es): {np.median(times):7.2f} µs  ({' '.join(f'{t:.2f}' for t in times)})")
