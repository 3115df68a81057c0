// Every transformer layer of a small step (M = B * T <= 16 query rows, bf16) in ONE persistent launch.
// Instances fused_layers_r{MR}_d{D}, head dim D in {64, 128}: MR = 1 (decode) or 4 rows per CUDA-core GEMV
// pass (more rows take several passes), or MR = 16: the GEMV phases on tensor cores, all rows in one pass
// (steps of 5-16 rows where the GEMV inputs C, H D and I are multiples of 64; see "16-row instances").
// This header holds the kernel; kernels/fused_layers_r{MR}.cu each instantiate one MR for both head dims, so
// each file builds in a third of the time (all six in one file took ~20 s of nvcc on a 2-core machine) and
// the backend compiles only the instance a step needs. fused_layers_r{MR}_block_d{D} (files of their own) serve
// decode steps of up to 256 keys and tree steps of up to 512: attention and merge in one phase, a block per KV head
// and row group (phase_attention, BLOCK).
//
// Why: a decode step runs ~10 launches per layer. Inside a CUDA graph each still costs 3-4 µs of launch,
// ramp-up and drain, while a small model's layer streams its weights in under 2 µs. Here one block per
// SM stays resident for the whole step and the phases of a layer are separated by grid-wide barriers
// (~1 µs each); the weights of every phase stream like a GEMV from all SMs at once.
//
// Per layer (rows m < M, columns split among all warps of the grid; "units" are a warp's work items):
//   A  x = bf16(rmsnorm(resid) * attn_norm)                                  (every block, into shared memory)
//      qkv = x Wqkv^T, one unit = the column pair (i, i + D/2) of a head, so RoPE (rotate_half) is local:
//      q -> q_buf (fp32, like rope_write_kv), rotated k and v -> the cache slot slots[m] (slot < 0: none)
//   B  attention partials: unit = (sequence b, kv head, group of GROUP_ROWS (BLOCK: BLOCK_GROUP_ROWS) packed rows
//      (decode: 1), key split s);
//      packed row r of b = (node r / G, head kv_head * G + r % G); keys [s * span, (s+1) * span) of
//      kv_len[b]; key j visible iff j < tree_start[b] or bit (j - tree_start[b]) of masks[node] is set
//      (decode and tree steps only: the host never sends a causal chunk here). One lane per key for
//      q.k, online softmax in fp32, then lanes own D/32 dims for p.V. Writes unnormalised o and (max, sum).
//   C  merge the splits (unit = row, head) -> attn bf16 [M, H D]; padded rows (m >= cu_q[B]) get zeros
//      (up to 256 keys, the BLOCK instances: B and C are one phase, a block per unit of B without its split,
//      the splits merged in shared memory)
//   D  resid += attn Wo^T                                            (unit = output column)
//   E  x = bf16(rmsnorm(resid) * mlp_norm);  act = bf16(silu(x Wg^T) * (x Wu^T))   (unit = column pair i, I + i)
//   F  resid += act Wdown^T                                          (unit = output column)
// The decode instance (MR = 1) has no grid barrier between A, B, C and D: an attention unit waits only for
// the qkv units of its query, key and value heads, a merge row only for its splits, and the O phase for every
// merged row, through per-head and per-row counters (head_done; each costs about what a barrier does, ~1 µs,
// but waits for the producers it reads instead of the slowest block: context 2048, 22.1 -> 21.5 µs a layer).
// The roundings are those of the layer-by-layer path (bf16 GEMM inputs, fp32 sums, bf16 K/V), so both
// agree up to fp32 summation order. Every sum runs in a fixed order (no float atomics), so a step gives
// the same bits every time (seeded sampling repeats). NumPy reference: Model.compute on numpy_backend
// (tests compare the two CUDA paths and the reference). Tests: tests/test_cuda_fused.py.
//
// Who runs it: CudaBackend.fused_row_limit, models whose layers are small (large ones run layer by layer: their
// layered decode graph beat this kernel at every context in stop 18's A/B, notes/fused_vs_layered_stop18.log). On Hopper
// a decode step of one sequence goes to kernels/cluster_decode.cu instead where it fits (CudaBackend.cluster_decode_shape).
// What it costs (bench e2e prints it: %globaltimer stamps of block 0, `clock`): on an H100 (copy 3.0 TB/s),
// 8B shapes, decode at context 512, per layer: qkv 22.0 µs (weights alone 16.8), attention 5.4, merge 2.3,
// o-proj 14.1 (11.2), gate/up 80.0 (78.5), down 41.4 (39.3): the big phases stream at 94-97% of copy
// bandwidth. The default model's decode layer (~20 µs at context 512, attention 3.5 of it;
// `notes/scripts/fused_probe.py ... trace`) is latency: six grid barriers of ~1-1.4 µs, L2 round trips, and a
// warp's own instruction chain, which nothing hides (one warp a unit). The decode instance hides one round
// trip of each GEMV phase: while its block waits at the grid barrier in front of the phase, each warp's first
// weight chunks go by cp.async into a shared-memory slot (copy_batch), and the phase's scalar inputs (RoPE
// cos/sin, the resid values it adds to) into registers; the GEMVs gained ~1.9 µs a layer, the barriers beside
// the copies lost ~1 of it (H100, context 512: 20.2 -> 19.3 µs a layer). Tried and measured slower or level
// (notes/fused_layers.log): splitting QKV's K between two warps; every block merging the attention splits
// itself instead of a merge phase (132 blocks reading the same lines); each block's GEMV weights copied into
// its shared memory a layer ahead by TMA (the GEMVs gained 2.3 µs a layer, the phase the copies ran beside lost
// ~2 µs wherever they went); the merge's o loads issued beside its (m, l) loads; the O projection folded into the
// decode attention blocks, each head's block multiplying its row by its slice of Wo, which removes the O phase and a
// grid barrier (stop 26: 520 -> 551 µs a step at 100 keys; 9 SMs then read what 132 did, and the gate/up staging
// sums 9 partials: notes/o_fold_h100_stop26.log); the LM head's last rows pulled into L2 during the last layer
// (level to slower, notes/lm_head_prefetch_h100_stop26.log).
// Lessons kept in the code: spread units over SMs (u -> block u % grid; one SM's load bandwidth is
// ~1/132 of the card's), keep warp shuffles out of branches the compiler cannot prove uniform (else it
// emits WARPSYNC/collective code), load in batches (a loop of one load per iteration pays one L2 latency
// per element), use release/acquire in the barrier (__threadfence is a MEMBAR.SC), poll several counters with
// relaxed loads and one acquire fence (an acquire load holds back the loads behind it: poll_heads), keep loads
// a thread must wait for (page tables, kv_len) out of a phase's tail and in a barrier's window, and prefetch the
// next layer's weights and K/V pages into L2 when they fit.
//
// Layouts: resid float [M, C] (the embeddings in, the residual stream after the last layer out);
//   layers uint64 [L, 8]: attn_norm f32 [C], wqkv [(H + 2 Hkv) D, C], wo [C, H D], mlp_norm f32 [C],
//   w_gate_up [2 I, C], w_down [C, I], k_cache, v_cache [NP, Hkv, P, D]; weights and pages bf16.
//   q_buf float [M, H, D]; o_part float [S, M, H, D]; ml_part float [S, M, H, 2]; attn bf16 [M, H D];
//   act bf16 [M, I]; barrier uint32 [32 (2 + H + 2 Hkv + M H)] (zero before the launch: the grid barrier's counter, then the
//   decode instance's dataflow counters, head_done). C, H D and I are multiples of 8.
// Launch: grid = #SMs (all resident, or the barriers deadlock: 1 block of 512 threads per SM; a barrier
//   that waits for seconds traps instead of hanging), block 512, dynamic shared memory =
//   max(R * max(C, H D, I) * 2, 16 * (4 D + 192) * 4) bytes for R staged rows (the step's rows rounded up to a
//   power of two); MR = 16 stages 16 rows and adds 16 * 32 * 4 floats for its cross-warp sums; MR = 1 adds
//   16 warps' weight slots of SLOT_CHUNKS 16-byte chunks after it.
// Coherence: data written inside the launch (resid, q_buf, partials, attn, act) is read with ld.global.cg
// (L2), never through the non-coherent L1; weights are read once with an L1 no-allocate stream load.
#pragma once
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "warp.cuh"
#include "bf16x8.cuh"
#include "counters.cuh"
#include "head_dim.cuh"

#define WARPS 16
#define THREADS (WARPS * 32)
// Packed (node, head) rows per attention unit of a tree step (decode, MR = 1: one row; CudaBackend.FUSED_GROUP_ROWS):
// GROUP_ROWS where the keys are split over units and merged in a phase of their own, BLOCK_GROUP_ROWS in the block
// instances (up to 256 keys). There 2, not 4: a T = 16 step of the default model's heads (48 packed rows a KV head)
// has 72 units instead of 36, each warp's chain of score and p.V products half as long, still one wave of blocks
// (one row a unit: 144, two waves). H100, 100 / 200 keys: attention 4.82 -> 3.82 / 5.36 -> 4.38 µs a layer, kernel
// span 676-685 -> 646 / 697 -> 660 µs, the same bits (notes/fused_group_rows_stop32.log). With split keys 2 rows
// halve the split count (the grid's warps over twice the units) and cost more than they gain: at 3000 keys
// attention 13.6 -> 18.4 µs a layer.
#define GROUP_ROWS 4
#define BLOCK_GROUP_ROWS 2
static_assert(GROUP_ROWS <= 4 && BLOCK_GROUP_ROWS <= 4, "CudaBackend.fused_shared_bytes sizes the attention tiles for 4 rows");
#define NEG_INF (-__int_as_float(0x7f800000))  // NVRTC has no math.h INFINITY

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// All blocks arrive, then all leave: a monotonically growing counter, `target` = barriers so far x grid.
// Thread 0 publishes its block's writes with a release add and waits with acquire polls (kernels/counters.cuh).
// ~1 µs on an H100 or H200 with every block arriving at once
// (notes/scripts/barrier_probe.py: per-group counters, flag words and cluster-level barriers were all slower).
// Split in two so that a block can issue loads that do not depend on the other blocks between its arrival and
// its wait (decode: the next GEMV's first weights, copy_batch). Not into the L1: every acquire poll
// invalidates it (CCTL.IVALL), so an L1 prefetch would not survive the wait.
__device__ __forceinline__ void grid_arrive(unsigned* counter, unsigned& target) {
    target += gridDim.x;
    block_arrive(counter);
}

__device__ __forceinline__ void grid_wait(const unsigned* counter, unsigned target) { block_wait(counter, target); }

__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned& target) {
    grid_arrive(counter, target);
    grid_wait(counter, target);
}

// Dataflow counters (the decode instance, between qkv, attention, merge and O): a warp that finished a unit adds 1
// to its output's counter (its lanes' writes ordered before lane 0's release by __syncwarp), and a warp that
// needs that output waits until the counter reaches this layer's count (lane 0's acquire passed on by
// __syncwarp). Only the producers a unit reads are waited for, where a grid barrier waits for every block.
__device__ __forceinline__ void signal_count(unsigned* counter, int lane) {
    __syncwarp();
    if (lane == 0) release_add(counter);
}

__device__ __forceinline__ void wait_count(const unsigned* counter, unsigned target, int lane) {
    if (lane == 0) poll_until(counter, target);
    __syncwarp();
}

// xs[m, :] = bf16(resid[m, :] * rsqrt(mean(resid[m]^2) + eps) * weight), every block for itself (M <= 16 = WARPS:
// a fused step has at most 16 rows). Rows of up to 32 NORM_VECTORS 8-float vectors (C <= 768: small models):
// warp m takes row m, each lane its vectors lane, lane + 32, ... in registers with their norm weights (one
// round trip), and the row's sum of squares is one warp sum: no block barrier before the scaling. Wider rows:
// thread t takes the vectors t, t + 512, ... of all rows, and per-warp partial sums meet in shared memory
// (stage_norm_block; on the default model's shapes, H100: 3.4-3.8 µs at 16 rows, the warp per row 1.6-2.0; at
// one row 1.2 and 1.0).
#define NORM_VECTORS 3
#define STAGE_BATCH 4
// swizzle (the tensor-core GEMV of the 16-row instances): row m's 16-byte chunk j goes to chunk j ^ 4 (m & 1),
// so the 8 lanes of a quarter-warp reading rows g, g + 1 at chunks j..j+3 hit 8 different bank groups
// (needs C / 8 and the row stride to be multiples of 8: K % 64 == 0).
__device__ __forceinline__ int swizzled(int j, int m, int swizzle) { return j ^ (swizzle & m) << 2; }

__device__ __forceinline__ float square_sum(float4 a, float4 c) {
    return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + c.x * c.x + c.y * c.y + c.z * c.z + c.w * c.w;
}

// xs row m, vector j = bf16(resid vector (a, c) * f * weight vector (wa, wc))
__device__ __forceinline__ void store_normed(uint4* x4, int m, int j, int C8, float4 a, float4 c, float4 wa, float4 wc, float f, int swizzle) {
    __nv_bfloat162 o0 = __floats2bfloat162_rn(a.x * f * wa.x, a.y * f * wa.y), o1 = __floats2bfloat162_rn(a.z * f * wa.z, a.w * f * wa.w);
    __nv_bfloat162 o2 = __floats2bfloat162_rn(c.x * f * wc.x, c.y * f * wc.y), o3 = __floats2bfloat162_rn(c.z * f * wc.z, c.w * f * wc.w);
    x4[m * C8 + swizzled(j, m, swizzle)] = make_uint4(*reinterpret_cast<unsigned*>(&o0), *reinterpret_cast<unsigned*>(&o1),
                                                      *reinterpret_cast<unsigned*>(&o2), *reinterpret_cast<unsigned*>(&o3));
}

__device__ __noinline__ void stage_norm_warp(bf16* xs, const float* resid, const float* __restrict__ weight, int M, int C, float eps,
                                                int swizzle) {
    // every warp runs the same code (rows past M on zeros, nothing stored): the warp sum stays out of branches
    const int m = threadIdx.x / 32, lane = threadIdx.x % 32, C8 = C / 8;
    const bool row = m < M;
    const float4* r4 = reinterpret_cast<const float4*>(resid + (long long)(row ? m : 0) * C);
    const float4* w4 = reinterpret_cast<const float4*>(weight);
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v[NORM_VECTORS][2], w[NORM_VECTORS][2];
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_VECTORS; k++) {
        const int j = lane + 32 * k;
        const bool in = row && j < C8;
        v[k][0] = in ? __ldcg(r4 + 2 * j) : zero, v[k][1] = in ? __ldcg(r4 + 2 * j + 1) : zero;
        w[k][0] = in ? __ldg(w4 + 2 * j) : zero, w[k][1] = in ? __ldg(w4 + 2 * j + 1) : zero;
    }
#pragma unroll
    for (int k = 0; k < NORM_VECTORS; k++) sq += square_sum(v[k][0], v[k][1]);
    const float f = rsqrtf(warp_sum(sq) / C + eps);
#pragma unroll
    for (int k = 0; k < NORM_VECTORS; k++)
        if (row && lane + 32 * k < C8)
            store_normed(reinterpret_cast<uint4*>(xs), m, lane + 32 * k, C8, v[k][0], v[k][1], w[k][0], w[k][1], f, swizzle);
    __syncthreads();
}

// partial[warp][row] += the warp's sum of sq over its lanes in `row`, for each row its 32 consecutive vectors
// touch (two at most once C >= 256); m = the lane's row, -1 past the end (invalid lanes are a suffix).
__device__ __forceinline__ void add_square_sums(float (*partial)[16], int m, float sq, int total, int C8, int warp, int lane) {
    int first = __shfl_sync(0xffffffff, m, 0), last = __shfl_sync(0xffffffff, m, 31);
    if (last < 0 && first >= 0) last = (total - 1) / C8;
    for (int row = max(first, 0); row <= last; row++) {
        float part = warp_sum(m == row ? sq : 0.0f);
        if (lane == 0) partial[warp][row] += part;
    }
}

// scale[m] = rsqrt(mean square + eps) from the per-warp partials, summed in warp order (deterministic)
__device__ __forceinline__ void row_scales(float (*partial)[16], float* scale, int M, int C, float eps) {
    __syncthreads();
    if (threadIdx.x < M) {
        float sum = 0.0f;
        for (int w = 0; w < WARPS; w++) sum += partial[w][threadIdx.x];
        scale[threadIdx.x] = rsqrtf(sum / C + eps);
    }
    __syncthreads();
}

// xs vector j (row m = j / C8) = bf16(resid vector (a, c) * f * weight vector (wa, wc))
__device__ __forceinline__ void store_normed_at(uint4* x4, int j, int C8, float4 a, float4 c, float4 wa, float4 wc, float f, int swizzle) {
    store_normed(x4, j / C8, j % C8, C8, a, c, wa, wc, f, swizzle);
}

__device__ __noinline__ void stage_norm_block(bf16* xs, const float* resid, const float* __restrict__ weight, int M, int C, float eps, int swizzle) {
    __shared__ float partial[WARPS][16], scale[16];  // per warp and row: sums in a fixed order (deterministic)
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, C8 = C / 8, total = M * C8;
    if (lane < 16) partial[warp][lane] = 0.0f;
    __syncwarp();
    const float4* r4 = reinterpret_cast<const float4*>(resid);
    const float4* w4 = reinterpret_cast<const float4*>(weight);
    uint4* x4 = reinterpret_cast<uint4*>(xs);
    if (total <= THREADS) {  // a vector per thread at most (decode): one read of resid, with the norm weights beside it
        int j = threadIdx.x;
        float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f), a = zero, c = zero, wa = zero, wc = zero;
        if (j < total) a = __ldcg(r4 + 2 * j), c = __ldcg(r4 + 2 * j + 1), wa = __ldg(w4 + 2 * (j % C8)), wc = __ldg(w4 + 2 * (j % C8) + 1);
        add_square_sums(partial, j < total ? j / C8 : -1, square_sum(a, c), total, C8, warp, lane);
        row_scales(partial, scale, M, C, eps);
        if (j < total) store_normed_at(x4, j, C8, a, c, wa, wc, scale[j / C8], swizzle);
        __syncthreads();
        return;
    }
    float4 v[STAGE_BATCH][2];
    // the bound is the warp's first vector, so whole warps iterate together (the loop has warp collectives)
    for (int base = threadIdx.x - lane; base < total; base += STAGE_BATCH * THREADS) {
        int j0 = base + lane;
#pragma unroll
        for (int b = 0; b < STAGE_BATCH; b++) {
            int j = j0 + b * THREADS;
            v[b][0] = j < total ? __ldcg(r4 + 2 * j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            v[b][1] = j < total ? __ldcg(r4 + 2 * j + 1) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int b = 0; b < STAGE_BATCH; b++) {
            int j = j0 + b * THREADS;
            add_square_sums(partial, j < total ? j / C8 : -1, square_sum(v[b][0], v[b][1]), total, C8, warp, lane);
        }
    }
    row_scales(partial, scale, M, C, eps);
    for (int j0 = threadIdx.x; j0 < total; j0 += STAGE_BATCH * THREADS) {
#pragma unroll
        for (int b = 0; b < STAGE_BATCH; b++) {
            int j = j0 + b * THREADS;
            if (j >= total) break;
            store_normed_at(x4, j, C8, __ldcg(r4 + 2 * j), __ldcg(r4 + 2 * j + 1), __ldg(w4 + 2 * (j % C8)), __ldg(w4 + 2 * (j % C8) + 1),
                         scale[j / C8], swizzle);
        }
    }
    __syncthreads();
}

// The warp-per-row version is compiled into the D = 64 instances only: the D = 128 ones serve large models (C >
// 768), and with both versions reachable ptxas spilled their decode loop's state (8B decode 1.8% slower).
template <int D>
__device__ __forceinline__ void stage_norm(bf16* xs, const float* resid, const float* __restrict__ weight, int M, int C, float eps, int swizzle) {
    if (D == 64 && C / 8 <= 32 * NORM_VECTORS) stage_norm_warp(xs, resid, weight, M, C, eps, swizzle);
    else stage_norm_block(xs, resid, weight, M, C, eps, swizzle);
}

// xs = src [M, K] bf16 (written earlier in this launch: read through L2), STAGE_BATCH loads in flight.
__device__ void stage_copy(uint4* xs, const bf16* src, int M, int K, int swizzle) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    int total = M * K / 8, K8 = K / 8;
    for (int i0 = threadIdx.x; i0 < total; i0 += STAGE_BATCH * THREADS) {
        uint4 v[STAGE_BATCH];
#pragma unroll
        for (int b = 0; b < STAGE_BATCH; b++) v[b] = i0 + b * THREADS < total ? __ldcg(s + i0 + b * THREADS) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int b = 0; b < STAGE_BATCH; b++) {
            int i = i0 + b * THREADS, m = i / K8;
            if (i < total) xs[m * K8 + swizzled(i % K8, m, swizzle)] = v[b];
        }
    }
    __syncthreads();
}

// One batch of a warp's weight loads in gemv_rows: 16-byte chunks c0 + 32 u (u < 8 / NC) of each of NC weight
// rows, for lane c0 = lane + 32 (8 / NC) i. The caller provides the first batch (c0 = lane): load_batch, or the
// copy it started earlier (copy_batch, batch_from_slot).
template <int NC>
struct WeightBatch {
    uint4 v[NC][8 / NC];
};

template <int NC>
__device__ __forceinline__ void load_batch(WeightBatch<NC>& b, const bf16* const (&w)[NC], int c0, int K8) {
#pragma unroll
    for (int u = 0; u < 8 / NC; u++)
#pragma unroll
        for (int n = 0; n < NC; n++)
            b.v[n][u] = c0 + 32 * u < K8 ? load_stream(reinterpret_cast<const uint4*>(w[n]) + c0 + 32 * u) : make_uint4(0, 0, 0, 0);
}

// y[n] = sum_k x[r0 + lane, k] W_n[k] for NC weight rows, for the lanes lane < rows (rows <= MR of x, from
// row r0: xs points there). The sums run over the warp; lane l reads 16-byte chunks l, l + 32, ..., 8 / NC
// chunks per weight row in flight; `wb` holds the first batch on entry (load_batch(wb, w, lane, K8)). A step of
// more than MR rows calls this once per chunk of MR rows (the weights then come from L2 after the first chunk):
// only MR = 1 and 4 are compiled, which keeps the file's build time down (with 1, 2, 4, 8 and 16 it took most
// of a minute of cicc and ptxas).
template <int MR, int NC>
__device__ __forceinline__ void gemv_rows(const bf16* const (&w)[NC], WeightBatch<NC>& wb, const uint4* xs, int K8, int rows, int lane,
                                          float (&y)[NC]) {
    constexpr int U = 8 / NC;
    float acc[NC][MR];
#pragma unroll
    for (int n = 0; n < NC; n++)
#pragma unroll
        for (int m = 0; m < MR; m++) acc[n][m] = 0.0f;
    for (int c0 = lane; c0 < K8; c0 += 32 * U) {
        if (c0 != lane) load_batch(wb, w, c0, K8);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + 32 * u;
            if (c >= K8) break;
            float wf[NC][8];
#pragma unroll
            for (int n = 0; n < NC; n++) unpack8(wb.v[n][u], wf[n]);
#pragma unroll
            for (int m = 0; m < MR; m++) {
                if (m >= rows) break;
                float xf[8];
                unpack8(xs[m * K8 + c], xf);
#pragma unroll
                for (int n = 0; n < NC; n++)
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[n][m] = fmaf(xf[e], wf[n][e], acc[n][m]);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < NC; n++) {
        y[n] = 0.0f;
#pragma unroll
        for (int m = 0; m < MR; m++) {
            float total = warp_sum(acc[n][m]);  // unconditional: see phase_attention
            if (m == lane) y[n] = total;
        }
    }
}

// Decode: the first batch of a warp's first unit in a GEMV phase goes by cp.async into the warp's slot of shared
// memory (SLOT_CHUNKS 16-byte chunks, after the kernel's other shared memory) between its block's arrival at the
// grid barrier in front of the phase and its wait, so its L2 round trip runs beside the barrier's. Registers
// would hold it as well, but held across the barrier they made ptxas spill in the attention phase; the L1
// cannot: the barrier's acquire polls invalidate it (CCTL.IVALL).
#define SLOT_CHUNKS (8 * 32)

template <int NC>
__device__ __forceinline__ void copy_batch(uint4* slot, const bf16* const (&w)[NC], int lane, int K8) {
#pragma unroll
    for (int u = 0; u < 8 / NC; u++)
#pragma unroll
        for (int n = 0; n < NC; n++) {
            int c = lane + 32 * u;  // chunks past the row copy nothing and land as zeros
            cp_async16(static_cast<unsigned>(__cvta_generic_to_shared(slot + (n * (8 / NC) + u) * 32 + lane)),
                       reinterpret_cast<const uint4*>(w[n]) + (c < K8 ? c : 0), c < K8 ? 16 : 0);
        }
    cp_async_commit();
}

// wb = the batch copy_batch put in the slot (each lane reads only what it copied: no warp sync needed)
template <int NC>
__device__ __forceinline__ void batch_from_slot(WeightBatch<NC>& wb, const uint4* slot, int lane) {
    cp_async_wait<0>();
#pragma unroll
    for (int u = 0; u < 8 / NC; u++)
#pragma unroll
        for (int n = 0; n < NC; n++) wb.v[n][u] = slot[(n * (8 / NC) + u) * 32 + lane];
}

struct Step {
    const unsigned long long* layers;
    int L;
    float* resid;
    const int *positions, *slots, *cu_q, *kv_len, *tree_start, *page_tables;
    const unsigned long long* masks;
    const float *cos_table, *sin_table;
    int W, B;
    float *q_buf, *o_part, *ml_part;
    bf16 *attn, *act;
    unsigned* barrier;
    int M, C, H, Hkv, I, P, groups, splits;
    float eps, scale;
    int prefetch;                 // 1: pull the next layer's weights into L2 during this layer (small models)
    int prefetch_kv;              // 1: pull the next layer's K/V pages of the step into L2 (short contexts)
    unsigned long long* clock;    // optional [1 + 6 L] %globaltimer stamps of block 0 after each phase, or null
};

// the decode instance's counters, each on its own 128-byte line after the grid barrier's: one per qkv head
// (its units done), one per attention row (its splits done), then one for the merged rows
__device__ __forceinline__ unsigned* head_done(const Step& s, int head) { return s.barrier + 32 * (1 + head); }
__device__ __forceinline__ unsigned* row_done(const Step& s, int row) { return s.barrier + 32 * (1 + s.H + 2 * s.Hkv + row); }
__device__ __forceinline__ unsigned* rows_merged(const Step& s) { return s.barrier + 32 * (1 + s.H + 2 * s.Hkv + s.M * s.H); }

// until the three counters a decode attention unit reads (its query head's, its K head's and its V head's) reach
// `target`: relaxed polls with the three loads in flight together, then one acquire fence. Three acquire polls one
// after another cost three L2 round trips even where every count is already there: an acquire load holds back the
// loads behind it (H100, random weights with the default model's shapes, decode one step ahead: 542 -> 533 µs at
// 100 keys, 612-618 -> 594-597 at 512; notes/fused_poll_h100_stop25.log).
__device__ __forceinline__ void poll_heads(const unsigned* q, const unsigned* k, const unsigned* v, unsigned target) {
    unsigned a, b, c, spins = 0;
    do {
        asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(a) : "l"(q) : "memory");
        asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(b) : "l"(k) : "memory");
        asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(c) : "l"(v) : "memory");
        if (++spins == (1u << 22)) __trap();  // seconds: a block is not resident (see poll_until)
    } while (min(a, min(b, c)) < target);
    asm volatile("fence.acq_rel.gpu;" ::: "memory");  // the relaxed reads that saw the counts, made acquires
}

__device__ __forceinline__ void stamp(const Step& s, int index) {
    if (s.clock != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        s.clock[index] = t;
    }
}

// Every thread of the grid asks L2 for the K and V pages of every sequence of the step in one layer's caches
// (the pages [Hkv, P, D] are contiguous, so each page is a run of 128-byte lines).
__device__ void prefetch_pages(const Step& s, const bf16* k_cache, const bf16* v_cache, int D) {
    long long page_elems = (long long)s.Hkv * s.P * D, lines = (page_elems * 2 + 127) / 128;
    long long stride = (long long)gridDim.x * THREADS, first = (long long)blockIdx.x * THREADS + threadIdx.x;
    for (int b = 0; b < s.B; b++) {
        long long pages = (s.kv_len[b] + s.P - 1) / s.P, total = 2 * pages * lines;
        const int* table = s.page_tables + (long long)b * s.W;
        for (long long i = first; i < total; i += stride) {
            long long page = table[(i / lines) % pages], line = i % lines;
            const bf16* cache = i < pages * lines ? k_cache : v_cache;
            asm volatile("prefetch.global.L2 [%0];" ::"l"(cache + page * page_elems + line * 64));
        }
    }
}

// Every thread of the grid asks L2 for its share of [base, base + bytes) (128-byte lines); no registers wait.
__device__ __forceinline__ void prefetch_l2(const void* base, long long bytes) {
    const char* b = reinterpret_cast<const char*>(base);
    long long stride = (long long)gridDim.x * THREADS;
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < bytes / 128; i += stride)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(b + i * 128));
}

// A qkv unit's row epilogue for rows r0 .. r0 + MR - 1: this lane's RoPE cos and sin and K/V slot. They come
// from before the step, so the decode instance loads its first unit's before the grid barrier in front of the
// phase has let it go (with the unit's first weights in its slot: copy_batch).
struct QkvEpilogue {
    float c, sn;
    int slot;
};

template <int D>
__device__ __forceinline__ void qkv_weight_rows(const Step& s, const bf16* wqkv, int u, const bf16* (&w)[2]) {
    int head = u / (D / 2), col = head * D + u % (D / 2);
    w[0] = wqkv + (long long)col * s.C, w[1] = wqkv + (long long)(col + D / 2) * s.C;
}

template <int MR, int D>
__device__ __forceinline__ QkvEpilogue qkv_epilogue(const Step& s, int u, int r0, int lane) {
    constexpr int half = D / 2;
    int head = u / half, m = r0 + lane;
    QkvEpilogue e{1.0f, 0.0f, -1};
    if (lane < min(MR, s.M - r0)) {
        e.slot = s.slots[m];
        if (head < s.H + s.Hkv) {  // q and k heads rotate; v heads do not
            long long at = (long long)s.positions[m] * half + u % half;
            e.c = s.cos_table[at], e.sn = s.sin_table[at];
        }
    }
    return e;
}

// slot != null (decode): it holds the first batch of this warp's first unit (u = gw), `first` that unit's
// epilogue for rows 0 .. MR - 1. FLAGS: each unit done counts on its head's counter (head_done).
template <int MR, int D, bool FLAGS>
__device__ void phase_qkv(const Step& s, const bf16* wqkv, bf16* k_cache, bf16* v_cache, const uint4* xs, int gw, int tw, int lane,
                          const uint4* slot, QkvEpilogue first) {
    constexpr int half = D / 2;
    int units = (s.H + 2 * s.Hkv) * half, K8 = s.C / 8;
    for (int u = gw; u < units; u += tw) {
        int head = u / half, d = u % half;
        const bf16* w[2];
        qkv_weight_rows<D>(s, wqkv, u, w);
        for (int r0 = 0; r0 < s.M; r0 += MR) {
            int rows = min(MR, s.M - r0), m = r0 + lane;
            WeightBatch<2> wb;
            QkvEpilogue e;
            if (slot != nullptr && u == gw && r0 == 0) batch_from_slot(wb, slot, lane), e = first;
            else load_batch(wb, w, lane, K8), e = qkv_epilogue<MR, D>(s, u, r0, lane);  // epilogue loads behind the weights'
            float x[2];
            gemv_rows<MR, 2>(w, wb, xs + r0 * K8, K8, rows, lane, x);
            if (lane >= rows) continue;
            float y1 = x[0] * e.c - x[1] * e.sn, y2 = x[1] * e.c + x[0] * e.sn;
            if (head < s.H) {
                float* q = s.q_buf + ((long long)m * s.H + head) * D + d;
                q[0] = y1, q[half] = y2;
            } else if (e.slot >= 0) {
                int kv_head = (head - s.H) % s.Hkv;
                bf16* cache = head < s.H + s.Hkv ? k_cache : v_cache;
                bf16* dst = cache + (((long long)(e.slot / s.P) * s.Hkv + kv_head) * s.P + e.slot % s.P) * D + d;
                dst[0] = __float2bfloat16_rn(y1), dst[half] = __float2bfloat16_rn(y2);
            }
        }
        if constexpr (FLAGS) signal_count(head_done(s, head), lane);
    }
}

// Keys a split of a sequence of `length` keys takes: an equal share, rounded up to 32 (one key a lane). The
// attention phase cuts the keys so; the merge derives from it which splits saw keys.
__device__ __forceinline__ int split_span(int length, int splits) { return ((length + splits - 1) / splits + 31) / 32 * 32; }

// One attention unit's partials: packed rows group * ROWS .. + R - 1 of sequence b (query rows from q0; packed row
// r = (node r / G, head kv_head * G + r % G)) over keys [k_begin, k_end) of its kv_len: per row the running max,
// this lane's share of the exp sum and this lane's DPL dims of the unnormalised p.V. qs, ps and offsets are the
// warp's shared-memory tiles (see phase_attention).
template <int D, int ROWS>
__device__ __forceinline__ void attend(const Step& s, const bf16* k_cache, const bf16* v_cache, float* qs, int b, int q0, int kv_head,
                                       int group, int R, int k_begin, int k_end, int lane, float (&run_max)[ROWS],
                                       float (&lane_sum)[ROWS], float (&acc)[ROWS][D / 32]) {
    constexpr int DPL = D / 32;  // dims per lane in p.V
    int G = s.H / s.Hkv;
    float* ps = qs + ROWS * D;                                    // [32 keys][ROWS] softmax weights
    long long* offsets = reinterpret_cast<long long*>(ps + 32 * ROWS);  // [32] page offsets of the keys
    int start = s.tree_start[b];
    const int* table = s.page_tables + (long long)b * s.W;
    unsigned long long mask[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        mask[r] = r < R ? s.masks[q0 + (group * ROWS + r) / G] : 0ull;
        run_max[r] = NEG_INF, lane_sum[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; e++) acc[r][e] = 0.0f;
    }
    constexpr int VB = D == 64 ? 32 : 16;  // value rows in flight (32 registers); lane owns dims lane * DPL ..
    // decode (ROWS = 1): the first VB keys' values and the first 8 chunks of key j go out before anything waits,
    // and on the first tile the queries after them: one L2 round trip where the queries, the scores and p.V
    // each waited for one. (With 4 rows the registers this holds made the compiler spill.)
    constexpr bool EARLY = ROWS == 1;
    auto stage_queries = [&]() {  // the group's queries as float4s, all in flight
#pragma unroll
        for (int k = 0; k < (ROWS * D / 4 + 31) / 32; k++) {
            int i = lane + 32 * k, r = i / (D / 4), packed = group * ROWS + r;
            if (i >= ROWS * D / 4) break;
            const float4* q = reinterpret_cast<const float4*>(s.q_buf + ((long long)(q0 + packed / G) * s.H + kv_head * G + packed % G) * D);
            float4 v = r < R ? __ldcg(q + i % (D / 4)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            reinterpret_cast<float4*>(qs)[i] = make_float4(v.x * s.scale, v.y * s.scale, v.z * s.scale, v.w * s.scale);
        }
        __syncwarp();
    };
    __syncwarp();  // the previous unit is done with qs, ps and offsets
    if (!EARLY) stage_queries();
    for (int k0 = k_begin; k0 < k_end; k0 += 32) {
        const int j = k0 + lane, keys = min(32, k_end - k0);
        // offset of key j's row in the K and V pages (the same layout)
        long long offset = j < k_end ? (((long long)table[j / s.P] * s.Hkv + kv_head) * s.P + j % s.P) * D : 0;
        offsets[lane] = offset;
        __syncwarp();
        unsigned vraw[VB][DPL / 2];
        auto load_values = [&](int j0) {
#pragma unroll
            for (int q = 0; q < VB; q++) {
                const bf16* value = v_cache + offsets[j0 + q] + lane * DPL;
                if constexpr (DPL == 2) vraw[q][0] = j0 + q < keys ? *reinterpret_cast<const unsigned*>(value) : 0u;
                else {
                    uint2 raw = j0 + q < keys ? *reinterpret_cast<const uint2*>(value) : make_uint2(0, 0);
                    vraw[q][0] = raw.x, vraw[q][DPL / 2 - 1] = raw.y;
                }
            }
        };
        const uint4* key = reinterpret_cast<const uint4*>(k_cache + offset);
        uint4 raw[8];
#pragma unroll
        for (int c = 0; c < 8; c++) raw[c] = j < k_end ? key[c] : make_uint4(0, 0, 0, 0);
        if (EARLY) {
            load_values(0);
            if (k0 == k_begin) stage_queries();
        }
        float score[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) score[r] = 0.0f;
        // lane j: q . k_j for every row of the group, 8 16-byte loads in flight (lanes past the end: zeros)
#pragma unroll
        for (int c0 = 0; c0 < D / 8; c0 += 8) {
            if (c0 > 0)
#pragma unroll
                for (int c = 0; c < 8; c++) raw[c] = j < k_end ? key[c0 + c] : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int c = 0; c < 8; c++) {
                float kf[8];
                unpack8(raw[c], kf);
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    float4 qa = *reinterpret_cast<const float4*>(qs + r * D + 8 * (c0 + c));
                    float4 qb = *reinterpret_cast<const float4*>(qs + r * D + 8 * (c0 + c) + 4);
                    score[r] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                                qb.z * kf[6] + qb.w * kf[7];
                }
            }
        }
        float p[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            bool visible = j < k_end && (j < start || ((mask[r] >> (j - start)) & 1ull));
            float sc = visible ? score[r] : NEG_INF;
            float new_max = fmaxf(run_max[r], warp_max(sc));
            p[r] = new_max == NEG_INF ? 0.0f : __expf(sc - new_max);
            float correction = new_max == NEG_INF ? 1.0f : __expf(run_max[r] - new_max);
            lane_sum[r] = lane_sum[r] * correction + p[r];
#pragma unroll
            for (int e = 0; e < DPL; e++) acc[r][e] *= correction;
            run_max[r] = new_max;
        }
        if constexpr (ROWS == 4) reinterpret_cast<float4*>(ps)[lane] = make_float4(p[0], p[1], p[2], p[3]);
        else
#pragma unroll
            for (int r = 0; r < ROWS; r++) ps[lane * ROWS + r] = p[r];
        __syncwarp();
        for (int j0 = 0; j0 < keys; j0 += VB) {
            if (!EARLY || j0 > 0) load_values(j0);
#pragma unroll
            for (int q = 0; q < VB; q++) {
                float v[DPL];
                float2 a = bf2(vraw[q][0]);
                v[0] = a.x, v[1] = a.y;
                if constexpr (DPL == 4) {
                    float2 c = bf2(vraw[q][1]);
                    v[2] = c.x, v[3] = c.y;
                }
                float pw[ROWS];  // keys past `keys` have p = 0
                if constexpr (ROWS == 4) {
                    float4 w = reinterpret_cast<const float4*>(ps)[j0 + q];
                    pw[0] = w.x, pw[1] = w.y, pw[2] = w.z, pw[3] = w.w;
                } else
#pragma unroll
                    for (int r = 0; r < ROWS; r++) pw[r] = ps[(j0 + q) * ROWS + r];
#pragma unroll
                for (int r = 0; r < ROWS; r++)
#pragma unroll
                    for (int e = 0; e < DPL; e++) acc[r][e] = fmaf(pw[r], v[e], acc[r][e]);
            }
        }
        __syncwarp();
    }
}

// One merged row from its first `end` splits (the rest have weight 0; see phase_merge): split k's running max is
// ml(k, 0), its exp sum ml(k, 1), its unnormalised output o(k, d); the row goes to out [D] in bf16. `weights`:
// end floats of the warp's own. The order of every sum is fixed (the same bits wherever the partials are read).
template <int D, class ML, class O>
__device__ __forceinline__ void merge_splits(float* weights, int end, bool live, int lane, ML ml, O o, bf16* out) {
    float top = NEG_INF, den = 0.0f;
    for (int k = lane; k < end; k += 32) top = fmaxf(top, live ? ml(k, 0) : NEG_INF);
    top = warp_max(top);
    for (int k = lane; k < end; k += 32) {
        float w = live && top != NEG_INF ? __expf(ml(k, 0) - top) : 0.0f;
        weights[k] = w;
        den += w * (live ? ml(k, 1) : 0.0f);
    }
    den = warp_sum(den);
    __syncwarp();
    for (int d = lane; d < D; d += 32) {
        float num = 0.0f;
        if (den > 0.0f) {
            int k = 0;
            for (; k + 8 <= end; k += 8) {  // 8 independent loads in flight
                float v[8];
#pragma unroll
                for (int q = 0; q < 8; q++) v[q] = o(k + q, d);
#pragma unroll
                for (int q = 0; q < 8; q++) num += weights[k + q] * v[q];
            }
            for (; k < end; k++) num += weights[k] * o(k, d);
        }
        out[d] = __float2bfloat16_rn(den > 0.0f ? num / den : 0.0f);
    }
}

// One merged row u (unit = row, head) of the split partials in L2 (o_part, ml_part)
template <int D>
__device__ __forceinline__ void merge_row(const Step& s, float* weights, long long stride, int u, bool live, int end, int lane) {
    merge_splits<D>(
        weights, end, live, lane, [&](int k, int i) { return __ldcg(s.ml_part + 2 * (k * stride + u) + i); },
        [&](int k, int d) { return __ldcg(s.o_part + (k * stride + u) * D + d); }, s.attn + (long long)u * D);
}

// Warp collectives (shuffles) sit outside any branch the compiler cannot prove warp-uniform: inside one it
// emits slow WARPSYNC/collective code, and this kernel is instruction-fetch sensitive (each phase's code
// runs once per layer), so rows past R are computed on zero queries and only their stores are skipped.
// ROWS packed rows per unit: a warp alone runs a unit's instructions one after another (nothing hides their
// latency), so decode gives each row of a KV head's group its own warp (ROWS = 1: a third of the work per
// warp for G = 3, and three times the warps; the K and V rows are read by each, from L2).
// FLAGS (decode, one row a unit): a unit first waits for its query head and its KV group's K and V heads of
// layer l (head_done), and counts on its row's counter when its partials are written (row_done).
// BLOCK (the instances fused_layers_r{MR}_block, which CudaBackend.fused_layers launches for steps of up to 256 keys):
// attention and merge in one phase. Block u % grid takes unit u = (sequence, KV head, row group) whole, its warp w
// split w (the shares of the split-and-merge path, at most WARPS of them); the partials go to shared memory, and
// after a block barrier warp r merges packed row r with merge_splits (the merge phase's sums in its order: the same
// bits) and writes attn. The splits meet in shared memory instead of L2: no merge phase and no grid barrier
// (trees) or row_done counters (decode: one thread polls the head counters for the block, and the merging warp
// counts on rows_merged). The price is one SM reading all of a KV head's keys (256 bytes a key at D = 64), which
// is why it serves decode up to 8 splits of 32 keys (tree steps, whose merge phase costs a grid barrier, up to 16
// of the 512-key bucket: CudaBackend.fused_layers). Separate instances, not a branch: with both paths in one kernel the
// split path's phases ran 3% slower (a bigger body). Measured: notes/fused_block_h100_stop23.log.
template <int D, int ROWS, bool FLAGS, bool BLOCK>
__device__ void phase_attention(const Step& s, const bf16* k_cache, const bf16* v_cache, float* smem, int gw, int tw, int warp, int lane,
                                int l) {
    static_assert(!FLAGS || ROWS == 1, "the counters are per row");
    constexpr int DPL = D / 32, PART = D + 2;  // dims per lane in p.V; a split's partial in shared memory: o, max, sum
    int G = s.H / s.Hkv, units = FLAGS && BLOCK ? s.H : s.B * s.Hkv * s.groups * (BLOCK ? 1 : s.splits);
    float* qs = smem + warp * (ROWS * D + 32 * ROWS + 64);  // the warp's tiles: [ROWS][D] scaled queries, then attend's
    float* parts = smem + WARPS * (ROWS * D + 32 * ROWS + 64);  // BLOCK: [splits][ROWS][PART]
    if (BLOCK && s.splits > WARPS) __trap();  // a split per warp (the host sends at most 16: FUSED_TREE_BLOCK_SPLITS)
    for (int u = BLOCK ? blockIdx.x : gw; u < units; u += BLOCK ? gridDim.x : tw) {
        int split, group, kv_head, b;
        if constexpr (FLAGS && BLOCK) split = warp, group = u % G, kv_head = u / G, b = 0;  // decode: one row, head u
        else {
            int rest = BLOCK ? u : u / s.splits;
            split = BLOCK ? warp : u % s.splits, group = rest % s.groups;
            rest /= s.groups;
            kv_head = rest % s.Hkv, b = rest / s.Hkv;
        }
        int q0 = s.cu_q[b], T = s.cu_q[b + 1] - q0, R = min(ROWS, T * G - group * ROWS);
        if (R <= 0) continue;  // (FLAGS: a decode step has no such unit)
        if constexpr (FLAGS) {
            const unsigned done = (D / 2) * (l + 1);  // qkv units a head has after layer l
            const unsigned *q = head_done(s, kv_head * G + group % G), *k = head_done(s, s.H + kv_head), *v = head_done(s, s.H + s.Hkv + kv_head);
            if constexpr (BLOCK) {  // one thread polls: warps spinning on L2 would take issue slots from the block's qkv warps
                if (threadIdx.x == 0) poll_heads(q, k, v, done);
                __syncthreads();
            } else {
                if (lane == 0) poll_heads(q, k, v, done);
                __syncwarp();
            }
        }
        int length = s.kv_len[b];
        int span = split_span(length, s.splits);
        int k_begin = split * span, k_end = min(length, k_begin + span);  // (block: warps past the splits get none)
        float run_max[ROWS], lane_sum[ROWS], acc[ROWS][DPL];
        attend<D, ROWS>(s, k_cache, v_cache, qs, b, q0, kv_head, group, R, k_begin, k_end, lane, run_max, lane_sum, acc);
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float total = warp_sum(lane_sum[r]);
            int packed = group * ROWS + r;
            long long row = ((long long)split * s.M + q0 + packed / G) * s.H + kv_head * G + packed % G;
            if constexpr (BLOCK) {
                float* part = parts + (split * ROWS + r) * PART;
#pragma unroll
                for (int e = 0; e < DPL; e++) part[lane * DPL + e] = acc[r][e];
                if (lane == 0) part[D] = run_max[r], part[D + 1] = total;
            } else if (r < R) {
#pragma unroll
                for (int e = 0; e < DPL; e++) s.o_part[row * D + lane * DPL + e] = acc[r][e];
                if (lane == 0) s.ml_part[2 * row] = run_max[r], s.ml_part[2 * row + 1] = total;
            }
            if constexpr (FLAGS && !BLOCK) signal_count(row_done(s, (q0 + packed / G) * s.H + kv_head * G + packed % G), lane);
        }
        if constexpr (BLOCK) {
            __syncthreads();  // every split's partial is in shared memory
            if (FLAGS ? warp == 0 : warp < R) {  // warp r merges packed row r (decode: warp 0 the row of head u)
                const int r = warp, packed = group * ROWS + r;
                const long long row = FLAGS ? u : (long long)(q0 + packed / G) * s.H + kv_head * G + packed % G;
                merge_splits<D>(
                    qs, s.splits, true, lane, [&](int k, int i) { return parts[(k * ROWS + r) * PART + D + i]; },
                    [&](int k, int d) { return parts[(k * ROWS + r) * PART + d]; }, s.attn + row * D);
                if constexpr (FLAGS) signal_count(rows_merged(s), lane);
            }
            __syncthreads();  // the merging warps are done with the partials before the next unit's overwrite them
        }
    }
    if constexpr (BLOCK && !FLAGS) {  // padded rows of a captured bucket (m >= cu_q[B]) get zeros, as phase_merge gives them
        const int live = s.cu_q[s.B] * s.H * D, total = s.M * s.H * D;
        for (int i = live + blockIdx.x * THREADS + threadIdx.x; i < total; i += gridDim.x * THREADS) s.attn[i] = __float2bfloat16_rn(0.0f);
    }
}

// attn[m, h] = sum_k w_k o_k / sum_k w_k l_k, w_k = exp(m_k - max_k m_k), over the splits k (unit = row, head).
// FLAGS: a row waits for its splits of layer l (row_done) and counts on rows_merged when written; `weights`
// (s.splits floats a warp) then is the warp's own, since other warps of the block may still run attention.
// The split count follows the context bucket (a power of two) and phase_attention rounds each share up to 32
// keys, so just above a power of two about half the splits saw no key. Past 64 splits the merge reads only the
// used ones, (kv_len + span - 1) / span: the rest would add weight-0 terms, so every sum keeps its terms, its
// order and its bits. Measured (H100, notes/fused_layers.log, stop 17): default model's shapes, decode at
// context 4100 900 -> 772 µs a step, 2049 -0.7%. With the bound at every split count, decode at contexts
// 513-1024 lost 1.5-2.8% (a fixed cost of ~0.5 µs a layer, above the reads saved there), hence two paths; as
// kept they still lose 0.5-1.7% there (ptxas allocates the body anew: d64 decode spills 4 -> 20 bytes).
template <int D, bool FLAGS>
__device__ void phase_merge(const Step& s, float* weights, int gw, int tw, int lane, int l) {
    int rows = s.cu_q[s.B];
    long long stride = (long long)s.M * s.H;
    for (int u = gw; u < s.M * s.H; u += tw) {
        bool live = u / s.H < rows;  // padded rows of a captured bucket get zeros
        int used = 0;  // (read before the wait, whose poll hides the step plan's round trips)
        if (live && s.splits > 64) {
            int b = 0;
            while (b + 1 < s.B && s.cu_q[b + 1] <= u / s.H) b++;
            const int length = s.kv_len[b], span = split_span(length, s.splits);
            used = min(s.splits, (length + span - 1) / span);
        }
        if (FLAGS && live) wait_count(row_done(s, u), s.splits * (l + 1), lane);
        if (s.splits <= 64) merge_row<D>(s, weights, stride, u, live, s.splits, lane);
        else merge_row<D>(s, weights, stride, u, live, used, lane);
        if constexpr (FLAGS) signal_count(rows_merged(s), lane);
        __syncwarp();
    }
}

// The GEMV phases do not depend on D: as out-of-line functions they are compiled once for both head dims
// (halving the file's build time). Their arguments are scalars, not the Step, which would have to sit in local
// memory to be passed by reference. slot != null (decode): the warp's slot holds the first batch of its first
// unit (copy_batch), and for the residual phases `first_before` that unit's resid value (rows 0 .. MR - 1).

// decode, between a barrier's arrival and its wait: the first weight row of the residual GEMV unit gw (output
// column gw of W [C, K]) into the warp's slot, and the resid values (rows 0 .. MR - 1) that unit adds to
template <int MR>
__device__ __forceinline__ float start_residual(const Step& s, uint4* slot, const bf16* w_all, int K, int gw, int lane) {
    const bf16* w[1] = {w_all + (long long)gw * K};
    copy_batch(slot, w, lane, K / 8);
    return lane < min(MR, s.M) ? __ldcg(s.resid + (long long)lane * s.C + gw) : 0.0f;
}

// resid[m, n] += x[m, :] . W[n, :] for every output column n < C (one warp per column), M rows.
template <int MR>
__device__ __noinline__ void phase_residual_gemv(float* resid, const bf16* w_all, const uint4* xs, int M, int C, int K, int gw,
                                                 int tw, int lane, const uint4* slot, float first_before) {
    for (int n = gw; n < C; n += tw) {
        const bf16* w[1] = {w_all + (long long)n * K};
        for (int r0 = 0; r0 < M; r0 += MR) {
            int rows = min(MR, M - r0);
            float* out = resid + (long long)(r0 + lane) * C + n;
            WeightBatch<1> wb;
            float before;
            if (slot != nullptr && n == gw && r0 == 0) batch_from_slot(wb, slot, lane), before = first_before;
            else load_batch(wb, w, lane, K / 8), before = lane < rows ? __ldcg(out) : 0.0f;  // behind the weights' loads
            float y[1];
            gemv_rows<MR, 1>(w, wb, xs + r0 * (K / 8), K / 8, rows, lane, y);
            if (lane < rows) *out = before + y[0];
        }
    }
}

// act[m, i] = bf16(silu(x[m] . Wg[i]) * (x[m] . Wu[i])) for i < I (one warp per column pair), M rows.
__device__ __forceinline__ void gate_up_rows(const bf16* wgu, int C, int I, int i, const bf16* (&w)[2]) {
    w[0] = wgu + (long long)i * C, w[1] = wgu + (long long)(I + i) * C;
}

template <int MR>
__device__ __noinline__ void phase_gate_up(bf16* act, const bf16* wgu, const uint4* xs, int M, int C, int I, int gw, int tw, int lane,
                                           const uint4* slot) {
    for (int i = gw; i < I; i += tw) {
        const bf16* w[2];
        gate_up_rows(wgu, C, I, i, w);
        for (int r0 = 0; r0 < M; r0 += MR) {
            int rows = min(MR, M - r0);
            WeightBatch<2> wb;
            if (slot != nullptr && i == gw && r0 == 0) batch_from_slot(wb, slot, lane);
            else load_batch(wb, w, lane, C / 8);
            float y[2];
            gemv_rows<MR, 2>(w, wb, xs + r0 * (C / 8), C / 8, rows, lane, y);
            if (lane < rows) act[(long long)(r0 + lane) * I + i] = __float2bfloat16_rn(y[0] / (1.0f + __expf(-y[0])) * y[1]);
        }
    }
}

// ---- 16-row instances: the GEMV phases on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate) ----
// A tile is 8 weight rows (n) x the 16 staged rows (rows >= M are computed and never stored). The block's 16
// warps split K into slices of 32-column chunks, then warp 0 adds their accumulators in warp order (a fixed
// order: a step repeats bit for bit) and runs the epilogue. Within a 32-column chunk, lane (g = lane / 4,
// c = lane % 4) loads 16 contiguous bytes of weight row n_g, columns 8c .. 8c + 7, and the same columns of
// staged rows g and g + 8: the k order inside the mma is permuted (k-step 0 takes columns 8c .. 8c + 3, step 1
// 8c + 4 .. 8c + 7), identically for A and B, which leaves the dot products unchanged and makes every
// load 16 bytes wide. C fragment: lane holds rows g and g + 8, columns 2c and 2c + 1 of the tile.
// Units go to blocks (unit u -> block u % grid), so a phase's tiles spread over the SMs. Where a phase has more
// than two tiles per block (gate/up of the default model: 384 tiles), teams of 4 warps take a tile each, so a
// block runs 4 at once instead of one after another (each team syncs on its own named barrier).
// Each phase's epilogue inputs (qkv's RoPE factors, the resid values O and down add to) are read before its tile, and
// a warp keeps up to 4 chunks of its K slice in flight (down: its 3 in one round trip): H100, default model's shapes,
// T = 16 kernel span 693-697 -> 671-676 µs at 100 keys, qkv 5.3 -> 5.1, O 3.06 -> 2.8, down 4.2 -> 3.85 µs a layer,
// same bits (notes/fused_epilogue_h100_stop32.log; tried there and dropped: blocks without a tile skipping the
// staging, which made the others' staging slower, and the tree attention reading its first page before its queries).
#define MMA_RED_FLOATS (WARPS * 32 * 4)  // shared floats for the cross-warp sums, after the staged rows

// acc (the team's first warp's lanes; the others' are partial) = the 16 x 8 tile of xs . W^T over a team of
// TEAM warps (16: the block; 4: a quarter, so that 4 tiles run at once), w_row = this lane's weight row n_g;
// xs swizzled [16, K8] chunks, red = MMA_RED_FLOATS of shared memory (each team its own part). Every thread of
// the team calls it; the team syncs by itself (named barrier 1 + team), so teams may run different tile counts.
template <int TEAM>
__device__ __forceinline__ void team_sync() {
    if constexpr (TEAM == WARPS) __syncthreads();
    else asm volatile("bar.sync %0, %1;" ::"r"(1 + (int)threadIdx.x / (32 * TEAM)), "r"(32 * TEAM) : "memory");
}

template <int TEAM>
__device__ __forceinline__ void team_tile(const bf16* w_row, const uint4* xs, int K8, float* red, float (&acc)[4]) {
    constexpr int LOADS = 4;  // 32-column chunks in flight per lane: a warp's slice in one round trip where it fits
    const int warp = threadIdx.x / 32 % TEAM, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int groups = K8 / 4, per = (groups + TEAM - 1) / TEAM;  // 4 chunks = 32 columns per group
    const int begin = min(groups, warp * per) * 4, end = min(groups, (warp + 1) * per) * 4;
    const uint4* w = reinterpret_cast<const uint4*>(w_row);
    const uint4 *xa = xs + g * K8, *xb = xs + (g + 8) * K8;
    const int sw = (g & 1) << 2;
    acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
    for (int j0 = begin; j0 < end; j0 += 4 * LOADS) {
        uint4 wv[LOADS];
#pragma unroll
        for (int u = 0; u < LOADS; u++) wv[u] = j0 + 4 * u < end ? load_stream(w + j0 + 4 * u + c) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < LOADS; u++) {
            if (j0 + 4 * u >= end) break;
            const int j = (j0 + 4 * u + c) ^ sw;
            const uint4 a = xa[j], b = xb[j];
            mma16816(acc, a.x, b.x, a.y, b.y, wv[u].x, wv[u].y);
            mma16816(acc, a.z, b.z, a.w, b.w, wv[u].z, wv[u].w);
        }
    }
    float4* r = reinterpret_cast<float4*>(red) + (int)threadIdx.x / (32 * TEAM) * TEAM * 32;
    r[warp * 32 + lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    team_sync<TEAM>();
    if (warp == 0) {
        float4 t = r[lane];
        for (int v = 1; v < TEAM; v++) {
            float4 o = r[v * 32 + lane];
            t.x += o.x, t.y += o.y, t.z += o.z, t.w += o.w;
        }
        acc[0] = t.x, acc[1] = t.y, acc[2] = t.z, acc[3] = t.w;
    }
    team_sync<TEAM>();  // red is free for the next tile
}

// qkv: a tile is 4 RoPE pairs (d0 + j, d0 + j + D/2) of a head: n = 2j and 2j + 1, so lane c holds the pair
// d = d0 + c of rows g and g + 8 (the epilogue of phase_qkv, per row).
template <int D>
__device__ void phase_qkv_mma(const Step& s, const bf16* wqkv, bf16* k_cache, bf16* v_cache, const uint4* xs, float* red) {
    constexpr int half = D / 2;
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, K8 = s.C / 8;
    const int units = (s.H + 2 * s.Hkv) * (half / 4);
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int head = u / (half / 4), d0 = (u % (half / 4)) * 4, d = d0 + c;
        // the epilogue's RoPE factors (rows g and g + 8) are read before the tile: their round trip overlaps its loads
        float cs[2] = {1.0f, 1.0f}, sn[2] = {0.0f, 0.0f};
        if (threadIdx.x < 32 && head < s.H + s.Hkv) {  // q and k heads rotate; v heads do not
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const long long at = (long long)s.positions[min(g + 8 * h, s.M - 1)] * half + d;
                cs[h] = s.cos_table[at], sn[h] = s.sin_table[at];
            }
        }
        float acc[4];
        team_tile<WARPS>(wqkv + (long long)(head * D + d0 + g / 2 + (g & 1) * half) * s.C, xs, K8, red, acc);
        if (threadIdx.x >= 32) continue;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = g + 8 * h;
            if (m >= s.M) continue;
            const float x0 = acc[2 * h], x1 = acc[2 * h + 1];
            const float y1 = x0 * cs[h] - x1 * sn[h], y2 = x1 * cs[h] + x0 * sn[h];
            if (head < s.H) {
                float* q = s.q_buf + ((long long)m * s.H + head) * D + d;
                q[0] = y1, q[half] = y2;
            } else if (s.slots[m] >= 0) {
                const int slot = s.slots[m], kv_head = (head - s.H) % s.Hkv;
                bf16* cache = head < s.H + s.Hkv ? k_cache : v_cache;
                bf16* dst = cache + (((long long)(slot / s.P) * s.Hkv + kv_head) * s.P + slot % s.P) * D + d;
                dst[0] = __float2bfloat16_rn(y1), dst[half] = __float2bfloat16_rn(y2);
            }
        }
    }
}

// resid[m, n] += x[m, :] . W[n, :]: a tile is 8 output columns n0 .. n0 + 7 (lane c: n0 + 2c, n0 + 2c + 1). The resid
// values it adds to are read before the tile (this unit alone writes them): their round trip overlaps its loads.
__device__ __noinline__ void phase_residual_mma(float* resid, const bf16* w_all, const uint4* xs, int M, int C, int K, float* red) {
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    for (int u = blockIdx.x; u < C / 8; u += gridDim.x) {
        float2* out[2];
        float2 before[2] = {make_float2(0.0f, 0.0f), make_float2(0.0f, 0.0f)};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            out[h] = reinterpret_cast<float2*>(resid + (long long)min(g + 8 * h, M - 1) * C + 8 * u + 2 * c);
            if (threadIdx.x < 32 && g + 8 * h < M) before[h] = __ldcg(out[h]);
        }
        float acc[4];
        team_tile<WARPS>(w_all + (long long)(8 * u + g) * K, xs, K / 8, red, acc);
        if (threadIdx.x >= 32) continue;
#pragma unroll
        for (int h = 0; h < 2; h++)
            if (g + 8 * h < M) *out[h] = make_float2(before[h].x + acc[2 * h], before[h].y + acc[2 * h + 1]);
    }
}

// act[m, i] = bf16(silu(x[m] . Wg[i]) * (x[m] . Wu[i])): a tile is 4 column pairs (gate i0 + j, up I + i0 + j)
// as n = 2j and 2j + 1 (lane c: column i0 + c of rows g and g + 8).
// With more than two tiles per block, teams of 4 warps take a tile each (4 at once per block).
template <int TEAM>
__device__ void gate_up_tiles(bf16* act, const bf16* wgu, const uint4* xs, int M, int C, int I, float* red) {
    constexpr int TEAMS = WARPS / TEAM;
    const int team = threadIdx.x / (32 * TEAM), lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    for (int u = blockIdx.x + team * gridDim.x; u < I / 4; u += gridDim.x * TEAMS) {
        float acc[4];
        team_tile<TEAM>(wgu + (long long)((g & 1) * I + 4 * u + g / 2) * C, xs, C / 8, red, acc);
        if (threadIdx.x % (32 * TEAM) >= 32) continue;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = g + 8 * h;
            if (m < M) act[(long long)m * I + 4 * u + c] = __float2bfloat16_rn(acc[2 * h] / (1.0f + __expf(-acc[2 * h])) * acc[2 * h + 1]);
        }
    }
}

__device__ __noinline__ void phase_gate_up_mma(bf16* act, const bf16* wgu, const uint4* xs, int M, int C, int I, float* red) {
    if (I / 4 > 2 * (int)gridDim.x) gate_up_tiles<4>(act, wgu, xs, M, C, I, red);
    else gate_up_tiles<WARPS>(act, wgu, xs, M, C, I, red);
    __syncthreads();  // the teams finish at different times; the staging that follows overwrites xs
}

// Probe builds (-DFUSED_TRACE, notes/scripts/fused_probe.py): block 0's thread 0 also stamps points inside
// each layer's phases, after the 1 + 6 L phase stamps (TRACE_POINTS a layer).
#define TRACE_POINTS 11
#ifdef FUSED_TRACE
#define TRACE(l, i) stamp(s, 1 + 6 * s.L + TRACE_POINTS * (l) + (i))
#else
#define TRACE(l, i)
#endif

// The next layer's weights (small models) into L2, ahead of their use. Its K/V pages (prefetch_next_pages) go where the
// block waits at a grid barrier anyway: each thread first loads kv_len and a page-table entry and waits for them (two
// L2 round trips), which after the qkv phase held back the decode attention blocks and every block's arrival at a tree
// step's barrier (H100, default model's shapes, 100 keys: decode one step ahead 537.8 -> 529.8 µs, T = 16 kernel span
// 725 / 729 -> 714 / 717; notes/fused_prefetch_h100_stop25.log).
__device__ void prefetch_next_pages(const Step& s, const unsigned long long* next, int D) {
    if (next != nullptr && s.prefetch_kv) prefetch_pages(s, reinterpret_cast<const bf16*>(next[6]), reinterpret_cast<const bf16*>(next[7]), D);
}

__device__ void prefetch_layer(const Step& s, const unsigned long long* next, int D) {
    if (s.prefetch) {
        long long C = s.C, qkv = (long long)(s.H + 2 * s.Hkv) * D;
        prefetch_l2(reinterpret_cast<const void*>(next[1]), qkv * C * 2);
        prefetch_l2(reinterpret_cast<const void*>(next[2]), C * s.H * D * 2);
        prefetch_l2(reinterpret_cast<const void*>(next[4]), 2LL * s.I * C * 2);
        prefetch_l2(reinterpret_cast<const void*>(next[5]), C * s.I * 2);
        prefetch_l2(reinterpret_cast<const void*>(next[0]), C * 4);  // the RMSNorm weights
        prefetch_l2(reinterpret_cast<const void*>(next[3]), C * 4);
    }
}

// Tree steps (MR > 1): the step's small inputs that every layer reads again (the layer table, and per sequence or row
// cu_q, kv_len, tree_start, positions, slots, masks) copied into shared memory at the kernel's start (one round trip).
// From global memory each read was an L2 round trip, every layer: the acquire polls of the barriers and counters
// invalidate the L1 (CCTL.IVALL). H100, default model's shapes, T = 16 kernel span 718 / 717 -> 703 / 701 µs at 100 keys,
// 812 / 807 -> 799 / 804 at 512. The decode instance does without: there it measured 531 -> 534 µs a step at 100 keys
// (592 against 596 at 512), its attention's wait for the qkv units being what bounds that phase
// (notes/fused_shared_inputs_h100_stop25.log).
#define FUSED_MAX_LAYERS 64  // (CudaBackend.fused_row_limit)
__device__ __forceinline__ void step_in_shared(Step& s) {
    __shared__ unsigned long long layers[FUSED_MAX_LAYERS * 8], masks[16];
    __shared__ int cu_q[17], kv_len[16], tree_start[16], positions[16], slots[16];
    if (s.L > FUSED_MAX_LAYERS || s.M > 16) __trap();
    for (int i = threadIdx.x; i < s.L * 8; i += blockDim.x) layers[i] = s.layers[i];
    const int t = threadIdx.x;
    if (t <= s.B) cu_q[t] = s.cu_q[t];
    if (t < s.B) kv_len[t] = s.kv_len[t], tree_start[t] = s.tree_start[t];
    if (t < s.M) positions[t] = s.positions[t], slots[t] = s.slots[t], masks[t] = s.masks[t];
    __syncthreads();
    s.layers = layers, s.cu_q = cu_q, s.kv_len = kv_len, s.tree_start = tree_start, s.positions = positions, s.slots = slots;
    s.masks = masks;
}

template <int MR, int D, bool BLOCK>
__device__ void fused_layers_body(const Step& s) {
    extern __shared__ uint4 smem[];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // unit u goes to block u % grid: consecutive units (a phase with few units, like attention) spread over
    // all SMs instead of filling the first ones, whose load bandwidth (~1/132 of the card's each) would cap them
    int gw = warp * gridDim.x + blockIdx.x, tw = gridDim.x * WARPS;
    unsigned target = 0;
    bf16* xs = reinterpret_cast<bf16*>(smem);
    constexpr int TENSOR = MR == 16;  // 16 staged rows, swizzled, and the GEMV phases on tensor cores
    // the cross-warp sums of the tensor-core tiles sit after the 16 staged rows of the widest input
    float* red = reinterpret_cast<float*>(xs + 16 * max(s.C, max(s.H * D, s.I)));
    // decode (PRE): each GEMV phase's first weight batch (in the warp's slot, copy_batch) and its scalar inputs are
    // loaded between the arrival at the grid barrier in front of the phase and the wait; the slots sit after the
    // staged row and the attention tiles (CudaBackend.fused_shared_bytes)
    constexpr bool PRE = MR == 1;
    uint4* slot = smem + max(max(s.C, max(s.H * D, s.I)) * 2, WARPS * (4 * D + 192) * 4) / 16 + warp * SLOT_CHUNKS;
    stamp(s, 0);
    if (s.prefetch_kv) prefetch_pages(s, reinterpret_cast<const bf16*>(s.layers[6]), reinterpret_cast<const bf16*>(s.layers[7]), D);
    for (int l = 0; l < s.L; l++) {
        const unsigned long long* p = s.layers + 8 * l;
        const unsigned long long* next = l + 1 < s.L ? p + 8 : nullptr;
        const float* attn_norm = reinterpret_cast<const float*>(p[0]);
        const bf16* wqkv = reinterpret_cast<const bf16*>(p[1]);
        const bf16* wo = reinterpret_cast<const bf16*>(p[2]);
        const float* mlp_norm = reinterpret_cast<const float*>(p[3]);
        const bf16* wgu = reinterpret_cast<const bf16*>(p[4]);
        const bf16* wdown = reinterpret_cast<const bf16*>(p[5]);
        bf16* k_cache = reinterpret_cast<bf16*>(p[6]);
        bf16* v_cache = reinterpret_cast<bf16*>(p[7]);
        const bool qkv_pre = PRE && gw < (s.H + 2 * s.Hkv) * (D / 2), o_pre = PRE && gw < s.C, gate_up_pre = PRE && gw < s.I;

        QkvEpilogue qkv_first{1.0f, 0.0f, -1};
        if (qkv_pre) {
            const bf16* w[2];
            qkv_weight_rows<D>(s, wqkv, gw, w);
            copy_batch(slot, w, lane, s.C / 8);
            qkv_first = qkv_epilogue<MR, D>(s, gw, 0, lane);
        }
        if (PRE && l > 0) {  // the previous layer's last barrier: arrived at the end of its down phase
            grid_wait(s.barrier, target);
            stamp(s, 6 * l);
        }
        stage_norm<D>(xs, s.resid, attn_norm, s.M, s.C, s.eps, TENSOR);
        TRACE(l, 0);
        if constexpr (TENSOR) phase_qkv_mma<D>(s, wqkv, k_cache, v_cache, smem, red);
        else phase_qkv<MR, D, PRE>(s, wqkv, k_cache, v_cache, smem, gw, tw, lane, qkv_pre ? slot : nullptr, qkv_first);
        if (next != nullptr) prefetch_layer(s, next, D);  // (decode: issued after attention instead measured level)
        TRACE(l, 1);
        // decode: no grid barrier between qkv, attention, merge and O; each unit waits for the units it reads
        // (dataflow counters: phase_attention, phase_merge). What a warp or block writes there is read by
        // no other phase before the O phase's wait, which follows every merge and so every qkv unit.
        if constexpr (!PRE) {
            grid_arrive(s.barrier, target);
            prefetch_next_pages(s, next, D);
            grid_wait(s.barrier, target);
        }
        stamp(s, 1 + 6 * l);
        phase_attention<D, MR == 1 ? 1 : BLOCK ? BLOCK_GROUP_ROWS : GROUP_ROWS, PRE, BLOCK>(s, k_cache, v_cache, reinterpret_cast<float*>(smem), gw, tw, warp, lane, l);
#ifdef FUSED_TRACE_TWICE  // experiment: the same attention again, its code and data now cached
        TRACE(l, 10);
        phase_attention<D, MR == 1 ? 1 : GROUP_ROWS, false, false>(s, k_cache, v_cache, reinterpret_cast<float*>(smem), gw, tw, warp, lane, l);
#endif
        TRACE(l, 2);
        if constexpr (!PRE && !BLOCK) grid_barrier(s.barrier, target);
        stamp(s, 2 + 6 * l);
        // decode: the merge's split weights go to the warp's slot (free until the O copy below), not over the
        // attention tiles of the block's other warps, which may still be at work
        if constexpr (!BLOCK)  // (BLOCK: merged in phase_attention)
            phase_merge<D, PRE>(s, PRE ? reinterpret_cast<float*>(slot) : reinterpret_cast<float*>(smem) + warp * s.splits, gw, tw, lane, l);
        TRACE(l, 3);
        // the resid values the residual phases add to were written two barriers before them: read before the wait
        if constexpr (PRE) __syncthreads();  // the block's warps are done with shared memory (the O staging overwrites it)
        else grid_arrive(s.barrier, target);
        float before = o_pre ? start_residual<MR>(s, slot, wo, s.H * D, gw, lane) : 0.0f;
        if constexpr (PRE) {  // every row merged: every unit of qkv, attention and merge of this layer is done
            if (threadIdx.x == 0) poll_until(rows_merged(s), s.M * s.H * (l + 1));
            __syncthreads();
        } else grid_wait(s.barrier, target);
        stamp(s, 3 + 6 * l);
        stage_copy(smem, s.attn, s.M, s.H * D, TENSOR);
        TRACE(l, 4);
        if constexpr (TENSOR) phase_residual_mma(s.resid, wo, smem, s.M, s.C, s.H * D, red);
        else phase_residual_gemv<MR>(s.resid, wo, smem, s.M, s.C, s.H * D, gw, tw, lane, o_pre ? slot : nullptr, before);
        TRACE(l, 5);
        grid_arrive(s.barrier, target);
        if constexpr (PRE) prefetch_next_pages(s, next, D);
        if (gate_up_pre) {
            const bf16* w[2];
            gate_up_rows(wgu, s.C, s.I, gw, w);
            copy_batch(slot, w, lane, s.C / 8);
        }
        grid_wait(s.barrier, target);
        stamp(s, 4 + 6 * l);
        stage_norm<D>(xs, s.resid, mlp_norm, s.M, s.C, s.eps, TENSOR);
        TRACE(l, 6);
        if constexpr (TENSOR) phase_gate_up_mma(s.act, wgu, smem, s.M, s.C, s.I, red);
        else phase_gate_up<MR>(s.act, wgu, smem, s.M, s.C, s.I, gw, tw, lane, gate_up_pre ? slot : nullptr);
        TRACE(l, 7);
        grid_arrive(s.barrier, target);
        if (o_pre) before = start_residual<MR>(s, slot, wdown, s.I, gw, lane);  // down writes the same columns as o
        grid_wait(s.barrier, target);
        stamp(s, 5 + 6 * l);
        stage_copy(smem, s.act, s.M, s.I, TENSOR);
        TRACE(l, 8);
        if constexpr (TENSOR) phase_residual_mma(s.resid, wdown, smem, s.M, s.C, s.I, red);
        else phase_residual_gemv<MR>(s.resid, wdown, smem, s.M, s.C, s.I, gw, tw, lane, o_pre ? slot : nullptr, before);
        TRACE(l, 9);
        if (next == nullptr) stamp(s, 6 + 6 * l);
        else if (PRE) grid_arrive(s.barrier, target);  // waited for at the top of the next layer
        else {
            grid_barrier(s.barrier, target);
            stamp(s, 6 + 6 * l);
        }
    }
}

#define FUSED_LAYERS_KERNEL(NAME, MR, D, BLOCK)                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS, 1) NAME(                                                     \
        const unsigned long long* layers, int L, float* resid, const int* positions, const int* slots,                \
        const float* cos_table, const float* sin_table, const int* cu_q, const int* kv_len, const int* tree_start,    \
        const unsigned long long* masks, const int* page_tables, int W, int B, float* q_buf, float* o_part,            \
        float* ml_part, bf16* attn, bf16* act, unsigned* barrier, int M, int C, int H, int Hkv, int I, int P,         \
        int groups, int splits, float eps, float scale, int prefetch, int prefetch_kv, unsigned long long* clock) {    \
        Step s{layers, L, resid, positions, slots, cu_q, kv_len, tree_start, page_tables, masks, cos_table, sin_table, \
               W, B, q_buf, o_part, ml_part, attn, act, barrier, M, C, H, Hkv, I, P, groups, splits, eps, scale,       \
               prefetch, prefetch_kv, clock};                                                                          \
        if constexpr (MR != 1) {                                                                                       \
            step_in_shared(s);                                                                                         \
            if (s.cu_q[s.B] == 0) return; /* an empty plan: a device-drafted step past its sequence's end */           \
        }                                                                                                              \
        fused_layers_body<MR, D, BLOCK>(s);                                                                            \
    }
#define FUSED_LAYERS(MR, D) FUSED_LAYERS_KERNEL(fused_layers_r##MR##_d##D, MR, D, false)
// attention and merge in one phase, a block per (sequence, KV head, row group) (phase_attention, BLOCK)
#define FUSED_LAYERS_BLOCK(MR, D) FUSED_LAYERS_KERNEL(fused_layers_r##MR##_block_d##D, MR, D, true)
