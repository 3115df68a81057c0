"""gemm_stream probe: own kernel per cluster size S at 8B shapes, cuBLAS beside it (`sweep`), its
two ring shapes at up to 16 rows (`stages`), gemm_wgmma per block height G and cluster size S at 32 and 64
rows (`wgmma`), its ring at two depths (`wgmma-ring`), gemm_stream's rings (`stream-ring`), or a few launches for ncu (`profile`: run under ncu --kernel-name regex:gemm_stream).

    python3 notes/scripts/gemm_probe.py sweep
    python3 notes/scripts/gemm_probe.py sweep-rotated ["8B lm head" "smol lm head" "smol gate/up" "smol down"]
    python3 notes/scripts/gemm_probe.py stages
    python3 notes/scripts/gemm_probe.py wgmma
    python3 notes/scripts/gemm_probe.py wgmma-ring
    python3 notes/scripts/gemm_probe.py stream-ring
    ncu --clock-control none --kernel-name regex:gemm_stream --metrics ... python3 notes/scripts/gemm_probe.py profile
"""

import itertools
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, copy_bandwidth, require_gpu, time_captured

cp = require_gpu()
backend = CudaBackend("bfloat16")
SHAPES = {"8B qkv": (4096, 6144), "8B o": (4096, 4096), "8B gate/up": (4096, 28672), "8B down": (14336, 4096)}
MORE_SHAPES = {"8B lm head": (4096, 128256), "smol lm head": (576, 49152), "smol gate/up": (576, 3072), "smol down": (1536, 576)}


def operands(K, N, M):
    weight = (cp.random.standard_normal((N, K), dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16) & 0xBFFF
    x = (cp.random.standard_normal((M, K), dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16)
    return x, weight


def rotated(weight, total=100 << 20):
    """A callable that gives another copy of `weight` each call (at least `total` bytes of copies in all), so that
    consecutive calls read past L2 as a step's layers do (bench gemm's rule)."""
    copies = [weight] + [weight.copy() for _ in range(-(-total // weight.nbytes) - 1)]
    turn = itertools.count()
    return lambda: copies[next(turn) % len(copies)]


def ring_cases(rows, rounds=2):
    """(name, K, N, M, x, rotating weights) of the ring probes: every 8B shape but gate/up, `rounds` times."""
    for _ in range(rounds):
        for name, (K, N) in SHAPES.items():
            if name == "8B gate/up":
                continue
            for M in rows:
                x, weight = operands(K, N, M)
                yield name, K, N, M, x, rotated(weight)


if sys.argv[1] == "sweep":
    bandwidth = copy_bandwidth()
    print(f"gemm_stream per cluster size S on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; µs per call (graphs of 20)")
    print(f"{'shape':<12} {'M':>3} {'S=1':>7} {'S=2':>7} {'S=4':>7} {'S=8':>7} {'auto':>7} {'cuBLAS':>7} {'floor':>7}")
    for name, (K, N) in SHAPES.items():
        for M in (1, 16, 32, 64):
            x, weight = operands(K, N, M)
            cells = []
            for S in (1, 2, 4, 8, None):
                backend.gemm, backend.gemm_cluster = "own", S
                cells.append(time_captured(lambda: backend.linear(x, weight)) * 1e6 if S is None or K % (64 * S) == 0 else float("nan"))
            backend.gemm, backend.gemm_cluster = "cublas", None
            cells.append(time_captured(lambda: backend.linear(x, weight)) * 1e6)
            cells.append(N * K * 2 / bandwidth * 1e6)
            print(f"{name:<12} {M:>3} " + " ".join(f"{c:>7.1f}" for c in cells))
elif sys.argv[1] == "sweep-rotated":  # the same at up to 16 rows, consecutive calls reading different weight copies
    bandwidth = copy_bandwidth()
    print(f"gemm_stream per cluster size S on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; µs per call (graphs of 20; "
          "consecutive calls read different weight copies, >= 100 MiB, as in bench gemm); best: % of copy")
    print(f"{'shape':<12} {'M':>3} {'S=1':>7} {'S=2':>7} {'S=4':>7} {'S=8':>7} {'auto':>7} {'cuBLAS':>7} {'floor':>7} {'best %':>7}")
    chosen = {name: MORE_SHAPES[name] for name in sys.argv[2:]} or SHAPES  # `sweep-rotated "8B lm head" ...`: those shapes
    for name, (K, N) in chosen.items():
        for M in (1, 4, 16):
            x, weight = operands(K, N, M)
            rotating = rotated(weight)
            cells = []
            for S in (1, 2, 4, 8, None):
                backend.gemm, backend.gemm_cluster = "own", S
                cells.append(time_captured(lambda: backend.linear(x, rotating())) * 1e6 if S is None or K % (64 * S) == 0 else float("nan"))
            backend.gemm, backend.gemm_cluster = "cublas", None
            cells.append(time_captured(lambda: backend.linear(x, rotating())) * 1e6)
            floor = N * K * 2 / bandwidth * 1e6
            cells.append(floor)
            print(f"{name:<12} {M:>3} " + " ".join(f"{c:>7.1f}" for c in cells) + f" {floor / np.nanmin(cells[:4]) * 100:>6.0f}%", flush=True)
            del rotating
    backend.gemm = backend.gemm_cluster = None
elif sys.argv[1] == "wgmma":
    bandwidth = copy_bandwidth()
    print(f"gemm_wgmma per warpgroups a block G and cluster size S on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; "
          "µs per call (graphs of 20; consecutive calls read different weight copies, >= 2x L2, as in bench gemm)")
    print(f"{'shape':<12} {'M':>3} " + " ".join(f"{f'G{G}S{S}':>7}" for G in (1, 2) for S in (1, 2, 4, 8)) + f" {'cuBLAS':>7} {'floor':>7}")
    backend.gemm = "own"
    for name, (K, N) in SHAPES.items():
        for M in (32, 64):
            x, weight = operands(K, N, M)
            rotating = rotated(weight)
            cells = []
            for G in (1, 2):
                for S in (1, 2, 4, 8):
                    backend.gemm_wgmma_groups, backend.gemm_cluster = G, S
                    cells.append(time_captured(lambda: backend.linear(x, rotating())) * 1e6 if K % (64 * S) == 0 else float("nan"))
            backend.gemm, backend.gemm_wgmma_groups, backend.gemm_cluster = "cublas", None, None
            cells.append(time_captured(lambda: backend.linear(x, rotating())) * 1e6)
            backend.gemm = "own"
            cells.append(N * K * 2 / bandwidth * 1e6)
            print(f"{name:<12} {M:>3} " + " ".join(f"{c:>7.1f}" for c in cells), flush=True)
elif sys.argv[1] == "wgmma-ring":  # gemm_wgmma's ring: 6 / 4 stages (one / two warpgroups; two blocks fit an SM) and 12 / 8
    import re

    import minispec.backends.cuda_gemm as cuda_gemm
    from minispec.bench_gpu import backend_with_edit

    def ring(stages):
        def edit(text):
            for G, n in stages.items():
                text, found = re.subn(rf"GEMM_WGMMA_CLUSTERS\({G}, 64, \d+, \)", f"GEMM_WGMMA_CLUSTERS({G}, 64, {n}, )", text)
                assert found == 1, (G, found)  # the plain kernels' instance line (the split norm's are in files of their own)
            return text
        return backend_with_edit("gemm_wgmma.cu", "gemm_wgmma_w1_x64_s1", edit), {(G, 64): n for G, n in stages.items()}

    committed = dict(cuda_gemm.WGMMA_GEMM_STAGES)
    rings = {"shallow": ring({1: 6, 2: 4}), "deep": ring({1: 12, 2: 8})}
    bandwidth = copy_bandwidth()
    shapes = [(1, 2), (1, 4), (2, 2), (2, 4), (None, None)]
    print(f"gemm_wgmma's ring, shallow ({rings['shallow'][1]}: two blocks fit an SM) and deep ({rings['deep'][1]}: one), by "
          f"warpgroups a block G and cluster size S, on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; % of copy per call "
          "(graphs of 20, rotated weight copies); GNoneSNone: the rule's G and S; cuBLAS and gemm_stream beside")
    for name, K, N, M, x, rotating in ring_cases((32, 64)):
        cells = []
        for label, (b, stages) in rings.items():
            cuda_gemm.WGMMA_GEMM_STAGES.update(stages)  # launch_wgmma sizes the ring's shared memory from it
            b.gemm = "own"
            for G, S in shapes:
                if S is not None and K % (64 * S):
                    continue
                b.gemm_wgmma_groups, b.gemm_cluster, b.gemm_wgmma_xrows = G, S, 64  # (64-row x boxes, as then)
                t = time_captured(lambda: b.linear(x, rotating()))
                cells.append(f"{label} G{G}S{S} {N * K * 2 / bandwidth / t * 100:.0f}%")
            b.gemm = b.gemm_wgmma_groups = b.gemm_cluster = b.gemm_wgmma_xrows = None
        cuda_gemm.WGMMA_GEMM_STAGES.update(committed)
        backend.gemm = "cublas"
        cells.append(f"cuBLAS {N * K * 2 / bandwidth / time_captured(lambda: backend.linear(x, rotating())) * 100:.0f}%")
        y = cp.empty((M, N), dtype=cp.float32)
        backend.gemm = "own"
        cells.append(f"stream {N * K * 2 / bandwidth / time_captured(lambda: backend.gemm_stream(x, rotating(), y)) * 100:.0f}%")
        backend.gemm = None
        print(f"{name:<12} {M:>3}  " + "  ".join(cells), flush=True)
        del rotating
elif sys.argv[1] == "stream-ring":  # gemm_stream's ring per staged rows R: as committed against deeper (one block an SM)
    import re

    import minispec.backends.cuda_gemm as cuda_gemm
    from minispec.bench_gpu import backend_with_edit

    RINGS = [(128, 3), (128, 4), (128, 5), (64, 8)]  # (k per stage, stages); the first is committed up to 16 rows

    def fitted(R, BK, stages):
        while stages > 2 and stages * (128 + R) * BK * 2 > backend.max_shared:
            stages -= 1
        return stages

    def ring_backend(BK, stages):
        def edit(text):
            text = re.sub(r"GEMM_STREAM_CLUSTERS\(\d+, \d+, \d+\)[^\n]*\n", "", text)  # every committed ring goes
            return text + "".join(f"GEMM_STREAM_CLUSTERS({R}, {BK}, {fitted(R, BK, stages)})\n" for R in (8, 16, 32, 64))
        return backend_with_edit("gemm.cu", f"gemm_stream_r8_k{BK}_s1", edit)

    committed_shape = cuda_gemm.stream_shape
    rings = {ring: ring_backend(*ring) for ring in RINGS}
    bandwidth = copy_bandwidth()
    print(f"gemm_stream's ring (k per stage x stages, fewer where the shared memory runs out) by staged rows, on {card_name()}, "
          f"copy {bandwidth / 1e12:.2f} TB/s; % of copy per call (graphs of 20, rotated weight copies); committed: "
          "the engine's shape (k 128 x 3 up to 16 rows, k 64 x 4 above)")
    for name, K, N, M, x, rotating in ring_cases((1, 16, 32, 64)):
        y = cp.empty((M, N), dtype=cp.float32)
        cells = [f"committed {N * K * 2 / bandwidth / time_captured(lambda: backend.gemm_stream(x, rotating(), y)) * 100:.0f}%"]
        for (BK, stages), b in rings.items():
            R = min(64, max(8, 1 << (M - 1).bit_length()))
            cuda_gemm.stream_shape = lambda R_, K_, S=1, BK=BK, stages=stages: (BK, fitted(R_, BK, stages))
            t = time_captured(lambda: b.gemm_stream(x, rotating(), y))
            cells.append(f"k{BK}x{fitted(R, BK, stages)} {N * K * 2 / bandwidth / t * 100:.0f}%")
        cuda_gemm.stream_shape = committed_shape
        print(f"{name:<12} {M:>3}  " + "  ".join(cells), flush=True)
        del rotating
elif sys.argv[1] == "stages":
    import minispec.backends.cuda_gemm as cuda_gemm

    print(f"gemm_stream's two ring shapes at up to 16 rows on {card_name()} (cluster size chosen as in the engine); µs per call "
          "(graphs of 20; consecutive calls read different weight copies, as in bench gemm)")
    print(f"{'shape':<12} {'M':>3} {'k64 x4':>9} {'k128 x3':>9} {'floor':>9}")
    bandwidth = copy_bandwidth()
    chosen = cuda_gemm.stream_shape
    backend.gemm = "own"
    for name, (K, N) in SHAPES.items():
        for M in (1, 4, 16):
            x, weight = operands(K, N, M)
            rotating = rotated(weight)
            cells = []
            for shape in ((64, 4), (128, 3)):
                cuda_gemm.stream_shape = lambda R, K, S=1, shape=shape: shape
                cells.append(time_captured(lambda: backend.linear(x, rotating())) * 1e6)
            cells.append(N * K * 2 / bandwidth * 1e6)
            print(f"{name:<12} {M:>3} " + " ".join(f"{c:>9.1f}" for c in cells), flush=True)
            del rotating
    cuda_gemm.stream_shape = chosen
else:
    backend.gemm = "own"
    for name, (K, N) in SHAPES.items():
        if name not in ("8B gate/up", "8B down"):
            continue
        for M in (1, 64):
            x, weight = operands(K, N, M)
            for _ in range(2):
                backend.linear(x, weight)
    cp.cuda.Device().synchronize()
