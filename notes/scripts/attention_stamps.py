"""Device probe: a timeline of the wgmma tree attention's blocks. The kernel source is patched (in this process
only) so that thread 0 of every block writes %globaltimer at five points: entry, after the block barrier (Q
staged), after the first tile's softmax, after the tile loop, after the stores. Prints, per case, the span of
the launch and the spread of each interval over the blocks that had rows (min / median / max, µs), plus the
kernel timed alone as a captured graph. Usage: PYTHONPATH=$PWD python3 notes/scripts/attention_stamps.py [blocks | first-tile]
  blocks: per-block loop times against the block's row tile, KV head, share and SM.
  first-tile: the time before the loop in detail, eight points (entry, barriers initialised, the wait for the kernel
  ahead passed, Q staged, tile 0 landed, its softmax done, the loop done, the stores done), the stamps those of the
  last of 20 calls in a captured graph."""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends import cuda_backend
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, require_gpu, time_captured

STORE = "    store_rows<D>(o, m0, m1, l0, l1, r, t, blockIdx.z, gridDim.z, o_part, ml_part, out, N, H);\n}"


def stamped(source: str, anchors, store: tuple[int, int], points: int) -> str:
    """attention_wgmma.cu with thread 0 of every wgmma block writing %globaltimer into attn_stamps[block][k] (and, at
    stamp 0, its SM into attn_sm): after the last line of each anchor's text (`guard`: a condition, for a stamp
    inside a lambda the loop calls), and before and after the stores (`store`)."""
    head = (f"__device__ unsigned long long attn_stamps[8192 * {points}];\n__device__ unsigned attn_sm[8192];\n"
            "#define STAMP(k) if (threadIdx.x == 0) { unsigned long long t_; asm volatile(\"mov.u64 %0, %%globaltimer;\" : \"=l\"(t_)); "
            f"attn_stamps[((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * {points} + (k)] = t_; "
            "if ((k) == 0) { unsigned s_; asm volatile(\"mov.u32 %0, %%smid;\" : \"=r\"(s_)); "
            "attn_sm[(blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = s_; } }\n")
    for anchor, k, guard in anchors:
        assert source.count(anchor) == 1, anchor
        at = source.index("\n", source.index(anchor) + anchor.rfind("\n") + 1)
        source = source[:at] + f"\n    {guard}STAMP({k})" + source[at:]
    assert source.count(STORE) == 1
    return head + source.replace(STORE, f"    STAMP({store[0]})\n" + STORE.replace("\n}", f"\n    STAMP({store[1]})\n}}"))


FIRST_TILE = "first-tile" in sys.argv
assert not (FIRST_TILE and "blocks" in sys.argv), "blocks reads the default stamps: one mode at a time"
if FIRST_TILE:  # the time before the loop in detail
    POINTS, STORES = 8, (6, 7)
    ANCHORS = [("    __nv_bfloat16* k_ring = base;", 0, ""), ("    __syncthreads();  // barriers initialised", 1, ""),
               ("    // consumers\n    pdl_wait();", 2, ""), ("    if (active) load_query<D>(q, r, scale, t, qa);", 3, ""),
               ("        mbarrier_wait(full + i % RING, (i / RING) & 1);\n        const __nv_bfloat16* k_buf", 4, "if (i == 0) "),
               ("        softmax(0, corr0, corr1);", 5, "")]
    NAMES = ["barriers initialised", "wait for the kernel ahead", "Q staged", "tile 0 landed", "tile 0's S + softmax",
             "tile loop", "stores"]
else:
    POINTS, STORES = 5, (3, 4)
    ANCHORS = [("    __nv_bfloat16* k_ring = base;", 0, ""), ("    __syncthreads();  // barriers initialised", 1, ""),
               ("        softmax(0, corr0, corr1);", 2, "")]
    NAMES = ["prologue (Q staged, barrier)", "first tile (wait + S + softmax)", "tile loop", "stores"]
original = cuda_backend.kernel_source


def patched(name):
    source = original(name)
    return stamped(source, ANCHORS, STORES, POINTS) if name == "attention_wgmma.cu" else source


cuda_backend.kernel_source = patched
cp = require_gpu()
be = CudaBackend("bfloat16")
BLOCKS = "blocks" in sys.argv  # per-block loop times against the block's row tile, KV head, share and SM
CASES = ([(1, 64, 8192, None), (1, 64, 32768, None)] if BLOCKS else [(1, 64, 512, None), (1, 64, 8192, None), (1, 64, 32768, None)]
         if FIRST_TILE else [(1, 64, 8192, None), (1, 64, 8192, 1), (1, 64, 512, None), (1, 64, 32768, None)])
last = POINTS - 1
for B, T, ctx, splits in CASES:
    q, k, v, plan = attention_case(cp, be, B, T, ctx, 32, 8, 128)
    be.attention_splits = splits
    for _ in range(3):
        be.attention(q, k, v, plan, 0.1)
    cp.cuda.Device().synchronize()
    module = be.modules[("attention_wgmma.cu", 128)]
    stamps = cp.ndarray((8192, POINTS), dtype=cp.uint64, memptr=module.get_global("attn_stamps"))
    stamps.fill(0)
    if FIRST_TILE:  # in a graph of 20 calls, as `bench attention` times it (the kernel ahead: the last call's merge)
        took = f", {time_captured(lambda: be.attention(q, k, v, plan, 0.1)) * 1e6:.1f} µs a call; the last call's"
    else:  # one launch
        took = ":"
        be.attention(q, k, v, plan, 0.1)
    cp.cuda.Device().synchronize()
    s = cp.asnumpy(stamps).astype(np.int64)
    sm = cp.asnumpy(cp.ndarray((8192,), dtype=cp.uint32, memptr=module.get_global("attn_sm"))).astype(np.int64)
    keep = (s[:, 0] > 0) & (s[:, last] > 0)
    index, s, sm = np.nonzero(keep)[0], s[keep], sm[keep]
    t0 = s[:, 0].min()
    print(f"B={B} T={T} ctx={ctx} splits={splits or 'auto'}{took} {len(s)} blocks with rows, span {(s[:, last].max() - t0) / 1e3:.1f} µs")
    cols = [s[:, 0] - t0] + [s[:, i + 1] - s[:, i] for i in range(last)]
    for n, c in zip(["start (from the first block's)", *NAMES], cols):
        print(f"   {n:34s} min {c.min()/1e3:6.2f}  median {np.median(c)/1e3:6.2f}  max {c.max()/1e3:6.2f}")
    end = s[:, last] - t0
    print(f"   {'end (from the first start)':34s} min {end.min()/1e3:6.2f}  median {np.median(end)/1e3:6.2f}  max {end.max()/1e3:6.2f}")
    be.attention_splits = None
    if BLOCKS:  # grid (row tiles, B * Hkv, shares); block index = (z * gy + y) * gx + x
        gx = 2
        x, y, z = index % gx, (index // gx) % (B * 8), index // (gx * B * 8)
        loop = (s[:, 3] - s[:, 2]) / 1e3
        print("   loop by row tile: " + "  ".join(f"x={i} {np.median(loop[x == i]):.2f}" for i in range(gx)))
        print("   loop by KV head:  " + "  ".join(f"{np.median(loop[y == i]):.2f}" for i in range(8)))
        print("   loop by share:    " + "  ".join(f"{np.median(loop[z == i]):.2f}" for i in range(z.max() + 1)))
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
