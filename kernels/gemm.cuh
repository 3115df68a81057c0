// The pieces both families of small-M products (gemm_stream, on mma.sync: gemm_stream.cuh, instanced in gemm.cu and
// gemm_fused.cu; gemm_wgmma, on warpgroup MMA: gemm_wgmma.cuh, instanced in gemm_wgmma.cu, gemm_wgmma_begin.cu and
// gemm_wgmma_finish.cu) share: the split-K cluster sums, the RMSNorm split across two products (GemmNorm), the gated
// epilogue, and the instance macro over cluster sizes. The product and its layouts are described in gemm.cu. Python
// inlines this header into each kernel's source (backends/cuda_backend.kernel_source).
#pragma once
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "cluster.cuh"
#include "warp.cuh"

// One y element of a split-K cluster: the S blocks' partial sums at `local` (the same offset in every block's
// shared memory) added in rank order through distributed shared memory, so the same inputs give the same bits.
template <int S>
__device__ __forceinline__ float cluster_sum(const float* local) {
    if constexpr (S == 1) return *local;
    float sum = load_cluster(local, 0);
#pragma unroll
    for (int q = 1; q < S; q++) sum += load_cluster(local, q);
    return sum;
}

// Four adjacent y elements at once (local 16-byte aligned): each the same rank-order sum as cluster_sum's, so the
// same bits, with one 16-byte load a rank instead of four.
template <int S>
__device__ __forceinline__ float4 cluster_sum4(const float* local) {
    const float4* at = reinterpret_cast<const float4*>(local);
    if constexpr (S == 1) return *at;
    float4 sum = load_cluster(at, 0);
#pragma unroll
    for (int q = 1; q < S; q++) {
        const float4 v = load_cluster(at, q);
        sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
    }
    return sum;
}

// The RMSNorm between two products, split so that neither waits for a grid-wide sum (GemmNorm; rows of N = K'
// columns, h = r / sqrt(mean(r^2) + eps) * weight, r = y + residual the residual stream):
// - the product before it (gemm_wgmma, NORM_BEGIN) adds the residual to its columns of y (r -> residual_out),
//   writes x' = bf16(r * weight) (x_out), and each block the sum of its columns' r^2 of each row (warp_row_sum)
//   (partials_out [M][blocks]), and leaves at once;
// - the product after it (gemm_wgmma, gemm_stream, their gated forms; NORM_FINISH) runs on x' and, at its
//   end, scales each row's sums by s = rsqrt(sum of the row's partials (warp_row_sum) / K + eps): y = s (x' W^T)
//   (the gated end: silu(s gate) * (s up)).
// So the norm's launch, and the waits for it, are gone, and no block waits for another. h W^T is formed as
// s (bf16(r weight) W^T) instead of bf16(r s weight) W^T: the same rounding, at another place (not add_rmsnorm's
// bits). Why: the two norm launches a layer were 5.6% of the 8B decode step; split, that step went 4.300 -> 4.115 ms
// on an H200 (notes/norm_split_h200_stop48.log). At 16 rows it was slower then: each block of the product after
// loaded 16 x 128 partials, most at its end (read as one a row, timing only, it was 1.9% faster); since the gated
// product takes them all under its products as quads (NormPrefetch) the backend splits up to 32 rows (stop 63).
// 32- and 64-row gemm_wgmma kernels (not the gated ones) take the norm's values from shared memory instead
// (NormStage): right after the wait their consumers copy them there with cp.async, past the ring, so the end reads
// no global memory; and the product before a norm sums its split-K cluster's partials on chip, one a row a tile
// (partials_out [M][gridDim.x]), which halves what the product after it copies at the 8B down's clusters of 2.
// Why: at 64 rows stop 56's split lost 7.8 µs a layer in qkv's end (60 partials a thread loaded there, a round trip
// at a time) and 3.8 in O's (notes/norm64_timeline_h200_stop60.log).
struct GemmNorm {
    const float* scale_partials;  // the product after: the rows' partial sums [M][scale_blocks]
    int scale_blocks;
    float eps;
    const float* residual;        // the product before: [M, N] or nullptr (the first layer)
    float* residual_out;          // [M, N]
    const float* weight;          // [N]
    __nv_bfloat16* x_out;         // [M, N]: x'
    float* partials_out;          // [M][gridDim.x S]
};
// A product's part in it, a template argument, so that a plain product's kernel has none of this code: the kernels
// that finish a norm are the plain ones' names with "_finish" and three more arguments, those that begin one with
// "_begin" and five (NORM_PARAMS_<suffix>). Built only where the split serves (cuda_gemm.norm_split and
// finishes_norm): gemm_wgmma of one warpgroup in 16-, 32- and 64-row boxes, gemm_stream and gemm_stream_glu in k 128
// stages, gemm_wgmma_glu.
enum NormRole { NORM_NONE, NORM_FINISH, NORM_BEGIN };
// whether gemm_wgmma's (non-gated) kernel of a role takes the partials as quads (NormPrefetch's QUADS; the 32- and
// 64-row kernels take the norm's values through NormStage instead)
#define NORM_QUADS_ false
#define NORM_QUADS__finish false
#define NORM_QUADS__finishq true
#define NORM_QUADS__begin false
#define NORM_ROLE_ NORM_NONE
#define NORM_PARAMS_
#define NORM_ARGS_ GemmNorm{}
#define NORM_ROLE__finish NORM_FINISH
#define NORM_PARAMS__finish , const float *scale_partials, int scale_blocks, float eps
#define NORM_ARGS__finish GemmNorm{scale_partials, scale_blocks, eps, nullptr, nullptr, nullptr, nullptr, nullptr}
// _finishq (gemm_wgmma's 16-row boxes from 5 rows): _finish with the partials prefetched as quads (NormPrefetch)
#define NORM_ROLE__finishq NORM_FINISH
#define NORM_PARAMS__finishq NORM_PARAMS__finish
#define NORM_ARGS__finishq NORM_ARGS__finish
#define NORM_ROLE__begin NORM_BEGIN
#define NORM_PARAMS__begin , const float *residual, float *residual_out, const float *norm_weight, __nv_bfloat16 *x_out, float *partials_out
#define NORM_ARGS__begin GemmNorm{nullptr, 0, 0.0f, residual, residual_out, norm_weight, x_out, partials_out}

// The norm's values in shared memory (32- and 64-row gemm_wgmma kernels): `at` floats past the ring, copied by the
// block's THREADS consumer threads right after pdl_wait (one cp.async group each), waited for (cp_async_wait<0>) before
// the barrier that ends the products. The product after a norm copies the rows' partials [M][scale_blocks]; the
// product before one its slice of the residual [XROWS][SLICE] (columns col0 ..; zeros past M, N or without a
// residual) and of the norm weight [SLICE].
template <int THREADS>
struct NormStage {
    float* at;  // 16-byte aligned (past the ring's 16 STAGES bytes of barriers)
    // 16-byte copies where the source allows (the rows of partials, residual and weight are whole quads of floats at
    // 16-byte addresses whenever their widths are multiples of 4), 4-byte ones else
    __device__ __forceinline__ void partials(const GemmNorm& g, int M) {
        const int count = M * g.scale_blocks;
        if (count % 4 == 0 && reinterpret_cast<unsigned long long>(g.scale_partials) % 16 == 0)
            for (int p = 4 * threadIdx.x; p < count; p += 4 * THREADS)
                cp_async16((unsigned)__cvta_generic_to_shared(at + p), g.scale_partials + p);
        else
            for (int p = threadIdx.x; p < count; p += THREADS) cp_async4(at + p, g.scale_partials + p);
        cp_async_commit();
    }
    template <int SLICE, int XROWS>
    __device__ __forceinline__ void residual(const GemmNorm& g, int M, int N, int col0) {
        static_assert(SLICE % 4 == 0, "rows of whole quads");
        const bool quads = N % 4 == 0 && col0 % 4 == 0 && reinterpret_cast<unsigned long long>(g.residual) % 16 == 0 &&
                           reinterpret_cast<unsigned long long>(g.weight) % 16 == 0;
        if (quads) {
            for (int e = 4 * threadIdx.x; e < SLICE * XROWS; e += 4 * THREADS) {
                const int m = e / SLICE, n = col0 + e % SLICE;
                const bool copy = g.residual && m < M && n < N;  // N % 4 == 0: a quad is wholly in or out
                cp_async16((unsigned)__cvta_generic_to_shared(at + e), copy ? g.residual + (long long)m * N + n : g.weight, copy ? 16 : 0);
            }
            for (int j = 4 * threadIdx.x; j < SLICE; j += 4 * THREADS)
                if (col0 + j < N) cp_async16((unsigned)__cvta_generic_to_shared(at + SLICE * XROWS + j), g.weight + col0 + j);
        } else {
            for (int e = threadIdx.x; e < SLICE * XROWS; e += THREADS) {
                const int m = e / SLICE, n = col0 + e % SLICE;
                if (g.residual && m < M && n < N) cp_async4(at + e, g.residual + (long long)m * N + n);
                else at[e] = 0.0f;
            }
            for (int j = threadIdx.x; j < SLICE; j += THREADS)
                if (col0 + j < N) cp_async4(at + SLICE * XROWS + j, g.weight + col0 + j);
        }
        cp_async_commit();
    }
};

// The sum of values[0 .. count) (count % 4 == 0, 16-byte aligned, shared memory) in one fixed order, by a group of
// LANES consecutive lanes of a warp: lane q of the group adds the quads q, q + LANES, .. (each quad x + y + z + w),
// then a xor butterfly over the group; every lane of the group gets it, with the same bits in every block.
template <int LANES>
__device__ __forceinline__ float group_row_sum(const float* values, int count) {
    float sum = 0.0f;
    for (int i = 4 * (threadIdx.x % LANES); i < count; i += 4 * LANES) {
        const float4 v = *reinterpret_cast<const float4*>(values + i);
        sum += v.x + v.y + v.z + v.w;
    }
    return warp_sum<LANES>(sum);
}

// The sum of values[0 .. count) in one fixed order, by a warp: lane l adds values l, l + 32, .. in turn, then a xor
// butterfly; every lane gets it, and every block that sums the same values gets the same bits.
__device__ __forceinline__ float warp_row_sum(const float* values, int count) {
    float sum = 0.0f;
    for (int i = threadIdx.x % 32; i < count; i += 32) sum += values[i];
    return warp_sum(sum);
}

// What a thread loads right after pdl_wait for the norm work at the kernel's end, so that the L2 round trip runs
// under the products: in the product after a norm, its share of the rows' partial sums (p = tid + j THREADS); in
// the product before one, the residual and weight of its store items (store_cluster_norm's e = tid + j THREADS).
// Up to NORM_PREFETCH values each; the rest are loaded at the end.
#define NORM_PREFETCH 4
// The partials come as quads (16-byte loads, 4 NORM_PREFETCH a thread) where they are whole quads at 16-byte
// addresses (partials_quads: the 8B's 64 or 128 a row) and the kernel takes them so (QUADS: gemm_stream's 16-row
// kernels, gemm_wgmma's gated ones and its 16-row _finishq, from 5 rows), else one float at a time. Measured on an
// H200 (the 8B step by turns, notes/norm_split_trees_h200_stop63.log): quads in every finishing kernel took the
// T = 16 step ~84 µs below scalar loads but decode 27 µs above (gemm_wgmma's 16-row kernel then needs 61 registers,
// not 34; one row's 128 partials are only 4 a lane for a warp), and still 13-18 above with gemm_stream's 8-row
// kernels scalar; quads only in those two: T = 16 58 µs below, decode and T = 4 level with the same bits; with
// _finishq from 5 rows as well (stop 64, notes/finish_quads_h200_stop64.log) T = 16 another 31-33 µs below, T = 8
// 27, decode, T = 4 and T = 64 level with the same bits.
template <bool QUADS>
__device__ __forceinline__ bool partials_quads(const float* from, int blocks) {
    return QUADS && blocks % 4 == 0 && reinterpret_cast<unsigned long long>(from) % 16 == 0;
}
template <int THREADS, bool QUADS = true>
struct NormPrefetch {
    float a[NORM_PREFETCH], b[NORM_PREFETCH];
    float4 q[NORM_PREFETCH];  // the product after, partials_quads: quads p = 4 (tid + j THREADS)
    __device__ __forceinline__ void partials(const float* from, int count, int blocks) {
        if (partials_quads<QUADS>(from, blocks)) {
#pragma unroll
            for (int j = 0; j < NORM_PREFETCH; j++) {
                const int p = 4 * (threadIdx.x + j * THREADS);
                q[j] = p < count ? *reinterpret_cast<const float4*>(from + p) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
            return;
        }
#pragma unroll
        for (int j = 0; j < NORM_PREFETCH; j++) {
            const int p = threadIdx.x + j * THREADS;
            a[j] = p < count ? from[p] : 0.0f;
        }
    }
    __device__ __forceinline__ void residual(const GemmNorm& g, int M, int N, int col0, int slice, int items) {
#pragma unroll
        for (int j = 0; j < NORM_PREFETCH; j++) {
            const int e = threadIdx.x + j * THREADS, m = e / slice, n = col0 + e % slice;
            const bool item = e < items && m < M && n < N;
            a[j] = item && g.residual ? g.residual[(long long)m * N + n] : 0.0f;
            b[j] = item ? g.weight[n] : 0.0f;
        }
    }
};

// scales[m] = rsqrt(sum of row m's partials / K + eps) for rows m < M from `partials` [M][blocks] in shared memory:
// with whole quads (blocks % 4 == 0, 16-byte aligned) a group of 8 lanes a row (group_row_sum: a warp sums 4 rows at
// once), else a warp a row (warp_row_sum); every block in the same order, so every block gets the same scales.
template <int THREADS>
__device__ __forceinline__ void sum_row_scales(const GemmNorm& g, const float* partials, int M, int K, float* scales, bool quads) {
    if (quads) {
        const int group = threadIdx.x / 8;
        for (int m0 = 0; m0 < M; m0 += THREADS / 8) {  // every lane of a warp takes part in its shuffles
            const int m = min(m0 + group, M - 1);
            const float sum = group_row_sum<8>(partials + m * g.scale_blocks, g.scale_blocks);
            if (threadIdx.x % 8 == 0 && m0 + group < M) scales[m] = rsqrtf(sum / K + g.eps);
        }
    } else {
        for (int m = threadIdx.x / 32; m < M; m += THREADS / 32) {  // a warp a row (not a thread: 128 dependent adds)
            const float sum = warp_row_sum(partials + m * g.scale_blocks, g.scale_blocks);
            if (threadIdx.x % 32 == 0) scales[m] = rsqrtf(sum / K + g.eps);
        }
    }
    __syncthreads();
}

// The product after: scales[m] for rows m < M (shared memory), from the partials (`from`, prefetched in part)
// through `buffer` (M scale_blocks floats of shared memory, 16-byte aligned), then sum_row_scales.
template <int THREADS, bool QUADS>
__device__ __forceinline__ void row_scales(const GemmNorm& g, const float* from, const NormPrefetch<THREADS, QUADS>& pre, int M,
                                           int K, float* buffer, float* scales) {
    const int count = M * g.scale_blocks;
    const bool quads = partials_quads<QUADS>(from, g.scale_blocks);
    if (quads) {
#pragma unroll
        for (int j = 0; j < NORM_PREFETCH; j++) {
            const int p = 4 * (threadIdx.x + j * THREADS);
            if (p < count) *reinterpret_cast<float4*>(buffer + p) = pre.q[j];
        }
#pragma unroll 4
        for (int p = 4 * (threadIdx.x + NORM_PREFETCH * THREADS); p < count; p += 4 * THREADS)
            *reinterpret_cast<float4*>(buffer + p) = *reinterpret_cast<const float4*>(from + p);
    } else {
#pragma unroll
        for (int j = 0; j < NORM_PREFETCH; j++) {
            const int p = threadIdx.x + j * THREADS;
            if (p < count) buffer[p] = pre.a[j];
        }
#pragma unroll 8
        for (int p = threadIdx.x + NORM_PREFETCH * THREADS; p < count; p += THREADS) buffer[p] = from[p];
    }
    __syncthreads();
    sum_row_scales<THREADS>(g, buffer, M, K, scales, quads);
}

// row_scales, from partials already in shared memory (NormStage, 16-byte aligned).
template <int THREADS>
__device__ __forceinline__ void staged_row_scales(const GemmNorm& g, const float* partials, int M, int K, float* scales) {
    sum_row_scales<THREADS>(g, partials, M, K, scales, g.scale_blocks % 4 == 0);
}

// The end of a split-K block, for gemm_stream and gemm_wgmma: red [XROWS][RED_STRIDE] holds this block's sums
// red[m][row] of y[m][n0 + row]; cluster rank r adds rows r ROWS / S .. of the S blocks' buffers (cluster_sum) and
// writes them to y, coalesced along N. With S = 1 the block writes its own sums.
// scales: the rows' norm scales (row_scales), or nullptr.
template <int S, int ROWS, int XROWS, int RED_STRIDE, int THREADS>
__device__ __forceinline__ void store_cluster_sums(const float* red, float* __restrict__ y, int M, int N, int n0,
                                                   const float* scales = nullptr) {
    if constexpr (S > 1) cluster_sync();  // every block's sums are in its shared memory
    // a thread takes 4 adjacent columns an item (16-byte loads and stores), the items unrolled: element by element,
    // gemm_wgmma's 160 threads spent 1.8 µs here on 64 rows, 0.9 so (notes/gemm_epilogue_h200_stop62.log)
    constexpr int SLICE = ROWS / S, QUADS = SLICE / 4, ITEMS = (QUADS * XROWS + THREADS - 1) / THREADS;
    static_assert(SLICE % 4 == 0 && RED_STRIDE % 4 == 0, "16-byte items of the reduction buffer");
    const int rank = blockIdx.y;  // the cluster spans grid y, so this is the cluster rank
#pragma unroll
    for (int j = 0; j < ITEMS; j++) {
        const int e = threadIdx.x + j * THREADS, m = e / QUADS, row = rank * SLICE + e % QUADS * 4;
        if (e >= QUADS * XROWS || m >= M || n0 + row >= N) continue;
        float4 sum = cluster_sum4<S>(red + m * RED_STRIDE + row);
        if (scales) {
            const float scale = scales[m];
            sum.x = scale * sum.x, sum.y = scale * sum.y, sum.z = scale * sum.z, sum.w = scale * sum.w;
        }
        float* to = y + (long long)m * N + n0 + row;
        if (n0 + row + 4 <= N && reinterpret_cast<unsigned long long>(to) % 16 == 0) *reinterpret_cast<float4*>(to) = sum;
        else {  // a ragged end of N, or a row start N % 4 leaves unaligned
            const float v[4] = {sum.x, sum.y, sum.z, sum.w};
            for (int c = 0; c < 4 && n0 + row + c < N; c++) to[c] = v[c];
        }
    }
    if constexpr (S > 1) cluster_sync();  // no block leaves while another reads its shared memory
}

// The product before a norm (GemmNorm, x_out set): as store_cluster_sums, r = y + residual to residual_out, x' to
// x_out, and the block's partial sums of r^2 (its columns by warp_row_sum; squares: XROWS x ROWS / S floats of
// shared memory) to partials_out[m][bx S + rank].
template <int S, int ROWS, int XROWS, int RED_STRIDE, int THREADS, bool QUADS>
__device__ __forceinline__ void store_cluster_norm(const float* red, const GemmNorm& g, const NormPrefetch<THREADS, QUADS>& pre, int M,
                                                   int N, int n0, float* squares) {
    if constexpr (S > 1) cluster_sync();
    constexpr int SLICE = ROWS / S, ITEMS = (SLICE * XROWS + THREADS - 1) / THREADS;
    const int rank = blockIdx.y, block = blockIdx.x * S + rank;
#pragma unroll
    for (int j = 0; j < ITEMS; j++) {
        const int e = threadIdx.x + j * THREADS, m = e / SLICE, row = rank * SLICE + e % SLICE;
        if (e >= SLICE * XROWS) break;
        float square = 0.0f;
        if (m < M && n0 + row < N) {
            const long long at = (long long)m * N + n0 + row;
            const float residual = j < NORM_PREFETCH ? pre.a[j] : g.residual ? g.residual[at] : 0.0f;
            const float weight = j < NORM_PREFETCH ? pre.b[j] : g.weight[n0 + row];
            const float r = cluster_sum<S>(red + m * RED_STRIDE + row) + residual;
            g.residual_out[at] = r;
            g.x_out[at] = __float2bfloat16_rn(r * weight);
            square = r * r;
        }
        squares[e] = square;
    }
    __syncthreads();
    for (int m = threadIdx.x / 32; m < M; m += THREADS / 32) {  // a warp a row
        const float sum = warp_row_sum(squares + m * SLICE, SLICE);
        if (threadIdx.x % 32 == 0) g.partials_out[(long long)m * gridDim.x * S + block] = sum;
    }
    if constexpr (S > 1) cluster_sync();  // no block leaves while another reads its shared memory
}

// store_cluster_norm with the residual and weight slices in shared memory (NormStage: staged, the residual
// [XROWS][SLICE] then the weight [SLICE]), in 16-byte items (4 adjacent columns a thread, as store_cluster_sums), and
// one partial a row a cluster: the QUADS = SLICE / 4 items of a row sit in QUADS consecutive lanes (THREADS % QUADS
// == 0), which sum the row's r^2 over the block's columns by a butterfly into rowsum [XROWS] of shared memory; rank 0
// adds its cluster's in rank order to partials_out[m][blockIdx.x].
template <int S, int ROWS, int XROWS, int RED_STRIDE, int THREADS>
__device__ __forceinline__ void store_cluster_norm_staged(const float* red, const GemmNorm& g, const float* staged, int M,
                                                          int N, int n0, float* rowsum) {
    if constexpr (S > 1) cluster_sync();
    constexpr int SLICE = ROWS / S, QUADS = SLICE / 4, ITEMS = (QUADS * XROWS + THREADS - 1) / THREADS;
    static_assert(SLICE % 4 == 0 && 32 % QUADS == 0 && THREADS % QUADS == 0 && RED_STRIDE % 4 == 0,
                  "a row's quads in consecutive lanes of one warp");
    const int rank = blockIdx.y;
    const bool vector = N % 4 == 0 && reinterpret_cast<unsigned long long>(g.residual_out) % 16 == 0 &&
                        reinterpret_cast<unsigned long long>(g.x_out) % 8 == 0;
#pragma unroll
    for (int i = 0; i < ITEMS; i++) {
        const int e = threadIdx.x + i * THREADS, m = e / QUADS, j = e % QUADS * 4, row = rank * SLICE + j;
        float square = 0.0f;
        if (e < QUADS * XROWS && m < M && n0 + row < N) {
            const float4 sum = cluster_sum4<S>(red + m * RED_STRIDE + row);
            const float4 res = *reinterpret_cast<const float4*>(staged + m * SLICE + j);
            const float4 w = *reinterpret_cast<const float4*>(staged + SLICE * XROWS + j);
            const float4 r = make_float4(sum.x + res.x, sum.y + res.y, sum.z + res.z, sum.w + res.w);
            const long long at = (long long)m * N + n0 + row;
            if (vector && n0 + row + 4 <= N) {
                *reinterpret_cast<float4*>(g.residual_out + at) = r;
                *reinterpret_cast<__nv_bfloat162*>(g.x_out + at) = __floats2bfloat162_rn(r.x * w.x, r.y * w.y);
                *reinterpret_cast<__nv_bfloat162*>(g.x_out + at + 2) = __floats2bfloat162_rn(r.z * w.z, r.w * w.w);
                square = r.x * r.x + r.y * r.y + r.z * r.z + r.w * r.w;
            } else {  // a ragged end of N, or unaligned rows
                const float rs[4] = {r.x, r.y, r.z, r.w}, ws[4] = {w.x, w.y, w.z, w.w};
                for (int c = 0; c < 4 && n0 + row + c < N; c++) {
                    g.residual_out[at + c] = rs[c];
                    g.x_out[at + c] = __float2bfloat16_rn(rs[c] * ws[c]);
                    square += rs[c] * rs[c];
                }
            }
        }
        square = warp_sum<QUADS>(square);  // the row's quads' lanes
        if (e % QUADS == 0 && e < QUADS * XROWS) rowsum[m] = square;
    }
    if constexpr (S > 1) cluster_sync(); else __syncthreads();  // every rank's row sums are in its shared memory
    if (rank == 0)
        for (int m = threadIdx.x; m < M; m += THREADS) {
            float sum = rowsum[m];
#pragma unroll
            for (int q = 1; q < S; q++) sum += load_cluster(rowsum + m, q);
            g.partials_out[(long long)m * gridDim.x + blockIdx.x] = sum;
        }
    if constexpr (S > 1) cluster_sync();  // no block leaves while another reads its shared memory
}

// The gated end (GLU) of a block whose 2 HALF weight rows are HALF gate rows (columns c0 .. c0 + HALF - 1 of act)
// and the HALF matching up rows: red[m][j] holds gate column c0 + j, red[m][HALF + j] its up column. Rank r of the
// cluster writes act [M, I] columns c0 + r HALF / S .. in bf16 as silu(gate) * up, the expression of elementwise.cu's
// silu_mul on the same fp32 sums, so the bits are those of the GEMM followed by silu_mul.
template <int S, int XROWS, int RED_STRIDE, int THREADS, int HALF>
__device__ __forceinline__ void store_cluster_glu(const float* red, __nv_bfloat16* __restrict__ act, int M, int I, int c0,
                                                  const float* scales = nullptr) {
    if constexpr (S > 1) cluster_sync();
    // 4 adjacent columns a thread an item (16-byte loads, an 8-byte store), as store_cluster_sums
    constexpr int SLICE = HALF / S, QUADS = SLICE / 4, ITEMS = (QUADS * XROWS + THREADS - 1) / THREADS;
    static_assert(SLICE % 4 == 0 && RED_STRIDE % 4 == 0 && HALF % 4 == 0, "16-byte items of the reduction buffer");
    const int rank = blockIdx.y;
#pragma unroll
    for (int i = 0; i < ITEMS; i++) {
        const int e = threadIdx.x + i * THREADS, m = e / QUADS, j = rank * SLICE + e % QUADS * 4;
        if (e >= QUADS * XROWS || m >= M || c0 + j >= I) continue;
        const float4 gate4 = cluster_sum4<S>(red + m * RED_STRIDE + j), up4 = cluster_sum4<S>(red + m * RED_STRIDE + HALF + j);
        const float gates[4] = {gate4.x, gate4.y, gate4.z, gate4.w}, ups[4] = {up4.x, up4.y, up4.z, up4.w};
        __nv_bfloat16 v[4];
#pragma unroll
        for (int c = 0; c < 4; c++) {
            float gate = gates[c], up = ups[c];
            if (scales) gate *= scales[m], up *= scales[m];
            v[c] = __float2bfloat16_rn(gate / (1.0f + __expf(-gate)) * up);
        }
        __nv_bfloat16* to = act + (long long)m * I + c0 + j;
        if (c0 + j + 4 <= I && reinterpret_cast<unsigned long long>(to) % 8 == 0)
            *reinterpret_cast<uint2*>(to) = make_uint2(*reinterpret_cast<unsigned*>(v), *reinterpret_cast<unsigned*>(v + 2));
        else
            for (int c = 0; c < 4 && c0 + j + c < I; c++) to[c] = v[c];
    }
    if constexpr (S > 1) cluster_sync();
}

// KERNEL(..., S, CLUSTER) for every split-K cluster size along grid y (1, 2, 4, 8), for gemm_stream and gemm_wgmma
#define SPLIT_K_CLUSTERS(KERNEL, ...)                    \
    KERNEL(__VA_ARGS__, 1, )                              \
    KERNEL(__VA_ARGS__, 2, __cluster_dims__(1, 2, 1))     \
    KERNEL(__VA_ARGS__, 4, __cluster_dims__(1, 4, 1))     \
    KERNEL(__VA_ARGS__, 8, __cluster_dims__(1, 8, 1))
