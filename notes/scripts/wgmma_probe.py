"""Device probe: the wgmma helpers of kernels/hopper.cuh (through attention_wgmma.cu) against NumPy, one warpgroup, one K and V tile.

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
// one warpgroup's accumulator (rows 16 warp + g, + 8; cols 8j + 2t, + 1) into a row-major [64, cols] array
template <int NT>
__device__ void store_tile(const float (&d)[NT][4], float* out, int cols) {
    const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4, r0 = 16 * warp + g, r1 = r0 + 8;
    for (int j = 0; j < NT; j++) {
        out[r0 * cols + 8 * j + 2 * t] = d[j][0], out[r0 * cols + 8 * j + 2 * t + 1] = d[j][1];
        out[r1 * cols + 8 * j + 2 * t] = d[j][2], out[r1 * cols + 8 * j + 2 * t + 1] = d[j][3];
    }
}

// the A fragment of k-step ks of a row-major bf16 [64, cols] matrix
__device__ void a_fragment(const __nv_bfloat16* m, int cols, int ks, unsigned (&a)[4]) {
    const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4, r0 = 16 * warp + g, r1 = r0 + 8;
    auto pair = [](const __nv_bfloat16* p) { return *reinterpret_cast<const unsigned*>(p); };
    a[0] = pair(m + r0 * cols + 16 * ks + 2 * t), a[1] = pair(m + r1 * cols + 16 * ks + 2 * t);
    a[2] = pair(m + r0 * cols + 16 * ks + 2 * t + 8), a[3] = pair(m + r1 * cols + 16 * ks + 2 * t + 8);
}

extern "C" __global__ void wgmma_probe(const __nv_bfloat16* A, const __nv_bfloat16* Kt, const __nv_bfloat16* Pm,
                                       const __nv_bfloat16* V, float* S_out, float* O_out, int lbo, int sbo) {
    extern __shared__ __align__(1024) unsigned char smem[];
    __nv_bfloat16* kt = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* vt = kt + 8192;
    for (int c = threadIdx.x; c < 64 * 16; c += 128) {  // K and V [64 keys, 128 dims] into swizzled [2][64][64]
        const int key = c / 16, chunk = c % 16, at = chunk / 8 * 64 * 64 + key * 64 + ((chunk % 8) ^ (key & 7)) * 8;
        *reinterpret_cast<uint4*>(kt + at) = *reinterpret_cast<const uint4*>(Kt + key * 128 + chunk * 8);
        *reinterpret_cast<uint4*>(vt + at) = *reinterpret_cast<const uint4*>(V + key * 128 + chunk * 8);
    }
    fence_async_shared();
    __syncthreads();
    unsigned a[4];
    float s[8][4], o[16][4], o64[8][4];  // o64: the first 64 dims alone (the n64 product, one atom along n)
    wgmma_fence();
    for (int ks = 0; ks < 8; ks++) {
        a_fragment(A, 128, ks, a);
        wgmma_n64<0>(s, a, smem_descriptor(kt + ks / 4 * 4096 + ks % 4 * 16, 16, 1024), ks > 0);
    }
    for (int kk = 0; kk < 4; kk++) {
        a_fragment(Pm, 64, kk, a);
        wgmma_n128<1>(o, a, smem_descriptor(vt + kk * 16 * 64, lbo, sbo), kk > 0);
        wgmma_n64<1>(o64, a, smem_descriptor(vt + kk * 16 * 64, lbo, sbo), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_pin(s), wgmma_pin(o), wgmma_pin(o64);
    store_tile(s, S_out, 64);
    store_tile(o, O_out, 128);
    store_tile(o64, O_out + 64 * 128, 64);
}
"""

cp = require_gpu()
source = kernel_source("attention_wgmma.cu") + PROBE
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
