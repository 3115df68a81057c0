// Small-M GEMM on tensor cores, streaming the weights: y[M, N] = x[M, K] . W[N, K]^T.
//
// Decode and tree verify have M = B * T <= 64 rows, so the cost is reading W once (N * K * 2 bytes); the
// kernel keeps the whole GPU's weight reads in flight through a cp.async ring in shared memory.
//
// Operands: x bf16 [M, K] (written in bf16 by the op before the GEMM), W bf16 [N, K] (the checkpoint
// layout, y = x W^T), y float [M, N].
//
// gemm_stream_r{R}_k{BK}_s{S} (R = 8, 16, 32, 64 staged x rows; BK = 64 or 128 k per stage; S = 1, 2, 4, 8
// blocks per cluster), K % (BK S) == 0, N K < 2^32 (element offsets are 32-bit):
//   The product is computed transposed, y^T = W x^T, so the weight rows fill the 16-row side of
//   mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 and the few x rows its 8-column side (R / 8 column tiles).
//   Fragments (g = lane / 4, t = lane % 4), read from shared memory with ldmatrix.x4:
//     A (W):   a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//     B (x^T): b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g);   C: c0,c1 = (g, 2t..), c2,c3 = (g+8, 2t..)
//   Launch: grid (ceil(N / 128), S, ceil(M / R)), block 256, cluster (1, S, 1), dynamic shared memory
//   STAGES x (128 + R) x BK x 2 bytes. Block (bx, s, bz) owns weight rows bx*128 .. +128, x rows bz*R .. +R and
//   k range [s K / S, (s+1) K / S). Its 8 warps are 4 row groups of 32 weight rows x 2 halves of each
//   k stage; a stage is W [128, BK] + x [R, BK] in bf16, its 16-byte chunks swizzled (chunk c of row r
//   sits at c ^ (r % 8)) so the 8 rows of every ldmatrix phase and cp.async quarter-warp hit 32 distinct banks.
//   STAGES - 1 stages are in flight while the tensor cores work on the oldest.
//   Reduction, in a fixed order (the same inputs give the same bits): the k-half 1 warps store their
//   sums in shared memory, the k-half 0 warps add theirs, then rank r of the cluster sums rows
//   r * 128 / S .. +128 / S over the S blocks' shared memory (rank order, through distributed shared
//   memory) and writes them to y, coalesced along N. So y is complete when the kernel ends.
// gemm_wgmma_w{WGS}_x{XROWS}_s{S} (gemm_wgmma.cu, sm_90a): up to 64 rows on warpgroup MMA, operands brought by TMA.
// gemm_wgmma_tiles_w{WGS}_x{XROWS} (gemm_wgmma.cu, sm_90a): the same without split-K on persistent blocks, for weights of
//   many more tiles than blocks (the LM heads at 17-64 rows).
// gemm_bf16: the plain version for any K that is a multiple of 16 (one 4-byte weight load per fragment).
// What both families share (split-K cluster sums, the split RMSNorm, the gated epilogue): gemm.cuh.
// gemm_stream's body and instance macro: gemm_stream.cuh; this file holds its plain products of up to 16 rows,
// gemm_stream_wide.cu those of 32 and 64, gemm_fused.cu those with a fused epilogue (the split norm's finish, the
// gated product), so that a first run compiles them side by side, or not at all where no rule takes them.
// NumPy reference: numpy_backend.linear (on bf16-rounded x and W). Tests: tests/test_cuda_kernels.py.
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "pdl.cuh"
#include "gemm_stream.cuh"

GEMM_STREAM_CLUSTERS(8, 128, 3, )
GEMM_STREAM_CLUSTERS(16, 128, 3, )
GEMM_STREAM_CLUSTERS(8, 64, 4, )   // K a multiple of 64, not of 128
GEMM_STREAM_CLUSTERS(16, 64, 4, )
// the 32- and 64-row instances, which no rule takes (cuBLAS or gemm_wgmma serve from 17 rows), are in
// gemm_stream_wide.cu: they were two thirds of this file's compile, on a first answer's path

// C fragments of four m16 tiles (rows m_base ..) and one n8 tile (columns n0 ..) to y [M, N], bounds-checked.
__device__ __forceinline__ void store_tiles(float* __restrict__ y, const float (*acc)[4], int m_base, int n0, int M, int N,
                                            int g, int t) {
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
        int r0 = m_base + mt * 16 + g, r1 = r0 + 8, c = n0 + 2 * t;
        if (r0 < M && c < N) y[(long long)r0 * N + c] = acc[mt][0];
        if (r0 < M && c + 1 < N) y[(long long)r0 * N + c + 1] = acc[mt][1];
        if (r1 < M && c < N) y[(long long)r1 * N + c] = acc[mt][2];
        if (r1 < M && c + 1 < N) y[(long long)r1 * N + c + 1] = acc[mt][3];
    }
}

// Launch: grid (ceil(N / 32), ceil(M / 64)), block 128: warp w owns columns (blockIdx.x * 4 + w) * 8 .. +8.
extern "C" __global__ void gemm_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                     float* __restrict__ y, int M, int N, int K) {
    pdl_wait();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int n0 = (blockIdx.x * 4 + warp) * 8, m_base = blockIdx.y * 64;
    if (n0 >= N) return;
    const __nv_bfloat16* w_row = w + (long long)min(n0 + g, N - 1) * K;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
        unsigned b0 = *reinterpret_cast<const unsigned*>(w_row + k0 + 2 * t);
        unsigned b1 = *reinterpret_cast<const unsigned*>(w_row + k0 + 2 * t + 8);
#pragma unroll
        for (int mt = 0; mt < 4; mt++) {
            int r0 = m_base + mt * 16 + g, r1 = r0 + 8;
            if (m_base + mt * 16 >= M) break;
            const unsigned* x0 = reinterpret_cast<const unsigned*>(x + (long long)r0 * K + k0 + 2 * t);
            const unsigned* x1 = reinterpret_cast<const unsigned*>(x + (long long)r1 * K + k0 + 2 * t);
            mma16816(acc[mt], r0 < M ? x0[0] : 0u, r1 < M ? x1[0] : 0u, r0 < M ? x0[4] : 0u, r1 < M ? x1[4] : 0u, b0, b1);
        }
    }
    store_tiles(y, acc, m_base, n0, M, N, g, t);
}
