"""Device probe: where the wgmma tree attention's first tile goes. As attention_stamps.py, thread 0 of every block
(consumer warp 0) writes %globaltimer, here at eight points: entry, the barriers initialised, the wait for the
previous kernel passed (pdl_wait), Q staged in registers, tile 0 landed (its full barrier), tile 0's softmax done,
the tile loop done, the stores done. Each case runs in a captured graph of 20 calls (as `bench attention` times
it, so the previous call's merge is the kernel ahead); the stamps are the last call's. Prints each interval's
min / median / max over the blocks with rows (µs).

    PYTHONPATH=$PWD python3 notes/scripts/attention_first_tile.py
"""
import numpy as np

from minispec.backends import cuda_backend
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, require_gpu, time_captured

POINTS = 8
ANCHORS = [  # (text, stamp index): the stamp goes after the line holding the text
    ("    __nv_bfloat16* k_ring = base;", 0),
    ("    __syncthreads();  // barriers initialised", 1),
    ("    // consumers\n    pdl_wait();", 2),
    ("    if (active) load_query<D>(q, r, scale, t, qa);", 3),
    ("        mbarrier_wait(full + i % RING, (i / RING) & 1);\n        const __nv_bfloat16* k_buf", 4),
    ("        softmax(0, corr0, corr1);", 5),
]
STORE = "    store_rows<D>(o, m0, m1, l0, l1, r, t, blockIdx.z, gridDim.z, o_part, ml_part, out, N, H);\n}"
NAMES = ["barriers initialised", "wait for the kernel ahead", "Q staged", "tile 0 landed", "tile 0's S + softmax",
         "tile loop", "stores"]
original = cuda_backend.kernel_source


def patched(name):
    source = original(name)
    if name != "attention.cu":
        return source
    head = (f"__device__ unsigned long long attn_stamps[8192 * {POINTS}];\n"
            "#define STAMP(k) if (threadIdx.x == 0) { unsigned long long t_; asm volatile(\"mov.u64 %0, %%globaltimer;\" : \"=l\"(t_)); "
            f"attn_stamps[((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * {POINTS} + (k)] = t_; }}\n")
    for anchor, k in ANCHORS:
        assert source.count(anchor) == 1, anchor
        at = source.index(anchor)
        if k == 4:  # inside issue_s: tile 0 only
            at = source.index("\n", at)
            source = source[:at] + "\n        if (i == 0) STAMP(4)" + source[at:]
            continue
        at = source.index("\n", at + len(anchor) - 1) if "\n" in anchor else source.index("\n", at)
        source = source[:at] + f"\n    STAMP({k})" + source[at:]
    assert source.count(STORE) == 1
    source = source.replace(STORE, "    STAMP(6)\n" + STORE.replace("\n}", "\n    STAMP(7)\n}"))
    return head + source


cuda_backend.kernel_source = patched
cp = require_gpu()
be = CudaBackend("bfloat16")
for B, T, ctx in [(1, 64, 512), (1, 64, 8192), (1, 64, 32768)]:
    q, k, v, plan = attention_case(cp, be, B, T, ctx, 32, 8, 128)
    be.attention(q, k, v, plan, 0.1)
    stamps = cp.ndarray((8192, POINTS), dtype=cp.uint64, memptr=be.modules["attention.cu"].get_global("attn_stamps"))
    stamps.fill(0)
    took = time_captured(lambda: be.attention(q, k, v, plan, 0.1))
    s = cp.asnumpy(stamps).astype(np.int64)
    s = s[(s[:, 0] > 0) & (s[:, 7] > 0)]
    t0 = s[:, 0].min()
    print(f"B={B} T={T} ctx={ctx}: {took * 1e6:.1f} µs a call; the last call's {len(s)} blocks with rows span {(s[:, 7].max() - t0) / 1e3:.1f} µs")
    for i, name in enumerate(NAMES):
        c = (s[:, i + 1] - s[:, i]) / 1e3
        print(f"   {name:28s} min {c.min():6.2f}  median {np.median(c):6.2f}  max {c.max():6.2f}")
    start = (s[:, 0] - t0) / 1e3
    print(f"   {'entry (from the first)':28s} min {start.min():6.2f}  median {np.median(start):6.2f}  max {start.max():6.2f}")
