"""Device probe: a timeline of gemm_wgmma's blocks in a chain of calls, as `bench gemm` times them (20 calls of
`linear` in a captured graph on rotating weight copies past L2). The kernel source is patched (in this process only)
so that every block writes %globaltimer at: entry (thread 0), its producer past pdl_wait, its consumer past pdl_wait,
the consumer's first stage's products done, its last stage's products done, and its end (after the stores). The
stamps left are the last call's: per case, each interval's spread over the blocks (min / median / max, µs).

  PYTHONPATH=$PWD python3 notes/scripts/gemm_stamps.py [M ...]   (8B O, qkv and down shapes; default M 1 64)
"""
import itertools
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends import cuda_backend  # noqa: E402
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, require_gpu, time_captured, weight_copies  # noqa: E402

POINTS = 6
HEAD = ("__device__ unsigned long long gemm_stamps[4096 * 6];\n"
        "#define STAMP_AT(k, who) if (threadIdx.x == (who)) { unsigned long long t_; asm volatile(\"mov.u64 %0, %%globaltimer;\" : \"=l\"(t_)); "
        "gemm_stamps[(blockIdx.y * gridDim.x + blockIdx.x) * 6 + (k)] = t_; }\n")
EDITS = [  # (anchor, the stamp inserted after it)
    ("    const int n0 = blockIdx.x * (GLU ? ROWS / 2 : ROWS), k_len = K / S, k_begin = blockIdx.y * k_len, steps = k_len / BK;\n",
     "    STAMP_AT(0, 0)\n"),
    ("            pdl_wait();\n            prefetch();\n", "            STAMP_AT(1, 128 * WGS)\n"),
    ("    } else {\n        pdl_wait();\n        prefetch();\n", "        STAMP_AT(2, 0)\n"),
    ("            ring.products(acc, i, group);\n", "            if (i == 0) STAMP_AT(3, 0)\n"),
    ("        if (steps > 0) ring.release(steps - 1, lane);\n", "        STAMP_AT(4, 0)\n"),
    ("        store_cluster_sums<S, ROWS, XROWS, RED_STRIDE, THREADS>(red, reinterpret_cast<float*>(out), M, N, n0, scales);\n",
     "    STAMP_AT(5, 0)\n"),
]
NAMES = ["start (from the first block's)", "producer past the wait", "consumer past the wait (from entry)",
         "first stage's products", "the rest of the stages", "sum and stores", "end (from the first start)"]
original = cuda_backend.kernel_source


def patched(name):
    source = original(name)
    if name != "gemm_wgmma.cu":
        return source
    for anchor, stamp in EDITS:
        assert source.count(anchor) == 1, anchor
        source = source.replace(anchor, anchor + stamp)
    return HEAD + source


cuda_backend.kernel_source = patched
cp = require_gpu()
be = CudaBackend("bfloat16")
SHAPES = {"O": (4096, 4096), "qkv": (6144, 4096), "down": (4096, 14336)}  # (N, K)
rows = [int(a) for a in sys.argv[1:]] or [1, 64]
print(f"# gemm_stamps on {card_name()}: the last of 20 calls of linear in a captured graph on rotating weight copies; µs")
for name, (N, K) in SHAPES.items():
    copies = weight_copies(cp, N, K)
    for M in rows:
        x = cp.random.standard_normal((M, K), dtype=cp.float32).astype(cp.float16).view(cp.uint16)
        turn = itertools.count()
        be.linear(x, copies[0])
        module = be.modules[("gemm_wgmma.cu", None)]
        stamps = cp.ndarray((4096, POINTS), dtype=cp.uint64, memptr=module.get_global("gemm_stamps"))
        stamps.fill(0)
        per_call = time_captured(lambda: be.linear(x, copies[next(turn) % len(copies)]))
        cp.cuda.Device().synchronize()
        s = cp.asnumpy(stamps).astype(np.int64)
        s = s[(s > 0).all(axis=1)]
        t0 = s[:, 0].min()
        print(f"{name} M={M} [{N}, {K}]: {per_call * 1e6:.2f} µs a call, {len(s)} blocks, the last call's span "
              f"{(s[:, 5].max() - t0) / 1e3:.2f} µs")
        cols = [s[:, 0] - t0, s[:, 1] - s[:, 0], s[:, 2] - s[:, 0], s[:, 3] - s[:, 2], s[:, 4] - s[:, 3], s[:, 5] - s[:, 4],
                s[:, 5] - t0]
        for n, c in zip(NAMES, cols):
            print(f"   {n:38s} min {c.min() / 1e3:6.2f}  median {np.median(c) / 1e3:6.2f}  max {c.max() / 1e3:6.2f}", flush=True)
