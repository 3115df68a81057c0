"""Device probe: a timeline of the wgmma tree attention's blocks. The kernel source is patched (in this process
only) so that thread 0 of every block writes %globaltimer at five points: entry, after the block barrier (Q
staged), after the first tile's softmax, after the tile loop, after the stores. Prints, per case, the span of
the launch and the spread of each interval over the blocks that had rows (min / median / max, µs), plus the
kernel timed alone as a captured graph. Usage: PYTHONPATH=$PWD python3 notes/scripts/attention_stamps.py"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends import cuda_backend
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, require_gpu

original = cuda_backend.kernel_source
POINTS = [
    ("    __nv_bfloat16* k_ring = base;", 0, True),
    ("    __syncthreads();  // barriers initialised", 1, False),
    ("        softmax(0, corr0, corr1);", 2, False),
    ("    store_rows<D>(o, m0, m1, l0, l1, r, t, blockIdx.z, gridDim.z, o_part, ml_part, out, N, H);\n}", 3, True),
]


def patched(name):
    source = original(name)
    if name != "attention.cu":
        return source
    head = ("__device__ unsigned long long attn_stamps[8192 * 5];\n__device__ unsigned attn_sm[8192];\n"
            "#define STAMP(k) if (threadIdx.x == 0) { unsigned long long t_; asm volatile(\"mov.u64 %0, %%globaltimer;\" : \"=l\"(t_)); "
            "attn_stamps[((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * 5 + (k)] = t_; "
            "if ((k) == 0) { unsigned s_; asm volatile(\"mov.u32 %0, %%smid;\" : \"=r\"(s_)); "
            "attn_sm[(blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = s_; } }\n")
    for anchor, k, before in POINTS:
        assert source.count(anchor) >= 1, anchor
        if k == 3:  # before the store and after it
            source = source.replace(anchor, "    STAMP(3)\n" + anchor.replace("\n}", "\n    STAMP(4)\n}"), 1)
        else:  # after the whole line holding the anchor
            at = source.index("\n", source.index(anchor))
            source = source[:at] + "\n    STAMP(%d)" % k + source[at:]
    return head + source


cuda_backend.kernel_source = patched
cp = require_gpu()
be = CudaBackend("bfloat16")
BLOCKS = "blocks" in sys.argv  # per-block loop times against the block's row tile, KV head, share and SM
CASES = [(1, 64, 8192, None), (1, 64, 32768, None)] if BLOCKS else [(1, 64, 8192, None), (1, 64, 8192, 1), (1, 64, 512, None), (1, 64, 32768, None)]
for B, T, ctx, splits in CASES:
    q, k, v, plan = attention_case(cp, be, B, T, ctx, 32, 8, 128)
    be.attention_splits = splits
    module = None
    for _ in range(3):
        be.attention(q, k, v, plan, 0.1)
    cp.cuda.Device().synchronize()
    module = be.modules["attention.cu"]
    stamps_ptr = module.get_global("attn_stamps")
    stamps = cp.ndarray((8192, 5), dtype=cp.uint64, memptr=stamps_ptr)
    stamps.fill(0)
    be.attention(q, k, v, plan, 0.1)
    cp.cuda.Device().synchronize()
    s = cp.asnumpy(stamps).astype(np.int64)
    sm = cp.asnumpy(cp.ndarray((8192,), dtype=cp.uint32, memptr=module.get_global("attn_sm"))).astype(np.int64)
    keep = (s[:, 0] > 0) & (s[:, 4] > 0)
    index, s, sm = np.nonzero(keep)[0], s[keep], sm[keep]
    t0 = s[:, 0].min()
    print(f"B={B} T={T} ctx={ctx} splits={splits or 'auto'}: {len(s)} blocks with rows, span {(s[:, 4].max() - t0) / 1e3:.1f} µs")
    names = ["start (from the first block's)", "prologue (Q staged, barrier)", "first tile (wait + S + softmax)", "tile loop", "stores"]
    cols = [s[:, 0] - t0] + [s[:, i + 1] - s[:, i] for i in range(4)]
    for n, c in zip(names, cols):
        print(f"   {n:34s} min {c.min()/1e3:6.2f}  median {np.median(c)/1e3:6.2f}  max {c.max()/1e3:6.2f}")
    end = s[:, 4] - t0
    print(f"   {'end (from the first start)':34s} min {end.min()/1e3:6.2f}  median {np.median(end)/1e3:6.2f}  max {end.max()/1e3:6.2f}")
    be.attention_splits = None
    if BLOCKS:  # grid (row tiles, B * Hkv, shares); block index = (z * gy + y) * gx + x
        gx = 2
        x, y, z = index % gx, (index // gx) % (B * 8), index // (gx * B * 8)
        loop = (s[:, 3] - s[:, 2]) / 1e3
        print(f"   loop by row tile: " + "  ".join(f"x={i} {np.median(loop[x == i]):.2f}" for i in range(gx)))
        print(f"   loop by KV head:  " + "  ".join(f"{np.median(loop[y == i]):.2f}" for i in range(8)))
        print(f"   loop by share:    " + "  ".join(f"{np.median(loop[z == i]):.2f}" for i in range(z.max() + 1)))
        pair = {}
        for i in range(len(loop)):
            pair.setdefault((y[i], z[i]), {})[x[i]] = (loop[i], s[i, 3] - t0)
        both = [v for v in pair.values() if len(v) == 2]
        diff = np.array([abs(v[0][1] - v[1][1]) / 1e3 for v in both])
        print(f"   a KV head's two row tiles end apart by: median {np.median(diff):.2f}  max {diff.max():.2f} µs")
        order = np.argsort(loop)
        print("   slowest (loop µs, sm, x, y, z): " + "  ".join(f"{loop[i]:.1f}/{sm[i]}/{x[i]}{y[i]}{z[i]}" for i in order[-12:]))
        print("   fastest (loop µs, sm, x, y, z): " + "  ".join(f"{loop[i]:.1f}/{sm[i]}/{x[i]}{y[i]}{z[i]}" for i in order[:12]))
        print("   loop by SM (sm: µs): " + " ".join(f"{sm[i]}:{loop[i]:.1f}" for i in np.argsort(sm)))
