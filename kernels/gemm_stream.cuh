// gemm_stream's body, its ring shapes and its instance macro, for the two files that instance it: kernels/gemm.cu
// (plain products; the product, operands, fragments and launch are described there) and kernels/gemm_fused.cu (the
// gated and norm-finishing epilogues). Two files, so that a machine's first run compiles them side by side.
#pragma once
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "pdl.cuh"
#include "gemm.cuh"

namespace stream {
constexpr int ROWS = 128;            // weight rows (columns of y) per block
constexpr int THREADS = 256;
constexpr int RED_STRIDE = ROWS + 4;  // floats per x row of the reduction buffer (+4: the warps' stores hit distinct banks)
}  // namespace stream

__device__ __forceinline__ int swizzle(int row, int chunk) { return chunk ^ (row & 7); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned shared_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address));
}

// GLU (gemm_stream_glu_*): W is the fused [gate; up] weight [2I, K], N = I, and out is act bf16 [M, I]; block bx
// stages gate rows bx 64 .. +64 as its rows 0-63 and the matching up rows as 64-127 (store_cluster_glu).
template <int R, int S, int BK, int STAGES, bool GLU, NormRole NORM>
__device__ __forceinline__ void gemm_stream_body(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                                 void* __restrict__ out, int M, int N, int K, const GemmNorm& norm) {
    using namespace stream;
    constexpr int NT = R / 8;                                  // 8-column mma tiles over the staged x rows
    constexpr int CHUNKS = BK / 8, ROW_STEP = THREADS / CHUNKS;  // 16-byte chunks per staged row; a thread's row step
    constexpr int W_BYTES = ROWS * BK * 2, STAGE_BYTES = W_BYTES + R * BK * 2;
    constexpr int W_LOADS = ROWS * CHUNKS / THREADS, X_LOADS = (R * CHUNKS + THREADS - 1) / THREADS;
    extern __shared__ __align__(128) unsigned char shared[];  // STAGES x (W [128, BK] | x [R, BK]), then the reduction
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int group = warp & 3, half = warp >> 2;             // weight rows group*32 .. +32; k chunks half*4 .. +4
    const int n0 = blockIdx.x * (GLU ? ROWS / 2 : ROWS), k_len = K / S, k_begin = blockIdx.y * k_len, steps = k_len / BK;
    const int m_base = blockIdx.z * R;
    x += (long long)m_base * K;
    M = min(M - m_base, R);
    const unsigned base = (unsigned)__cvta_generic_to_shared(shared);

    // This thread copies chunk c of staged rows r0 + ROW_STEP j (the same swizzle for every j: ROW_STEP % 8 == 0).
    const int c = tid % CHUNKS, r0 = tid / CHUNKS;
    const unsigned chunk_offset = (r0 * CHUNKS + swizzle(r0, c)) * 16;
    unsigned w_src[W_LOADS], x_src[X_LOADS];                  // element offsets (32-bit: fewer registers than pointers)
#pragma unroll
    for (int j = 0; j < W_LOADS; j++) {
        const int r = r0 + ROW_STEP * j;  // the block's weight row (rows past N repeat the last: their sums are not stored)
        const int row = !GLU ? min(n0 + r, N - 1) : r < ROWS / 2 ? min(n0 + r, N - 1) : N + min(n0 + r - ROWS / 2, N - 1);
        w_src[j] = (unsigned)row * K + k_begin + c * 8;
    }
#pragma unroll
    for (int j = 0; j < X_LOADS; j++) x_src[j] = (unsigned)min(r0 + ROW_STEP * j, M - 1) * K + k_begin + c * 8;
    auto load_weights = [&](int step) {
        unsigned ws = base + (step % STAGES) * STAGE_BYTES + chunk_offset;
        unsigned k = step * BK;
#pragma unroll
        for (int j = 0; j < W_LOADS; j++) cp_async16(ws + j * ROW_STEP * BK * 2, w + (w_src[j] + k), 16);
    };
    auto load_x = [&](int step) {
        unsigned xs = base + (step % STAGES) * STAGE_BYTES + chunk_offset + W_BYTES;
        unsigned k = step * BK;
#pragma unroll
        for (int j = 0; j < X_LOADS; j++)
            if (r0 + ROW_STEP * j < R) cp_async16(xs + j * ROW_STEP * BK * 2, x + (x_src[j] + k), r0 + ROW_STEP * j < M ? 16 : 0);
    };

    // ldmatrix rows: A (weights) lane l gives row l % 16 of a 16-row tile, k chunk + l / 16 (matrices a0..a3);
    // B (x) lane l gives row l % 8 of an 8-row tile, chunk + l / 8 (b0, b1 of k 0-15, then of k 16-31).
    const int a_row = group * 32 + (lane & 15), a_chunk = half * CHUNKS / 2 + (lane >> 4);
    const int b_row = lane & 7, b_chunk = half * CHUNKS / 2 + (lane >> 3);
    float acc[2][NT][4] = {};
    // The ring's first weight stages go out before the wait for the previous kernel (kernels/pdl.cuh): no
    // kernel writes W, while x is the previous kernel's output. The first commit group holds them all.
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
        if (s < steps) load_weights(s);
    pdl_wait();
    NormPrefetch<THREADS, (R > 8)> pre;  // the rows' partial sums of the norm before this product (this row tile's)
    const float* partials = norm.scale_partials + (long long)m_base * norm.scale_blocks;
    if constexpr (NORM == NORM_FINISH) pre.partials(partials, M * norm.scale_blocks, norm.scale_blocks);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < steps) load_x(s);
        cp_async_commit();  // empty groups keep the count uniform
    }
    for (int step = 0; step < steps; step++) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of `step` landed
        __syncthreads();                                       // everyone's did; and stage step - 1 is free to refill
        if (step + STAGES - 1 < steps) load_weights(step + STAGES - 1), load_x(step + STAGES - 1);
        cp_async_commit();
        // The block's last copies are out: the next kernel may launch, so that a GEMM behind this one copies its first
        // weight stages while these blocks drain their ring (notes/gemm_trigger_ab_h100_stop34.log: 8B O at one row
        // 81 -> 88% of copy bandwidth, qkv 86 -> 93%; triggering first thing, or earlier in the loop, was slower).
        if (step + STAGES >= steps) pdl_trigger();
        const unsigned ws = base + (step % STAGES) * STAGE_BYTES, xs = ws + W_BYTES;
#pragma unroll
        for (int u = 0; u < BK / 64; u++) {                    // the warp's half of the stage, 32 k at a time
            unsigned a[2][2][4];                                   // [row tile][k 0-15, 16-31][a0..a3]
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int k16 = 0; k16 < 2; k16++) {
                    int r = a_row + mt * 16;
                    ldmatrix_x4(a[mt][k16], ws + (r * CHUNKS + swizzle(r, a_chunk + 4 * u + 2 * k16)) * 16);
                }
            // Column tiles in groups of up to 4, k 0-15 of every (row tile, column tile) pair before k 16-31, so
            // 2 x 4 independent mmas separate each mma from the one that adds to its result.
            constexpr int GROUP = NT < 4 ? NT : 4;
#pragma unroll
            for (int n1 = 0; n1 < NT; n1 += GROUP) {
                unsigned b[GROUP][4];
#pragma unroll
                for (int j = 0; j < GROUP; j++) {
                    int r = (n1 + j) * 8 + b_row;
                    ldmatrix_x4(b[j], xs + (r * CHUNKS + swizzle(r, b_chunk + 4 * u)) * 16);
                }
#pragma unroll
                for (int k16 = 0; k16 < 2; k16++)
#pragma unroll
                    for (int j = 0; j < GROUP; j++)
#pragma unroll
                        for (int mt = 0; mt < 2; mt++)
                            mma16816(acc[mt][n1 + j], a[mt][k16][0], a[mt][k16][1], a[mt][k16][2], a[mt][k16][3], b[j][2 * k16], b[j][2 * k16 + 1]);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();                                           // the ring is free: it becomes the reduction buffer

    float* red = reinterpret_cast<float*>(shared);            // [R][RED_STRIDE]: red[m][row] = y[m][n0 + row] of this block
    for (int pass = 1; pass >= 0; pass--) {                    // k-half 1 stores, then k-half 0 adds
        if (half == pass) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float& slot = red[(nt * 8 + 2 * t + (i & 1)) * RED_STRIDE + group * 32 + mt * 16 + g + 8 * (i >> 1)];
                        slot = pass ? acc[mt][nt][i] : slot + acc[mt][nt][i];
                    }
        }
        __syncthreads();
    }
    float* scales = nullptr;  // the norm before this product (GemmNorm): its rows' scales, after the reduction buffer
    if constexpr (NORM == NORM_FINISH) {
        scales = red + R * RED_STRIDE;
        row_scales(norm, partials, pre, M, K, scales + R, scales);
    }
    if constexpr (GLU)
        store_cluster_glu<S, R, RED_STRIDE, THREADS, ROWS / 2>(red, reinterpret_cast<__nv_bfloat16*>(out) + (long long)m_base * N, M, N, n0,
                                                              scales);
    else
        store_cluster_sums<S, ROWS, R, RED_STRIDE, THREADS>(red, reinterpret_cast<float*>(out) + (long long)m_base * N, M, N, n0,
                                                            scales);
}

// Ring shapes measured best (notes/gemm_stages_h100.log): k 128 x 3 stages for up to 16 rows (longer runs
// per weight row), k 64 x 4 for more (k 128 would leave one block per SM there). cuda_gemm.stream_shape mirrors this.
// ROLE: empty (a plain product) or _finish (NormRole).
#define GEMM_STREAM(R, BK, STAGES, ROLE, S, CLUSTER)                                                                   \
    extern "C" __global__ void __launch_bounds__(256, 2) CLUSTER gemm_stream_r##R##_k##BK##_s##S##ROLE(               \
        const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int M, int N, int K NORM_PARAMS_##ROLE) {            \
        gemm_stream_body<R, S, BK, STAGES, false, NORM_ROLE_##ROLE>(x, w, y, M, N, K, NORM_ARGS_##ROLE);              \
    }
#define GEMM_STREAM_CLUSTERS(R, BK, STAGES, ...) SPLIT_K_CLUSTERS(GEMM_STREAM, R, BK, STAGES, __VA_ARGS__)
