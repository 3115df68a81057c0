"""Device probe: the wgmma helpers of kernels/attention.cu against NumPy, one warpgroup, one K and V tile.

  python3 notes/scripts/wgmma_probe.py

S = A K^T (64 x 128 by 64 keys, K-major B) and O = P V (64 x 64 keys by 128 dims, MN-major B, transposed),
both from 128-byte-swizzled shared tiles laid out as the tree-attention kernel lays them; O is tried with the
two readings of LBO / SBO. Also says how the module compiled (CuPy's RawModule with -arch=sm_90a)."""
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import kernel_source
from minispec.bench_gpu import require_gpu

PROBE = r"""
extern "C" __global__ void wgmma_probe(const __nv_bfloat16* A, const __nv_bfloat16* Kt, const __nv_bfloat16* Pm,
                                       const __nv_bfloat16* V, float* S_out, float* O_out, int lbo, int sbo) {
    extern __shared__ __align__(1024) unsigned char smem[];
    __nv_bfloat16* kt = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* vt = kt + 8192;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    for (int c = tid; c < 64 * 16; c += 128) {
        const int key = c / 16, chunk = c % 16, atom = chunk / 8, cc = chunk % 8;
        const int at = atom * 64 * 64 + key * 64 + ((cc ^ (key & 7)) * 8);
        *reinterpret_cast<uint4*>(kt + at) = *reinterpret_cast<const uint4*>(Kt + key * 128 + chunk * 8);
        *reinterpret_cast<uint4*>(vt + at) = *reinterpret_cast<const uint4*>(V + key * 128 + chunk * 8);
    }
    fence_async_shared();
    __syncthreads();
    const int r0 = 16 * warp + g, r1 = r0 + 8;
    auto pair = [](const __nv_bfloat16* p) { return *reinterpret_cast<const unsigned*>(p); };
    float s[8][4];
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 8; ks++) {
        const unsigned a[4] = {pair(A + r0 * 128 + 16 * ks + 2 * t), pair(A + r1 * 128 + 16 * ks + 2 * t),
                               pair(A + r0 * 128 + 16 * ks + 2 * t + 8), pair(A + r1 * 128 + 16 * ks + 2 * t + 8)};
        wgmma_n64<0>(s, a, smem_descriptor(kt + (ks / 4) * 4096 + (ks % 4) * 16, 16, 1024), ks > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    wgmma_pin(s);
    for (int j = 0; j < 8; j++) {
        S_out[r0 * 64 + 8 * j + 2 * t] = s[j][0];
        S_out[r0 * 64 + 8 * j + 2 * t + 1] = s[j][1];
        S_out[r1 * 64 + 8 * j + 2 * t] = s[j][2];
        S_out[r1 * 64 + 8 * j + 2 * t + 1] = s[j][3];
    }
    float o[16][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const unsigned a[4] = {pair(Pm + r0 * 64 + 16 * kk + 2 * t), pair(Pm + r1 * 64 + 16 * kk + 2 * t),
                               pair(Pm + r0 * 64 + 16 * kk + 2 * t + 8), pair(Pm + r1 * 64 + 16 * kk + 2 * t + 8)};
        wgmma_n128<1>(o, a, smem_descriptor(vt + kk * 16 * 64, lbo, sbo), kk > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    wgmma_pin(o);
    float o64[8][4];  // the first 64 dims alone: the n64 product with a single atom along n
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const unsigned a[4] = {pair(Pm + r0 * 64 + 16 * kk + 2 * t), pair(Pm + r1 * 64 + 16 * kk + 2 * t),
                               pair(Pm + r0 * 64 + 16 * kk + 2 * t + 8), pair(Pm + r1 * 64 + 16 * kk + 2 * t + 8)};
        wgmma_n64<1>(o64, a, smem_descriptor(vt + kk * 16 * 64, lbo, sbo), kk > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    wgmma_pin(o64);
    for (int j = 0; j < 8; j++) {
        O_out[64 * 128 + r0 * 64 + 8 * j + 2 * t] = o64[j][0];
        O_out[64 * 128 + r0 * 64 + 8 * j + 2 * t + 1] = o64[j][1];
        O_out[64 * 128 + r1 * 64 + 8 * j + 2 * t] = o64[j][2];
        O_out[64 * 128 + r1 * 64 + 8 * j + 2 * t + 1] = o64[j][3];
    }
    for (int j = 0; j < 16; j++) {
        O_out[r0 * 128 + 8 * j + 2 * t] = o[j][0];
        O_out[r0 * 128 + 8 * j + 2 * t + 1] = o[j][1];
        O_out[r1 * 128 + 8 * j + 2 * t] = o[j][2];
        O_out[r1 * 128 + 8 * j + 2 * t + 1] = o[j][3];
    }
}
"""

cp = require_gpu()
source = kernel_source("attention.cu") + PROBE
try:
    module = cp.RawModule(code=source, options=("-std=c++17", "-DSTORAGE_BF16", "-arch=sm_90a"))
    kernel = module.get_function("wgmma_probe")
    print("RawModule with -arch=sm_90a: compiled")
except Exception as error:  # noqa: BLE001 - a probe: say what failed
    print("RawModule with -arch=sm_90a failed:", str(error)[:2000])
    raise SystemExit(1)

rng = np.random.default_rng(0)
bf = lambda a: a.astype(ml_dtypes.bfloat16)  # noqa: E731
A, K, P, V = bf(rng.normal(size=(64, 128))), bf(rng.normal(size=(64, 128))), bf(rng.random((64, 64))), bf(rng.normal(size=(64, 128)))
dev = lambda a: cp.asarray(a.view(np.uint16))  # noqa: E731
S_expected = A.astype(np.float64) @ K.astype(np.float64).T
O_expected = P.astype(np.float64) @ V.astype(np.float64)
for lbo, sbo in ((8192, 1024), (1024, 8192)):
    S = cp.full((64, 64), cp.nan, dtype=cp.float32)
    O = cp.full((64 * 128 + 64 * 64,), cp.nan, dtype=cp.float32)
    kernel((1,), (128,), (dev(A), dev(K), dev(P), dev(V), S, O, np.int32(lbo), np.int32(sbo)), shared_mem=32768)
    cp.cuda.Device().synchronize()
    s_err = np.abs(cp.asnumpy(S) - S_expected).max()
    o_err = np.abs(cp.asnumpy(O[: 64 * 128]).reshape(64, 128) - O_expected).max()
    o64_err = np.abs(cp.asnumpy(O[64 * 128:]).reshape(64, 64) - O_expected[:, :64]).max()
    print(f"LBO {lbo} SBO {sbo}: S max error {s_err:.2e} (|S| ~ {np.abs(S_expected).max():.1f}), O max error {o_err:.2e}, "
          f"n64 O max error {o64_err:.2e}")
