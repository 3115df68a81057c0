"""Device probe: is the 8B gate/up product at 17-64 rows (gemm_wgmma_glu, ~87% of copy bandwidth on an H200) bound by
its block count? I = 14336 makes 112 blocks of 128 gate + 128 up rows (four warpgroups, one block an SM) on the
H200's 132 SMs. The same product is timed at intermediate sizes of 112, 132 and 66 such blocks (I = 14336, 16896,
8448), each as a captured graph of 20 calls on rotating weight copies (past L2), against its own weight floor (bytes /
copy bandwidth measured here). If the 112-block case is the one short of the rest, its gap is the 20 idle SMs, and
a split of the work that keeps every SM streaming (stream-K) would close it. Then the same question for the plain
gemm_wgmma of one warpgroup a block and no split-K (as the 8B qkv and O run at 64 rows: 96 and 64 blocks): N = 4096,
6144, 8448 and 16896 make 64, 96, 132 and 264 blocks.

    PYTHONPATH=$PWD python3 notes/scripts/glu_waves_probe.py [rounds]
"""
import itertools
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, copy_bandwidth, in_turn, random_bf16, require_gpu, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
be = CudaBackend()
K = 4096
bandwidth = copy_bandwidth()
print(f"# glu_waves_probe on {card_name()} ({be.sm_count} SMs): gate/up + SiLU·mul at K = {K}, µs a call; copy {bandwidth / 1e12:.2f} TB/s",
      flush=True)
sizes = {14336: None, 16896: None, 8448: None}
for I in sizes:
    sizes[I] = [random_bf16(cp, (2 * I, K), 1 / np.sqrt(K)) for _ in range(-(-(400 << 20) // (2 * I * K * 2)))]
turn = itertools.count()
results = {}
for r in range(ROUNDS):
    for M in (32, 64):
        x = random_bf16(cp, (M, K))
        for I in in_turn(list(sizes), r):
            copies = sizes[I]
            assert be.glu_kernel(M, 2 * I, K) == "wgmma"
            t = time_captured(lambda: be.gate_up_silu(x, copies[next(turn) % len(copies)])) * 1e6
            results.setdefault((M, I), []).append(t)
for (M, I), times in sorted(results.items()):
    t = float(np.median(times))
    floor = 2 * I * K * 2 / bandwidth * 1e6
    G = be.wgmma_glu_groups(I)
    print(f"M={M:2d} I={I:5d} ({-(-I // (32 * G))} blocks of {G} warpgroups): {t:6.1f} µs, floor {floor:5.1f}: "
          f"{floor / t * 100:5.1f}% of copy  ({' '.join(f'{v:.1f}' for v in times)})", flush=True)

be.gemm_wgmma_groups, be.gemm_cluster, be.gemm = 1, 1, "own"
weights = {N: [random_bf16(cp, (N, K), 1 / np.sqrt(K)) for _ in range(-(-(400 << 20) // (N * K * 2)))] for N in (4096, 6144, 8448, 16896)}
results = {}
for r in range(ROUNDS):
    for M in (32, 64):
        x = random_bf16(cp, (M, K))
        for N in in_turn(list(weights), r):
            copies = weights[N]
            assert be.own_kernel(M, N, K) == "wgmma"
            t = time_captured(lambda: be.linear(x, copies[next(turn) % len(copies)])) * 1e6
            results.setdefault((M, N), []).append(t)
for (M, N), times in sorted(results.items()):
    t = float(np.median(times))
    floor = N * K * 2 / bandwidth * 1e6
    print(f"plain M={M:2d} N={N:5d} ({N // 64} blocks, G = 1, S = 1): {t:6.1f} µs, floor {floor:5.1f}: {floor / t * 100:5.1f}% of copy"
          f"  ({' '.join(f'{v:.1f}' for v in times)})", flush=True)
