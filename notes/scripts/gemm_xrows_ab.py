"""gemm_wgmma at 17-64 rows: x staged in 32-row boxes (wgmma n32) or 64, ring depths and cluster sizes, by turns in
one process against cuBLAS. (Stop 37's first calls also tried rings small enough for two blocks an SM, the trigger
once the last copies are out, and a shallow ring of x apart from the weights': notes/gemm_xrows_ab_h100_stop37.log.)

  base               x in 64-row boxes, 12 stages, stop 36's cluster rule (stop 36's kernel)
  rule               the committed kernels and rules (kernels/gemm_wgmma.cu, CudaBackend.wgmma_shape, wgmma_xrows)
  [g2]x{X}d{D}[s{S}]  [two warpgroups,] X-row x boxes, D ring stages, [S blocks a cluster; else the committed rule]
  cublas      cuBLAS (ctypes, bf16)

Prints per round the % of copy bandwidth of graphs of 20 calls (consecutive calls on different weight copies, >= 100
MiB in all, as bench gemm), medians at the end, and each variant's largest difference from cuBLAS's product.

    python3 notes/scripts/gemm_xrows_ab.py [rounds] [variants,...] [shapes,...] [rows,...]
"""

import re
import sys

import numpy as np

from minispec.backends import cuda_backend, cuda_gemm
from minispec.bench_gpu import backend_with_edit, card_name, copy_bandwidth, in_turn, random_bf16, require_gpu, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["base", "rule", "cublas"]
SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "down": (14336, 4096)}  # K, N
if len(sys.argv) > 3:
    SHAPES = {name: SHAPES[name] for name in sys.argv[3].split(",")}
ROWS = tuple(int(m) for m in sys.argv[4].split(",")) if len(sys.argv) > 4 else (24, 32, 64)


def ring(G, X, stages):
    """a backend whose gemm_wgmma_w{G}_x{X} kernels have `stages` ring stages"""
    def edit(text):
        text, found = re.subn(rf"GEMM_WGMMA_CLUSTERS\({G}, {X}, \d+, \)", f"GEMM_WGMMA_CLUSTERS({G}, {X}, {stages}, )", text)
        assert found == 1, (G, X, found)  # the plain kernels' instance line (the split norm's are in files of their own)
        return text
    return backend_with_edit("gemm_wgmma.cu", f"gemm_wgmma_w{G}_x{X}_s1", edit)


def variant_setup(name):
    """name -> (backend, G, X, S ("old": stop 36's rule; None: the committed rule), {(G, X): stages})"""
    if name == "base":
        return ring(1, 64, 12), 1, 64, "old", {(1, 64): 12}
    if name == "rule":  # the committed kernels and rules
        return cuda_backend.CudaBackend("bfloat16"), None, None, None, {}
    match = re.fullmatch(r"(g2)?x(16|32|64)d(\d+)(?:s(\d))?", name)
    if not match:
        raise ValueError(name)
    G, X, stages = 2 if match[1] else 1, int(match[2]), int(match[3])
    return ring(G, X, stages), G, X, match[4] and int(match[4]), {(G, X): stages}


def old_cluster_size(backend, tiles, K):
    """stop 36's rule: the most blocks a cluster within one block an SM, 4 stages a block"""
    S = 1
    while S < 8 and tiles * S * 2 <= backend.sm_count and K % (128 * S) == 0 and K // (S * 2) >= 256:
        S *= 2
    return S


def main():
    bandwidth = copy_bandwidth()
    print(f"gemm_wgmma x boxes and rings on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; % of copy bandwidth per call", flush=True)
    committed = dict(cuda_gemm.WGMMA_GEMM_STAGES)
    cublas = cuda_backend.CudaBackend("bfloat16")
    cublas.gemm = "cublas"
    setups = {v: variant_setup(v) for v in VARIANTS if v != "cublas"}
    operands = {}
    for name, (K, N) in SHAPES.items():
        weight = random_bf16(cp, (N, K), 1 / 30)
        copies = [weight] + [weight.copy() for _ in range(-(-(100 << 20) // weight.nbytes) - 1)]
        operands[name] = (K, N, copies, {M: random_bf16(cp, (M, K)) for M in ROWS})

    def run(variant, x, copies):
        turn = iter(range(10**9))
        if variant == "cublas":
            return lambda: cublas.linear(x, copies[next(turn) % len(copies)])
        backend, G, X, S, stages = setups[variant]
        if S == "old":
            S = old_cluster_size(backend, -(-copies[0].shape[0] // 64), copies[0].shape[1])
        backend.gemm, backend.gemm_wgmma_groups, backend.gemm_wgmma_xrows, backend.gemm_cluster = "own", G, X, S

        def call():
            cuda_gemm.WGMMA_GEMM_STAGES.update(stages)  # launch_wgmma sizes the ring's shared memory from it
            try:
                weight = copies[next(turn) % len(copies)]
                if X != 16:
                    return backend.linear(x, weight)
                y = cp.empty((x.shape[0], weight.shape[0]), dtype=cp.float32)  # (linear takes gemm_stream up to 16 rows)
                backend.gemm_wgmma(x, weight, y)
                return y
            finally:
                cuda_gemm.WGMMA_GEMM_STAGES.update(committed)
        return call

    def usable(variant, M):
        return variant == "cublas" or (setups[variant][2] or 64) >= M

    results, errors = {}, {}
    for r in range(ROUNDS):
        for name, (K, N, copies, xs) in operands.items():
            for M in ROWS:
                cells = []
                for variant in in_turn([v for v in VARIANTS if usable(v, M)], r):
                    t = time_captured(run(variant, xs[M], copies))
                    results.setdefault((name, M, variant), []).append(t)
                    cells.append(f"{variant} {N * K * 2 / bandwidth / t * 100:.1f}%")
                    if r == 0:
                        y = run(variant, xs[M], copies[:1])()
                        ref = run("cublas", xs[M], copies[:1])()
                        errors[(name, M, variant)] = float(cp.abs(y - ref).max() / cp.abs(ref).max())
                print(f"round {r} {name} M={M}: " + "  ".join(cells), flush=True)
    print("medians (% of copy bandwidth, µs), largest difference from cuBLAS / largest |y|:")
    for name, (K, N, _, _) in operands.items():
        for M in ROWS:
            cells = []
            for variant in VARIANTS:
                if (name, M, variant) in results:
                    t = float(np.median(results[(name, M, variant)]))
                    cells.append(f"{variant} {N * K * 2 / bandwidth / t * 100:.1f}% {t * 1e6:.1f} µs ({errors[(name, M, variant)]:.0e})")
            print(f"{name} M={M}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
