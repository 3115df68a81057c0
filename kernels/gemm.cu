// Small-M GEMM on tensor cores, streaming the weights: y[M, N] = x[M, K] . W[N, K]^T (M <= 64 per launch row-tile).
//
// Decode and tree verify have M = B * T <= 64 rows, so the cost is reading W once (N * K * 2 bytes);
// the kernel is built to keep many wide weight loads in flight.
//
// Operands: x bf16 [M, K] (written in bf16 by the op before the GEMM), W bf16 [N, K]
// (the checkpoint layout, y = x W^T), partial float [splits, M, N] (y itself when splits == 1).
// K / splits must be a multiple of 32 (the launcher checks; else it uses the plain kernel below).
//
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 (inline PTX). Standard fragments, g = lane / 4, t = lane % 4:
//   A: a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B: b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g);  C: c0,c1 = (g, 2t..), c2,c3 = (g+8, 2t..)
// The sum over k does not care about the order of k, so we permute k inside each 32-wide block to match
// one 16-byte load per lane: lane (g, t) loads W[n0 + g][kb + 8t .. kb + 8t + 7] and uses elements
// 0-3 as (b0, b1) of the first mma and 4-7 as those of the second; its A fragments are read from the
// same physical k positions of x, so each product pairs the right x and W elements.
// Launch: grid (ceil(N / 64), splits, ceil(M / 64)), block 256 (8 warps x 8 columns); block (bx, s)
// covers columns bx*64 .. +64 and k range [s * K / splits, (s+1) * K / splits) in 128-wide steps with
// U (4 or 8) 16-byte loads per lane in flight (gemm_stream_pipelined also prefetches the next stage),
// then 32-wide steps for the rest. splits > 1 writes partials that reduce_splits sums in a fixed
// order (deterministic: the same inputs give the same bits); the ops after a GEMM sum the partials
// themselves (elementwise.cu), reduce_splits serves the LM head.
// NumPy reference: numpy_backend.linear (on bf16-rounded x and W). Tests: tests/test_cuda_kernels.py.
#include <cuda_bf16.h>

__device__ __forceinline__ void mma_bf16(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

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

// Two mmas over one 32-wide k block: lane's 16-byte weight load b covers physical k .. k + 7.
__device__ __forceinline__ void mma_block(float (*acc)[4], const __nv_bfloat16* __restrict__ x, uint4 b, int k,
                                          int m_base, int m_tiles, int M, int K, int g) {
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
        if (mt >= m_tiles) break;
        int r0 = m_base + mt * 16 + g, r1 = r0 + 8;
        uint4 x0 = r0 < M ? *reinterpret_cast<const uint4*>(x + (long long)r0 * K + k) : make_uint4(0, 0, 0, 0);
        uint4 x1 = r1 < M ? *reinterpret_cast<const uint4*>(x + (long long)r1 * K + k) : make_uint4(0, 0, 0, 0);
        mma_bf16(acc[mt], x0.x, x1.x, x0.y, x1.y, b.x, b.y);
        mma_bf16(acc[mt], x0.z, x1.z, x0.w, x1.w, b.z, b.w);
    }
}

// U 16-byte weight loads per lane per stage; with PIPELINE the next stage's loads are issued before this
// stage's mmas, so 2 U loads per lane are in flight while the tensor cores work.
template <int U, bool PIPELINE>
__device__ __forceinline__ void gemm_stream_body(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                                 float* __restrict__ out, int M, int N, int K) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int n0 = blockIdx.x * 64 + warp * 8, m_base = blockIdx.z * 64;
    int k_per_split = K / gridDim.y, k_begin = blockIdx.y * k_per_split, k_end = k_begin + k_per_split;
    int n = min(n0 + g, N - 1);  // clamped rows are computed and dropped at the store
    const uint4* w_row = reinterpret_cast<const uint4*>(w + (long long)n * K);
    int m_tiles = min(4, (M - m_base + 15) / 16);
    float acc[4][4] = {};
    constexpr int STEP = 32 * U;
    int kb = k_begin;
    uint4 cur[U], nxt[U];
    if (kb + STEP <= k_end) {
#pragma unroll
        for (int j = 0; j < U; j++) cur[j] = __ldg(w_row + (kb + 32 * j + 8 * t) / 8);
    }
    for (; kb + STEP <= k_end; kb += STEP) {
        if (PIPELINE && kb + 2 * STEP <= k_end) {
#pragma unroll
            for (int j = 0; j < U; j++) nxt[j] = __ldg(w_row + (kb + STEP + 32 * j + 8 * t) / 8);
        }
#pragma unroll
        for (int j = 0; j < U; j++) mma_block(acc, x, cur[j], kb + 32 * j + 8 * t, m_base, m_tiles, M, K, g);
        if (kb + 2 * STEP <= k_end) {
#pragma unroll
            for (int j = 0; j < U; j++) cur[j] = PIPELINE ? nxt[j] : __ldg(w_row + (kb + STEP + 32 * j + 8 * t) / 8);
        }
    }
    for (; kb < k_end; kb += 32) mma_block(acc, x, __ldg(w_row + (kb + 8 * t) / 8), kb + 8 * t, m_base, m_tiles, M, K, g);
    store_tiles(out + (long long)blockIdx.y * M * N, acc, m_base, n0, M, N, g, t);
}

// U = 4 without prefetch measured best of U in {2, 4, 8} with and without prefetch (notes/gemm_variants.log).
extern "C" __global__ void __launch_bounds__(256) gemm_stream(const __nv_bfloat16* x, const __nv_bfloat16* w, float* out,
                                                              int M, int N, int K) {
    gemm_stream_body<4, false>(x, w, out, M, N, K);
}

// y[i] = sum over s of partial[s, i], in split order.   grid (ceil(M * N / 256)), block 256.
extern "C" __global__ void reduce_splits(const float* __restrict__ partial, float* __restrict__ y, int splits, long long count) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float sum = 0.0f;
    for (int s = 0; s < splits; s++) sum += partial[s * count + i];
    y[i] = sum;
}

// The plain version for any K that is a multiple of 16 (one 4-byte weight load per fragment).
// Launch: grid (ceil(N / 32), ceil(M / 64)), block 128: warp w owns columns (blockIdx.x * 4 + w) * 8 .. +8.
extern "C" __global__ void gemm_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                     float* __restrict__ y, int M, int N, int K) {
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
            mma_bf16(acc[mt], r0 < M ? x0[0] : 0u, r1 < M ? x1[0] : 0u, r0 < M ? x0[4] : 0u, r1 < M ? x1[4] : 0u, b0, b1);
        }
    }
    store_tiles(y, acc, m_base, n0, M, N, g, t);
}
