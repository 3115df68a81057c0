"""Device probe: what bounds the wgmma GEMMs at 64 rows, where the 8B products stream slower than at one row
(gate/up 86% of copy bandwidth against 99%, stop 41-43). gemm_wgmma.cu is compiled with parts of WgmmaRing edited out
(the results are wrong; only the time is read), and each 8B product is timed at 64 rows as bench gemm does (a
captured graph of 20 calls on rotating weight copies, past L2), by turns:

  rule   the committed kernels
  xfix   every stage's x box read from k = 0: the same x bytes as ever, but one 8 KB of x for every block and stage
         (stays in L2 near every SM), so the x reads no longer spread over x's K extent
  nox    no x box at all (the full barrier expects the weights' bytes only): the weights alone through the ring
  nomma  no wgmma issued: the ring streams weights and x, the consumers only wait and release
  w4     qkv, O and down on four warpgroups a block (256 weight rows, 5 stages of 32 KB of weights and 8 KB of x,
         one block an SM; the backend's cluster rule, which gives the committed one-warpgroup kernels' block counts
         and streams: O and qkv 64 / 96 blocks of 512 KB, down 128 of 917 KB) instead of one (64 rows, 13 stages of
         8 KB of weights and 8 KB of x): 160 KB of weights in flight an SM instead of 104, x a quarter of the bytes
  stagger  block b walks its k stages from stage 37 b mod (its stages) on, wrapping (the products' sums in another
         order): at any moment the blocks read different k columns, instead of all of them the same column of every
         weight row (addresses 2 K bytes apart, a power of two, which DRAM channel hashing may map unevenly)
  stream  gate/up and the LM head at 64 rows on gemm_stream (cp.async, 64 staged rows in 64-wide k stages, mma.sync;
         gate/up then silu_mul), the one-row kernels' stream, instead of gemm_wgmma_glu_w4 / gemm_wgmma_tiles
  promoN  gemm_wgmma's tensor maps made with L2 promotion N bytes (0, 64, 128, 256) at every row count (the rule:
         CudaBackend.gemm_promotion; 256 everywhere when this probe's first promo call ran)
  tiled  each weight box read from 8 or 16 KB of contiguous memory (the weights viewed as [N K / 64, 64], box b of
         the product at rows 64 b ..): the bytes a weight laid out tile by tile would give, against boxes of 64 or
         128 rows of 128 bytes 2 K bytes apart; also at one row (qkv, O and down run gemm_wgmma there too)

and the committed kernels at one row (gemm_stream for gate/up and the LM head) for the reference.

    PYTHONPATH=$PWD python3 notes/scripts/gemm_bound_probe.py [rounds] [variants,...]
"""
import itertools
import sys

import numpy as np

from minispec.backends import cuda_backend, cuda_gemm
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import backend_with_edit, card_name, copy_bandwidth, in_turn, random_bf16, require_gpu, swap, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["rule", "xfix", "nox", "nomma"]
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate/up": (28672, 4096), "down": (4096, 14336), "lm head": (128256, 4096)}  # N, K

LOAD_X = "tma_load(x + i % STAGES * X_TILE, x_map, k, 0, full + i % STAGES);"
EDITS = {
    "xfix": lambda text: swap(text, LOAD_X, "tma_load(x + i % STAGES * X_TILE, x_map, 0, 0, full + i % STAGES);"),
    "nox": lambda text: swap(swap(text, LOAD_X, ""), "mbarrier_expect_bytes(full + i % STAGES, (W_TILE + X_TILE) * 2);",
                             "mbarrier_expect_bytes(full + i % STAGES, W_TILE * 2);"),
    "tiled": lambda text: swap(swap(swap(text,
        "} else tma_load(stage, &w_map, k_begin + i * BK, n0, ring.full + i % STAGES);",
        "} else tma_load(stage, &w_map, 0, (n0 / ROWS * (K / BK) + (k_begin + i * BK) / BK) * ROWS, ring.full + i % STAGES);"),
        "tma_load(stage + b * 64 * BK, &w_map, k_begin + i * BK, (b < WGS / 2 ? 0 : N) + n0 + b % (WGS / 2) * 64,",
        "tma_load(stage + b * 64 * BK, &w_map, 0, (((b < WGS / 2 ? 0 : N) + n0 + b % (WGS / 2) * 64) / 64 * (K / BK) + (k_begin + i * BK) / BK) * 64,"),
        "tma_load(ring.expect(i), &w_map, i % steps * BK, (blockIdx.x + i / steps * gridDim.x) * ROWS, ring.full + i % STAGES);",
        "tma_load(ring.expect(i), &w_map, 0, ((blockIdx.x + i / steps * gridDim.x) * (K / BK) + i % steps) * ROWS, ring.full + i % STAGES);"),
    "w4": lambda text: swap(text, "GEMM_WGMMA_CLUSTERS(2, 64, 4)\n", """GEMM_WGMMA_CLUSTERS(2, 64, 4)
#define GEMM_WGMMA_ONE(WGS, XROWS, STAGES, S, CLUSTER) \\
    extern "C" __global__ void __launch_bounds__(128 * WGS + 32, 1) CLUSTER gemm_wgmma_w##WGS##_x##XROWS##_s##S( \\
        const __grid_constant__ TensorMap w_map, const __grid_constant__ TensorMap x_map, float* y, int M, int N, int K) { \\
        gemm_wgmma_body<WGS, XROWS, STAGES, S>(w_map, x_map, y, M, N, K); \\
    }
SPLIT_K_CLUSTERS(GEMM_WGMMA_ONE, 4, 64, 5)
"""),
    "stagger": lambda text: "#define STAGGER ((int)(blockIdx.x * 37u % (unsigned)steps))\n" + swap(swap(swap(swap(swap(text,
        "auto load_x = [&](int i) { ring.load_x(&x_map, i, k_begin + i * BK); };",
        "auto load_x = [&](int i) { ring.load_x(&x_map, i, k_begin + (i + STAGGER) % steps * BK); };"),
        "tma_load(stage + b * 64 * BK, &w_map, k_begin + i * BK,", "tma_load(stage + b * 64 * BK, &w_map, k_begin + (i + STAGGER) % steps * BK,"),
        "} else tma_load(stage, &w_map, k_begin + i * BK, n0,", "} else tma_load(stage, &w_map, k_begin + (i + STAGGER) % steps * BK, n0,"),
        "tma_load(ring.expect(i), &w_map, i % steps * BK,", "tma_load(ring.expect(i), &w_map, (i + STAGGER) % steps * BK,"),
        "ring.load_x(&x_map, i, i % steps * BK);", "ring.load_x(&x_map, i, (i + STAGGER) % steps * BK);"),
    "nomma": lambda text: swap(text, "wgmma_ss<XROWS>(acc, smem_descriptor(w_tile + ks * 16, 16, 1024), smem_descriptor(x_tile + ks * 16, 16, 1024), 1);", ""),
}


WEIGHTS = set()  # the weight copies' addresses: their tensor maps view them as [N K / 64, 64] in the tiled variant
swizzled_rows = cuda_backend.tensor_map.swizzled_rows


def flat_weights(array, rows, cols, box_rows, *rest, **options):
    if array.data.ptr in WEIGHTS:
        return swizzled_rows(array, rows * cols // 64, 64, box_rows, *rest, **options)
    return swizzled_rows(array, rows, cols, box_rows, *rest, **options)


def backend(variant):
    if variant == "rule":
        return CudaBackend("bfloat16")
    if variant == "w4":
        cuda_gemm.WGMMA_GEMM_STAGES[4, 64] = 5  # (only a backend told gemm_wgmma_groups = 4 asks for it)
    if variant.startswith("promo"):
        be = CudaBackend("bfloat16")
        be.gemm_l2_promotion = int(variant[5:])
        return be
    if variant == "stream":
        be = CudaBackend("bfloat16")
        be.wgmma_gemm_fits = lambda M, N, K: False if N in (28672, 128256) else CudaBackend.wgmma_gemm_fits(be, M, N, K)
        be.own_gemm_serves = lambda M, N, K: True if N in (28672, 128256) else CudaBackend.own_gemm_serves(be, M, N, K)
        return be
    return backend_with_edit("gemm_wgmma.cu", "gemm_wgmma_w1_x64_s1", EDITS[variant])


def call(be, name, x, w):
    if name == "gate/up":
        return be.gate_up_silu(x, w)
    if name == "lm head":
        return be.logits(x, w)
    return be.linear(x, w)


COLUMNS = []


def main():
    bandwidth = copy_bandwidth()
    print(f"# gemm_bound_probe on {card_name()}: 8B products at 64 rows, µs a call (% of copy bandwidth {bandwidth / 1e12:.2f} TB/s)", flush=True)
    backends = {v: backend(v) for v in {*VARIANTS, "rule"}}
    COLUMNS[:] = ["1 row", *VARIANTS] + [f"{v} 1 row" for v in VARIANTS if v == "tiled" or v.startswith("promo")]
    results = {}
    for name, (N, K) in SHAPES.items():
        copies = [random_bf16(cp, (N, K), 1 / np.sqrt(K)) for _ in range(max(2, -(-(400 << 20) // (N * K * 2))))]
        WEIGHTS.clear()
        WEIGHTS.update(c.data.ptr for c in copies)
        turn = itertools.count()
        floor = N * K * 2 / bandwidth * 1e6
        for r in range(ROUNDS):
            for variant in in_turn(COLUMNS, r):
                one = variant.endswith("1 row")
                be, M = backends[variant.split()[0] if one and variant != "1 row" else "rule" if one else variant], 1 if one else 64
                x = random_bf16(cp, (M, K))
                if variant == "w4":
                    be.gemm_wgmma_groups = 4 if name in ("qkv", "o", "down") else None
                cuda_backend.tensor_map.swizzled_rows = flat_weights if variant.startswith("tiled") else swizzled_rows
                t = time_captured(lambda: call(be, name, x, copies[next(turn) % len(copies)])) * 1e6
                cuda_backend.tensor_map.swizzled_rows = swizzled_rows
                results.setdefault((name, variant), []).append(t)
        for variant in ("w4", "stagger"):  # products that should equal the committed ones up to the sums' order
            if variant in VARIANTS and (variant == "stagger" or name in ("qkv", "o", "down")):
                x = random_bf16(cp, (64, K))
                backends[variant].gemm_wgmma_groups = 4 if variant == "w4" else None
                ref, out = call(backends["rule"], name, x, copies[0]), call(backends[variant], name, x, copies[0])
                ref, out = ((a.astype(cp.uint32) << 16).view(cp.float32) if a.dtype == cp.uint16 else a for a in (ref, out))  # bf16 bits
                print(f"  {name}: {variant} max |difference| {float(cp.abs(out - ref).max()):.3g} (max |y| {float(cp.abs(ref).max()):.3g})", flush=True)
        cells = []
        for variant in COLUMNS:
            t = float(np.median(results[(name, variant)]))
            cells.append(f"{variant} {t:6.1f} ({floor / t * 100:3.0f}%)")
        print(f"{name:8s} floor {floor:6.1f}  " + "  ".join(cells), flush=True)
        copies.clear()  # (free them before the next shape's)


if __name__ == "__main__":
    main()
