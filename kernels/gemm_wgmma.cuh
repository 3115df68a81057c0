// gemm_wgmma's ring, body and instance macros, for the three files that instance them: kernels/gemm_wgmma.cu (the
// plain products, gated and per-tile ones too; its opening comment describes the product, operands and launch),
// kernels/gemm_wgmma_begin.cu and kernels/gemm_wgmma_finish.cu (the products around a split RMSNorm, NormRole in
// kernels/gemm.cuh). Three files, so that a machine's first run compiles them side by side: the norm's kernels
// were two thirds of one file's compile time.
#pragma once
#include <cuda_bf16.h>
#include "hopper.cuh"
#include "pdl.cuh"
#include "gemm.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// GLU (the gated variant, WGS even, S = 1): W is the fused [gate; up] weight [2I, K] and N = I, read in 64-row
// boxes. A block's first WGS / 2 warpgroups take gate rows n0 .. n0 + 32 WGS - 1 and the others the matching up
// rows I + n0 .., so the epilogue writes
// act [M, I] = silu(gate) * up in bf16 (the expression of elementwise.cu's silu_mul, so the bits are those of
// the GEMM followed by silu_mul) and the fp32 [M, 2I] product never reaches memory.
// The ring of gemm_wgmma and gemm_wgmma_tiles in dynamic shared memory, 1024-aligned for TMA's 128-byte swizzle:
// STAGES x W [ROWS][64 k], STAGES x x [XROWS][64 k] (bf16), then a full and an empty barrier a stage. Ring step i
// uses stage i % STAGES: the producer's TMA fills it (its full barrier expects the weights' and x's bytes and the
// producer's arrival), the 4 WGS consumer warps release it (its empty barrier).
template <int ROWS, int XROWS, int STAGES>
struct WgmmaRing {
    static constexpr int BK = 64, W_TILE = ROWS * BK, X_TILE = XROWS * BK;  // elements per stage
    unsigned char* base;
    __nv_bfloat16 *w, *x;
    unsigned long long *full, *empty;

    __device__ explicit WgmmaRing(unsigned char* shared)
        : base(shared + (1024 - (unsigned)__cvta_generic_to_shared(shared) % 1024) % 1024),
          w(reinterpret_cast<__nv_bfloat16*>(base)), x(w + STAGES * W_TILE),
          full(reinterpret_cast<unsigned long long*>(x + STAGES * X_TILE)), empty(full + STAGES) {}

    __device__ void init(int consumer_warps) {  // then __syncthreads
        if (threadIdx.x == 0)
            for (int i = 0; i < STAGES; i++) mbarrier_init(full + i, 1), mbarrier_init(empty + i, consumer_warps);
    }
    __device__ __nv_bfloat16* expect(int i) {  // step i's stage, its full barrier told the bytes to come
        mbarrier_expect_bytes(full + i % STAGES, (W_TILE + X_TILE) * 2);
        return w + i % STAGES * W_TILE;
    }
    __device__ void load_x(const TensorMap* x_map, int i, int k) {  // after the step's weights: the producer's arrival
        tma_load(x + i % STAGES * X_TILE, x_map, k, 0, full + i % STAGES);
        mbarrier_arrive(full + i % STAGES);
    }
    __device__ void wait_empty(int i) { mbarrier_wait(empty + i % STAGES, (i / STAGES - 1) & 1); }  // step i - STAGES read
    __device__ void release(int i, int lane) {  // a consumer warp is done with step i's stage
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty + i % STAGES);
    }
    // A consumer warpgroup's products of step i on its 64 weight rows: the stage's wait, 4 wgmma over its 64 k, the
    // commit, then the wait for step i - 1's products (whose stage the caller may then release).
    template <int NT>
    __device__ void products(float (&acc)[NT][4], int i, int group) const {
        const int slot = i % STAGES;
        mbarrier_wait(full + slot, (i / STAGES) & 1);
        const __nv_bfloat16* w_tile = w + slot * W_TILE + group * 64 * BK;
        const __nv_bfloat16* x_tile = x + slot * X_TILE;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
            wgmma_ss<XROWS>(acc, smem_descriptor(w_tile + ks * 16, 16, 1024), smem_descriptor(x_tile + ks * 16, 16, 1024), 1);
        wgmma_commit();
        wgmma_wait<1>();
    }
};

template <int WGS, int XROWS, int STAGES, int S, bool GLU, NormRole NORM, bool QUADS = GLU>
__device__ void gemm_wgmma_body(const TensorMap& w_map, const TensorMap& x_map, void* __restrict__ out, int M, int N, int K,
                                const GemmNorm& norm) {
    static_assert(!GLU || (WGS % 2 == 0 && S == 1), "the gated epilogue pairs gate and up warpgroups' rows in one block");
    constexpr int ROWS = 64 * WGS, BK = 64, THREADS = 128 * WGS + 32;
    constexpr int RED_STRIDE = ROWS + 4;  // floats per x row of the reduction buffer
    extern __shared__ __align__(128) unsigned char shared[];
    WgmmaRing<ROWS, XROWS, STAGES> ring(shared);
    // read through a shuffle so the compiler knows it warp-uniform (else ptxas serialises the wgmma)
    const int warp = __shfl_sync(0xffffffff, threadIdx.x / 32, 0), group = warp / 4;  // group WGS: the producer
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int n0 = blockIdx.x * (GLU ? ROWS / 2 : ROWS), k_len = K / S, k_begin = blockIdx.y * k_len, steps = k_len / BK;
    ring.init(4 * WGS);
    __syncthreads();

    float acc[XROWS / 8][4] = {};  // a consumer's 64 weight rows x the XROWS x rows (m16n8 C fragments stacked)
    // the norm's values for the end (GemmNorm), fetched right after pdl_wait, under the products: in registers (16-row
    // boxes, the gated kernels), or for 32- and 64-row boxes in shared memory past the ring's barriers (NormStage)
    constexpr bool STAGED = NORM != NORM_NONE && !GLU && XROWS >= 32;
    NormPrefetch<THREADS, QUADS> pre;  // partials as quads: the gated kernels, _finishq (kernels/gemm.cuh: NormPrefetch)
    NormStage<128 * WGS> stage{reinterpret_cast<float*>(ring.empty + STAGES)};
    auto prefetch = [&] {
        if constexpr (STAGED) {
            if (threadIdx.x >= 128 * WGS) return;  // the producer warp copies weights
            if constexpr (NORM == NORM_FINISH) stage.partials(norm, M);
            else stage.template residual<ROWS / S, XROWS>(norm, M, N, n0 + blockIdx.y * (ROWS / S));
        } else {
            if constexpr (NORM == NORM_FINISH) pre.partials(norm.scale_partials, M * norm.scale_blocks, norm.scale_blocks);
            if constexpr (NORM == NORM_BEGIN) pre.residual(norm, M, N, n0 + blockIdx.y * (ROWS / S), ROWS / S, ROWS / S * XROWS);
        }
    };
    if (group == WGS) {
        if (lane == 0) {
            auto load_weights = [&](int i) {  // stage i's weights; its full barrier expects its x too
                __nv_bfloat16* stage = ring.expect(i);
                if constexpr (GLU) {  // gate boxes, then the matching up boxes
#pragma unroll
                    for (int b = 0; b < WGS; b++)
                        tma_load(stage + b * 64 * BK, &w_map, k_begin + i * BK, (b < WGS / 2 ? 0 : N) + n0 + b % (WGS / 2) * 64,
                                 ring.full + i % STAGES);
                } else tma_load(stage, &w_map, k_begin + i * BK, n0, ring.full + i % STAGES);
            };
            auto load_x = [&](int i) { ring.load_x(&x_map, i, k_begin + i * BK); };
            // the whole ring's weights go out before the wait for the previous kernel (kernels/pdl.cuh): no kernel
            // writes W, while x is the previous kernel's output. (x from L2 in a shallower ring of its own, issued
            // a few stages ahead so that more weight stages fit, starved the products: 4-6 x stages against 18-26
            // weight stages ran at half the rate, notes/gemm_xrows_ab_h200_stop37.log)
            for (int i = 0; i < min(STAGES, steps); i++) load_weights(i);
            pdl_wait();
            prefetch();
            for (int i = 0; i < steps; i++) {
                if (i >= STAGES) {
                    ring.wait_empty(i);
                    load_weights(i);
                }
                load_x(i);
            }
        } else pdl_wait(), prefetch();
        __syncwarp();
    } else {
        pdl_wait();
        prefetch();
        for (int i = 0; i < steps; i++) {
            ring.products(acc, i, group);
            if (i > 0) ring.release(i - 1, lane);  // step i - 1's products are done: its stage can be refilled
        }
        wgmma_wait<0>();
        wgmma_pin(acc);
        if (steps > 0) ring.release(steps - 1, lane);
    }
    pdl_trigger();  // the next kernel may launch (a GEMM copies its first weights while these blocks reduce)
    if constexpr (STAGED) cp_async_wait<0>();  // this thread's NormStage copies (the barrier shows them to all)
    __syncthreads();  // every product has read its stage: the ring becomes the reduction buffer

    float* red = reinterpret_cast<float*>(ring.base);  // [XROWS x rows][RED_STRIDE]: red[m][row] = y[m][n0 + row] of this block
    if (group < WGS)
#pragma unroll
        for (int j = 0; j < XROWS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[(8 * j + 2 * t + (e & 1)) * RED_STRIDE + group * 64 + warp % 4 * 16 + g + 8 * (e >> 1)] = acc[j][e];
    __syncthreads();
    float* scales = nullptr;  // the norm before this product (GemmNorm): its rows' scales, after the reduction buffer
    if constexpr (NORM == NORM_FINISH) {
        scales = red + XROWS * RED_STRIDE;
        if constexpr (STAGED) staged_row_scales<THREADS>(norm, stage.at, M, K, scales);
        else row_scales(norm, norm.scale_partials, pre, M, K, scales + XROWS, scales);
    }
    if constexpr (GLU) {
        store_cluster_glu<1, XROWS, RED_STRIDE, THREADS, ROWS / 2>(red, reinterpret_cast<__nv_bfloat16*>(out), M, N, n0, scales);
        return;
    }
    if constexpr (NORM == NORM_BEGIN && STAGED)  // the norm after this product
        store_cluster_norm_staged<S, ROWS, XROWS, RED_STRIDE, THREADS>(red, norm, stage.at, M, N, n0, red + XROWS * RED_STRIDE);
    else if constexpr (NORM == NORM_BEGIN)
        store_cluster_norm<S, ROWS, XROWS, RED_STRIDE, THREADS>(red, norm, pre, M, N, n0, red + XROWS * RED_STRIDE);
    else
        store_cluster_sums<S, ROWS, XROWS, RED_STRIDE, THREADS>(red, reinterpret_cast<float*>(out), M, N, n0, scales);
}

// gemm_wgmma_w{WGS}_x{XROWS}_s{S}: WGS consumer warpgroups (64 weight rows each), x in XROWS-row boxes. One
// warpgroup serves weights with fewer 128-row tiles than SMs (qkv, O, down), a grid of one block an SM whose ring
// fills the shared memory: the weight bytes in flight are what these products run on (stop 34: 6 stages, two blocks
// an SM, gave 8B down 83-86% of copy, 12 gave 89-91%, notes/gemm_wgmma_ring_h100_stop34.log), so the x boxes are as
// small as M allows: 22 stages (176 KB of weights) with 16-row boxes, 18 (144 KB) with 32, 13 (104 KB) with 64
// (stop 37: 8B qkv at 1-16 rows 89-94% -> 94-95% against gemm_stream, at 24-32 rows 80-81% -> 87-89%,
// notes/gemm_xrows_ab_h100_stop37.log). Rings that leave room for a second block an SM, so that the next call's
// blocks copy their first stages beside this one's, and x in a shallow ring of its own were slower (same log).
// Two warpgroups serve the rest (gate/up, LM head), two blocks an SM: 4 stages, 96 KB.
// ROLE: empty (a plain product), _finish, _finishq or _begin (NormRole).
#define GEMM_WGMMA(WGS, XROWS, STAGES, ROLE, S, CLUSTER)                                                             \
    extern "C" __global__ void __launch_bounds__(128 * WGS + 32, 2) CLUSTER gemm_wgmma_w##WGS##_x##XROWS##_s##S##ROLE( \
        const __grid_constant__ TensorMap w_map, const __grid_constant__ TensorMap x_map, float* y, int M, int N, int K \
            NORM_PARAMS_##ROLE) {                                                                                     \
        gemm_wgmma_body<WGS, XROWS, STAGES, S, false, NORM_ROLE_##ROLE, NORM_QUADS_##ROLE>(w_map, x_map, y, M, N, K,  \
                                                                                       NORM_ARGS_##ROLE);             \
    }
#define GEMM_WGMMA_CLUSTERS(WGS, XROWS, STAGES, ...) SPLIT_K_CLUSTERS(GEMM_WGMMA, WGS, XROWS, STAGES, __VA_ARGS__)
// gemm_wgmma_glu_w{WGS}: act bf16 [M, I] = silu(x W_gate^T) * (x W_up^T) from the fused [2I, K] weight (64-row
// boxes), 32 WGS gate columns a block; grid ceil(I / (32 WGS)), block 128 WGS + 32, STAGES x (64 WGS + 64) x 128 +
// 1024 + 16 STAGES bytes of dynamic shared memory. w2: two blocks an SM, the ring of gemm_wgmma_w2. w4: one block an
// SM, 5 stages (200 KB), for gate/up weights of at most a 128-column tile an SM: 8B gate/up (112 blocks) at 17 rows
// 71.3 -> 63.0 µs, at 32 65.4 -> 63.6, at 64 level (64.1) on an H200 (notes/glu_groups_h200_stop41.log). Where it
// gains, the w2 kernel's 64-row x boxes are mostly TMA zero fill, two a stage an SM against w4's one.
#define GEMM_WGMMA_GLU(WGS, STAGES, MIN_BLOCKS, ROLE)                                                                \
    extern "C" __global__ void __launch_bounds__(128 * WGS + 32, MIN_BLOCKS) gemm_wgmma_glu_w##WGS##ROLE(           \
        const __grid_constant__ TensorMap w_map, const __grid_constant__ TensorMap x_map, __nv_bfloat16* act, int M, int I, int K \
            NORM_PARAMS_##ROLE) {                                                                                     \
        gemm_wgmma_body<WGS, 64, STAGES, 1, true, NORM_ROLE_##ROLE>(w_map, x_map, act, M, I, K, NORM_ARGS_##ROLE);    \
    }
#endif
