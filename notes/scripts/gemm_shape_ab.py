"""gemm_wgmma's block shapes for 17-64 rows on the weights with fewer 128-row tiles than SMs (8B qkv, O, down), by
turns in one process against cuBLAS: G warpgroups of 64 weight rows a block, S blocks a cluster along K, and the
ring's depth. At one warpgroup a block each block reads as many bytes of x as of weights at 64 rows; two
warpgroups share each x stage, so x is half the weights' bytes.

  g1s{S}      the committed kernel, one warpgroup (12 stages then, 13 since stop 37; one block an SM)
  g2s{S}      the committed kernel, two warpgroups, 4 stages (two blocks an SM)
  g2deep{S}   two warpgroups, 8 stages (kernels/gemm_wgmma.cu patched: GEMM_WGMMA_CLUSTERS(2, 64, 8); one block an SM)
  cublas      cuBLAS (ctypes, bf16)

Prints per round the % of copy bandwidth of graphs of 20 calls (consecutive calls on different weight copies, >= 100
MiB in all, as bench gemm), medians at the end, and each variant's largest error against a float64 product.

    python3 notes/scripts/gemm_shape_ab.py [rounds]
"""

import sys

import numpy as np

from minispec.backends import cuda_backend, cuda_gemm
from minispec.bench_gpu import backend_with_edit, card_name, copy_bandwidth, in_turn, random_bf16, require_gpu, swap, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "down": (14336, 4096)}  # K, N
ROWS = (32, 64)
CASES = {  # shape -> variants tried there
    "qkv": ["g1s1", "g2s2", "g2deep2", "cublas"],
    "o": ["g1s2", "g2s4", "g2deep4", "cublas"],
    "down": ["g1s2", "g2deep4", "cublas"],
}
DEEP = 8


def main():
    base = cuda_backend.CudaBackend("bfloat16")
    deep = backend_with_edit("gemm_wgmma.cu", "gemm_wgmma_w2_x64_s1", lambda text: swap(text, "GEMM_WGMMA_CLUSTERS(2, 64, 4, )", f"GEMM_WGMMA_CLUSTERS(2, 64, {DEEP}, )"))
    stages = dict(cuda_gemm.WGMMA_GEMM_STAGES)
    bandwidth = copy_bandwidth()
    print(f"gemm_wgmma block shapes on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; % of copy bandwidth per call", flush=True)
    operands = {}
    for name, (K, N) in SHAPES.items():
        weight = random_bf16(cp, (N, K), 1 / 30)
        copies = [weight] + [weight.copy() for _ in range(-(-(100 << 20) // weight.nbytes) - 1)]
        operands[name] = (K, N, copies, {M: random_bf16(cp, (M, K)) for M in ROWS})

    def run(variant, x, copies, y=None):
        turn = iter(range(10**9))
        if variant == "cublas":
            base.gemm = "cublas"
            return lambda: base.linear(x, copies[next(turn) % len(copies)])
        G, S = int(variant[1]), int(variant[-1])
        backend = deep if "deep" in variant else base
        backend.gemm, backend.gemm_wgmma_groups, backend.gemm_cluster = "own", G, S
        backend.gemm_wgmma_xrows = 64  # (x in 64-row boxes, as the kernel then had)
        return lambda: backend.linear(x, copies[next(turn) % len(copies)])

    def settle(variant):
        """the module's ring depths as the variant's kernels have them (launch_wgmma sizes shared memory from it)"""
        cuda_gemm.WGMMA_GEMM_STAGES.update(stages)
        if "deep" in variant:
            cuda_gemm.WGMMA_GEMM_STAGES[2, 64] = DEEP

    results, errors = {}, {}
    for r in range(ROUNDS):
        for name, (K, N, copies, xs) in operands.items():
            for M in ROWS:
                cells = []
                for variant in in_turn(CASES[name], r):
                    settle(variant)
                    t = time_captured(run(variant, xs[M], copies))
                    results.setdefault((name, M, variant), []).append(t)
                    cells.append(f"{variant} {N * K * 2 / bandwidth / t * 100:.1f}%")
                    if r == 0:
                        y = run(variant, xs[M], copies[:1])()
                        exact = cp.asnumpy(xs[M]).astype(np.uint32) << 16
                        w = cp.asnumpy(copies[0]).astype(np.uint32) << 16
                        ref = exact.view(np.float32).astype(np.float64) @ w.view(np.float32).astype(np.float64).T
                        errors[(name, M, variant)] = float(np.abs(cp.asnumpy(y) - ref).max() / np.abs(ref).max())
                print(f"round {r} {name} M={M}: " + "  ".join(cells), flush=True)
    settle("")
    print("medians (% of copy bandwidth, µs), largest error / largest |y|:")
    for name, (K, N, _, _) in operands.items():
        for M in ROWS:
            cells = []
            for variant in CASES[name]:
                t = float(np.median(results[(name, M, variant)]))
                cells.append(f"{variant} {N * K * 2 / bandwidth / t * 100:.1f}% {t * 1e6:.1f} µs ({errors[(name, M, variant)]:.0e})")
            print(f"{name} M={M}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
