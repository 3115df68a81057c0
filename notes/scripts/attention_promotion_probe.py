"""Device probe: the L2 promotion of tree_attention_wgmma's K/V tensor maps (CudaBackend.attention_l2_promotion: 256
bytes, the driver's usual and the rule before stop 44, against 128, the rule since, and none), by turns. Page segments are TMA boxes of P rows x 128 bytes (one 64-dim atom of a 256-byte row at
D = 128), so 256-byte promotion fetches both atoms of a row on the first atom's miss; the GEMMs' weight boxes
were faster with 128 up to 32 rows (stop 44, CudaBackend.gemm_promotion). Each case (8B heads: the shapes that
take the wgmma kernel) is timed as a captured graph of 20 calls over rotating K/V copies (past L2), against the K/V
floor (bytes / copy bandwidth measured here).

    PYTHONPATH=$PWD python3 notes/scripts/attention_promotion_probe.py [rounds] [promotions]
"""
import itertools
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, card_name, copy_bandwidth, in_turn, random_bf16, require_gpu, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
PROMOTIONS = [int(p) for p in sys.argv[2].split(",")] if len(sys.argv) > 2 else [256, 128, 0]
CASES = [(1, 1, 32768), (4, 1, 8192), (1, 16, 8192), (1, 64, 8192), (1, 64, 32768)]  # (B, T, context)


def main():
    bandwidth = copy_bandwidth()
    print(f"# attention_promotion_probe on {card_name()}: 8B heads, µs a call (K/V floor at copy {bandwidth / 1e12:.2f} TB/s)", flush=True)
    backends = {p: CudaBackend("bfloat16") for p in PROMOTIONS}
    for p, be in backends.items():
        be.attention_l2_promotion = p
    for B, T, context in CASES:
        q, k, v, plan = attention_case(cp, backends[PROMOTIONS[0]], B, T, context, 32, 8, 128)
        copies = [(k, v)] + [(random_bf16(cp, k.shape), random_bf16(cp, v.shape)) for _ in range(max(1, -(-(200 << 20) // (2 * k.nbytes)) - 1))]
        floor = 2 * B * (context + T) * k.shape[1] * k.shape[3] * 2 / bandwidth * 1e6  # K and V, bf16
        times, outs = {}, {}
        for r in range(ROUNDS):
            for p in in_turn(PROMOTIONS, r):
                be, turn = backends[p], itertools.count()
                outs[p] = be.attention(q, k, v, plan, 0.1)
                t = time_captured(lambda: be.attention(q, *copies[next(turn) % len(copies)], plan, 0.1)) * 1e6
                times.setdefault(p, []).append(t)
        same = all(cp.array_equal(outs[p], outs[PROMOTIONS[0]]) for p in PROMOTIONS)
        cells = "  ".join(f"{p:3d} B {np.median(times[p]):6.1f} ({floor / np.median(times[p]):.2f})" for p in PROMOTIONS)
        print(f"B={B} T={T:2d} ctx={context:5d}: floor {floor:5.1f}  {cells}  (same bits: {same})", flush=True)
        copies.clear()  # (free them before the next case's)


if __name__ == "__main__":
    main()
