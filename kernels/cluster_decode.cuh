// Every layer of a one-token decode step, or of a tree step of up to 4 nodes (one sequence, bf16), in ONE persistent
// launch of thread block clusters of 8, in two roles that hand each layer to each other through tagged partial sums,
// instead of the fused-layers kernel's five dependent grid-wide exchanges a layer. Who runs it:
// CudaBackend.decode_in_one_launch, where cluster_decode_shape allows (Hopper, B = 1, T = 1 or T <= cluster_tree_rows,
// the models the fused kernel takes, when the clusters and the rows' buffers fit); batches and larger trees stay on the
// fused kernel.
// This header holds the kernel; kernels/cluster_decode.cu instantiates the one-row form (a decode step: the first step of
// every generation waits for its compile) and kernels/cluster_tree.cu the 2- and 4-row forms, each file for the model's
// head dim. Instances cluster_decode_r{R}_d{D}: R = 1, 2 or 4 rows (a step of T <= R nodes; rows past T are padding, as a graph
// bucket pads them). Every per-row buffer is R deep, and each piece of work reads its weights once for the R rows (the
// qkv pairs, the O columns, the gate/up indices, the down columns) and its key row once for the R rows' queries of a
// head. A tree row r attends to the keys before tree_start and the tree keys its ancestor bits name; the tree's keys
// come from the rows' pushed k, v as the decode step's one key does. Measured on an H200 (random weights, default
// model's shapes, 512 keys, notes/cluster_tree_h200_stop51.log): 10.1 / 13.4 / 20.6 µs a layer at 1 / 2 / 4 rows; a
// forward (argmax included) at T = 2 0.71 -> 0.48 ms, at T = 4 0.76 -> 0.70 against the fused kernel. The one-row
// instance ran 0.3 µs a layer slower than stop 50's single-row kernel at 512 keys; half came back when its indices lost
// their integer divisions (one step ahead 0.345 -> 0.339 ms against stop 50's 0.332, notes/cluster_r1_index_h200_stop52.log).
// Since stop 52 an MLP block copies its down weights as ni / 8 runs of a group-major copy (two on the default model)
// instead of C runs of 2 ni bytes (576 copies of 32 bytes a block a layer): by turns, one step ahead 0.293 -> 0.284 ms
// at 100 keys, 0.342 -> 0.335 at 512, a T = 4 forward 0.66 -> 0.61 and 0.76 -> 0.72 (notes/cluster_grouped_down_h200_stop52.log).
// Since stop 53 the one-row instance's attention blocks copy their O slice as one run of a head-grouped copy of wo
// instead of OC runs of 2 G D bytes: one step ahead 0.283 -> 0.278 ms at 100 keys, 0.334 -> 0.329 at 512; the 4-row
// instance on that copy ran its T = 4 forward 4-8% slower (in 1, 4 or 8 runs; cause not found), so the tree instances
// copy wo's rows (notes/cluster_grouped_o_h200_stop53.log).
// Measured (random weights with the default model's shapes): 11.2-11.4 / 12.2-12.4 / 12.9-13.1 µs a layer at 100 / 512 /
// 1024 keys against the fused kernel's 15.5 / 18.1 / 19.4 (H200, notes/cluster_decode_ab_h200_stop27.log); plain greedy
// decode on the default model 1870 -> 2478 tokens/s (H100, notes/bench_e2e_quick_h100_stop27_final.log). Since stop 28
// the hand-overs poll tagged partial sums instead of two counters: 11.42 / 12.45 -> 10.50 / 11.78 µs a layer at 100 /
// 512 keys (H200, notes/cluster_decode_tagged_h200_stop28.log); decode one step ahead on the default model 0.423 ->
// 0.408 ms (H100, notes/bench_e2e_quick_h100_stop28.log). Since stop 29 the launch also reads the token's embedding
// row and leaves the final norm (the step lost two launches), and its first round trip brings the layer table, so
// layer 0's weight copies go out one round trip in instead of five: decode one step ahead 365.5 -> 359.5 µs at 100
// keys (H200, notes/cluster_decode_fold_ab_h200_stop29.log). Since stop 29 every block adds the partial sums to its
// slice of h alone and sends the slice to its cluster (slice_partials): decode one step ahead 372.8 -> 317.5 µs at
// 100 keys and 419 -> 345 at 512 (H100); 359 -> 319 and 404 -> 351 on the H200 with both roles' critical-path adds
// by slice, before the off-path adds of the O sums went by slice too (notes/cluster_decode_slices_stop29.log); a
// one-chunk attention share pushed straight from its unit and the final norm's weights copied ahead, 316 -> 307.5 µs
// at 100 keys (H100, notes/cluster_decode_direct_h100_stop29.log); the next layer's copies issued after the block's
// end-of-layer add, 308.6 -> 298.8 µs (H100, notes/bench_e2e_quick_h100_stop29_copy_late.log). Tried and not kept: each warp norming the GEMV input
// into its own registers instead of the block's staged row (no block barrier, but qkv 1.79 -> 2.46 µs;
// notes/cluster_decode_ab_h100_stop27.log); the next layer's copies issued after the block's own role's sums, a
// 100 ns sleep between polls (both level, stop 28's log), more accumulator chains in the attention (level,
// notes/cluster_decode_norm_fold_h200_stop28.log); a context of up to 160 keys attended whole by every block, with no
// exchange of shares (1.2-1.7 µs a layer slower: twelve warps on whole 32-key chunks), and the P V products grouped by
// key (level, then slower in one call; notes/cluster_decode_whole_h200_stop29.log,
// notes/cluster_decode_copy_late_h100_stop29.log), a wait before the next layer's copies (slower, same log).
//
// h = the residual stream (C floats), held by slices: block r of a cluster keeps slice r (columns [r C/8, (r+1) C/8))
// current and adds the partial sums to it alone; before each RMSNorm it sends the new slice, and its sum of squares,
// to the 8 blocks of its cluster (st.async onto hin; slice_partials), so each block reads an eighth of the partials.
//   attention role, the cluster of KV head c (clusters 0 .. Hkv-1), per layer l:
//     h += the MLP clusters' layer l-1 down sums (dpart[(l-1) % 2], polled until tagged with layer l-1), by slice
//     x = bf16(rmsnorm(h) * attn_norm) from the slices sent (hin)
//     qkv: the cluster's (G + 2) D columns (G query heads, its key head, its value head) as RoPE column pairs
//          (d, d + D/2), pair u to cluster block u % 8; each block pushes its rotated values to all 8 blocks
//          (st.async, counted on the receiver's mbarrier: only the receiver waits); k and v rounded to bf16 and
//          written to the cache slot
//     attention: block r takes keys [r share, (r+1) share) of n = kv_len; the old ones are in its shared memory
//          (copied during the layer before), the new one is the pushed k, v. The PASSES instances (a step whose share
//          a block's shared memory does not hold whole: kernels/cluster_decode_passes.cu) run a share in passes of
//          pass_keys keys: the first copied during the layer before, each next one once the pass before it is done
//          (counted on the last mbarrier). Per query head: the share's running
//          max m, exp sum l and unnormalised o, pushed to all 8 blocks; every block merges the 8 shares in rank order
//          into attn = bf16(sum_r e^(m_r - M) o_r / sum_r e^(m_r - M) l_r)
//     O partial: block r: columns [r C/8, (r+1) C/8) of attn_c . Wo[:, c G D .. (c+1) G D]^T -> opart[l % 2][c, :]
//     while the MLP role works: h += the layer's O sums (its slice), then copy its next layer's weights and K/V rows
//   MLP role, the other clusters, per layer l:
//     h += sum_c opart[l % 2][c, :] (c in order, polled until tagged with layer l), by slice
//     x = bf16(rmsnorm(h) * mlp_norm) from the slices sent; block b owns intermediate indices [i0, i0 + ni) (groups of 8):
//     act_i = bf16(silu(x . Wg_i) (x . Wu_i)), then its share of down, a partial [C] over its indices; block r of
//     the cluster sums column slice r of its 8 blocks' partials (pushed to it) in rank order -> dpart[l % 2][k, :]
//     while the attention role works: h += the layer's down sums (its slice), then copy its next layer's weights
//   the first attention cluster then adds the last layer's down sums by slice; block 0 writes h and its final norm.
// Why: a grid barrier costs ~1.0 µs and a cluster barrier ~0.7, but a push that only its receiver waits for ~0.3 (an
// all-to-all of 72 floats 0.35 µs; notes/cluster_push_probe_h100_stop27.log). Weights never stream on the critical
// path: each block copies its slices of layer l + 1 into shared memory (cp.async.bulk, an mbarrier per role's group)
// once it is done with layer l's, while the other role works: copies issued beside a block's own critical loads
// held those up by ~2.5 µs a layer (notes/cluster_decode_h200_stop27.log, runs 1-2), and since stop 29 only after its
// end-of-layer add, which lasts as long as the other role's hand-over (copies beside those polls held them up too).
// Partial sums alternate between two buffers by layer: a block may write layer l + 1's while a slower block of the
// other role still reads layer l's. Layer l + 2's writers cannot pass a reader of layer l: they need layer l + 1's sums
// of every block of the other role (its O columns, its down partials), each of which that block wrote after its own
// reads of layer l's. hin needs one buffer: a block norms it before its own partial sums of the layer go out, and
// its cluster's next slices need those.
// Every sum runs in a fixed order (no float atomics): a step gives the same bits every time.
// The roundings are those of the layer-by-layer path (bf16 GEMV inputs, fp32 sums, bf16 K/V and attention output);
// they agree up to fp32 summation order. NumPy reference: Model.compute on numpy_backend.
//
// Layouts: tokens int [rows] (the step's tokens), embed bf16 [V, C] (their rows are h before layer 0), final_norm float
//   [C], normed bf16 [rows, C] out (bf16(rmsnorm(h) * final_norm) after the last layer: the LM head's input, so the step
//   has no embedding or norm launch around this one), resid float [rows, C] out (h after the last layer); positions,
//   slots int [rows], masks uint64 [rows] (ancestor bits, R > 1), tree_start int [1] (R > 1), cu_q int [2] (rows past
//   cu_q[1] are padding: no K/V written); layers uint64 [L, 8]
//   as kernels/fused_layers.cuh (attn_norm, wqkv [(H + 2 Hkv) D, C], wo [C, H D], mlp_norm, w_gate_up [2 I, C],
//   k_cache, v_cache [NP, Hkv, P, D]) but for the down weight and, for R = 1, the O weight (CudaBackend.cluster_weights):
//   w_down [C, I] group-major, bf16 [I / 8, C, 8], element (c, i) at ((i / 8) C + c) 8 + i % 8, so that an MLP block's
//   indices (whole groups of 8) are ni / 8 runs of 16 C bytes; wo [C, H D] by head group, bf16 [Hkv, C, G D], element
//   (c, j) at ((j / (G D)) C + c) G D + j % (G D), so that an attention block's O slice is one run of 2 OC G D bytes
//   (R > 1: wo itself, OC runs of 2 G D bytes); opart uint64 [2, Hkv, R, C], dpart uint64 [2, MLP clusters, R, C]
//   (tagged values, layer_tag below), epoch uint32 [1]: they outlive launches (CudaBackend.cluster_decode_buffers).
//   C % 32 == 0, C <= 1024 (a lane's float4 of a slice), I % 8 == 0, L <= 64 (the tag's layer bits; 8 L table
//   entries, one a thread), (G + 2) D / 16 <= 512 (a thread's RoPE pair), at most CD_MAX_PARTIALS clusters of each
//   role.
// Launch: grid = 8 x clusters (every block resident at once, or the polls deadlock: ask the driver how many
//   clusters fit, driver.max_active_clusters), block 512, dynamic shared memory as Layout below
//   (CudaBackend.cluster_decode_shared_bytes mirrors it region by region).
#pragma once
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "hopper.cuh"
#include "cluster.cuh"
#include "warp.cuh"
#include "bf16x8.cuh"
#include "pdl.cuh"
#include "head_dim.cuh"

#define CD_WARPS 16
#define CD_THREADS (CD_WARPS * 32)
#define CD_CLUSTER 8
#define CD_NEG_INF (-__int_as_float(0x7f800000))
#define CD_MAX_PARTIALS 24  // partial sums of each role at most (CudaBackend.CLUSTER_DECODE_MAX_PARTIALS; polled's size)
// experiment (notes/scripts/cluster_decode_probe.py): copy layer 0's weights only (wrong results: the timing
// without the copy traffic)
#ifndef CD_COPY_ONCE
#define CD_COPY_ONCE 0
#endif

using bf16 = __nv_bfloat16;

namespace cd {

// dot of 8 unpacked weights with 8 unpacked inputs, added to acc in element order
__device__ __forceinline__ float dot8f(const float (&w)[8], const float (&x)[8], float acc) {
#pragma unroll
    for (int k = 0; k < 8; k++) acc = fmaf(w[k], x[k], acc);
    return acc;
}

// qkv's and gate/up's loop over a weight pair (rows w0 and w0 + C8, C8 16-byte chunks each) against R input rows (xs,
// XS8 chunks apart): a0[r] += w0 . x_r, a1[r] += w1 . x_r over the chunks first, first + step, .., each weight chunk
// unpacked once for the R rows
template <int R>
__device__ __forceinline__ void pair_dots(const uint4* w0, const uint4* xs, int XS8, int C8, int first, int step, float (&a0)[R],
                                          float (&a1)[R]) {
    for (int ch = first; ch < C8; ch += step) {
        float wa[8], wb[8];
        unpack8(w0[ch], wa), unpack8(w0[C8 + ch], wb);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float x[8];
            unpack8(xs[r * XS8 + ch], x);
            a0[r] = dot8f(wa, x, a0[r]), a1[r] = dot8f(wb, x, a1[r]);
        }
    }
}

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// `bytes` (a multiple of 16, both addresses 16-byte aligned) global -> this block's shared memory by the copy
// engine, counted on the mbarrier `bar` (its expected bytes announced with expect)
__device__ __forceinline__ void bulk(void* shared, const void* global, unsigned bytes, unsigned long long* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"((unsigned)__cvta_generic_to_shared(shared)), "l"(global), "r"(bytes),
                 "r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
}

// ---- pushes into a cluster block's shared memory, counted on its mbarrier (st.async complete_tx)
__device__ __forceinline__ void push(float* local, unsigned long long* bar, unsigned rank, float v) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];\n"
                 ::"r"(cluster_address(local, rank)), "f"(v), "r"(cluster_address(bar, rank)) : "memory");
}
__device__ __forceinline__ void push2(float* local, unsigned long long* bar, unsigned rank, float a, float b) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n"
                 ::"r"(cluster_address(local, rank)), "f"(a), "f"(b), "r"(cluster_address(bar, rank)) : "memory");
}
__device__ __forceinline__ void push4(float* local, unsigned long long* bar, unsigned rank, float4 v) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n"
                 ::"r"(cluster_address(local, rank)), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(cluster_address(bar, rank)) : "memory");
}
// the receiver: thread 0 announces the bytes of this layer's round (before or after they land), all wait
// (mbarrier_wait<true>: the bytes came from other blocks of the cluster)
__device__ __forceinline__ void expect(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
}

struct Step {
    const unsigned long long* layers;
    int L;
    const int* tokens;
    const bf16* embed;
    const float* final_norm;
    bf16* normed;
    float* resid;
    const int *positions, *slots, *kv_len, *page_table;
    const unsigned long long* masks;  // a tree step's ancestor bits a row (R > 1)
    const int* tree_start;            // its first tree key (R > 1)
    const int* cu_q;                  // [0, live rows]: a plan the device wrote may have fewer live rows than `rows`, or none
    int rows;                         // the step's rows (<= R; rows past it are padding)
    const float *cos_table, *sin_table;
    unsigned long long *opart, *dpart;
    unsigned* epoch;
    int C, H, Hkv, I, P, span, pass_keys;  // keys a block at most; of them, K/V rows held at once (a multiple of 32)
    float eps, scale;
    unsigned long long* clock;
};

__device__ __forceinline__ unsigned long long globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
// a ring of the last CD_LAUNCH_RING launches after the layer stamps, by epoch: [block 0 in, the last block in, block 0
// out], so a probe sees what a step spends outside this kernel (notes/scripts/step_anatomy.py)
#define CD_LAUNCH_RING 64
// experiment (notes/scripts/cluster_block_stamps.py): every block also records each layer stamp, [block][L][7] after
// the launch ring, where the plain build records block 0's or the first MLP block's alone
#ifndef CD_STAMP_BLOCKS
#define CD_STAMP_BLOCKS 0
#endif
__device__ __forceinline__ void stamp(const Step& s, int index, int block = 0) {
    if (s.clock != nullptr && blockIdx.x == block && threadIdx.x == 0) s.clock[index] = globaltimer();
#if CD_STAMP_BLOCKS
    if (s.clock != nullptr && threadIdx.x == 0 && index > 0)
        s.clock[1 + 7 * s.L + 3 * CD_LAUNCH_RING + (long long)blockIdx.x * 7 * s.L + index - 1] = globaltimer();
#endif
}
__device__ __forceinline__ void launch_stamps(const Step& s, unsigned epoch, unsigned long long t, bool out) {
    if (s.clock == nullptr || threadIdx.x != 0) return;
    unsigned long long* ring = s.clock + 1 + 7 * s.L + 3 * (epoch % CD_LAUNCH_RING);
    if (blockIdx.x == 0) ring[out ? 2 : 0] = t;
    if (!out) atomicMax(ring + 1, t);  // (later launches stamp later: the slot's last cycle never wins)
}

// Shared memory carve-up (byte offsets; the backend's cluster_decode_shared_bytes mirrors it): R rows of every
// per-row region
// LATE_O (the one-row instance, a decode step): the O slice shares the qkv weights' region, copied there once the qkv
// products are done, so that the attention blocks' shares of the 4096-key bucket fit (the default model: 212 KB a block,
// against 244 KB with a region of its own), and the copy runs beside attention instead of ahead of it (a decode step 2-4%
// faster from 512 keys, ~1% slower at 100, stop 66). The tree instances (R > 1) keep the O slice's own region, copied
// with the attention group: late, their steps were 3-4% slower at 300 keys.
template <int D, int R, bool PASSES>
struct Layout {
    static constexpr bool LATE_O = R == 1;
    // mbarriers: pushes of qkv values, of attention partials, of down sums; copy groups attention, MLP; pushes of h's
    // slices; LATE_O: the O slice's copy; PASSES: the K/V rows of a share's passes after the first
    static constexpr int BARS = 6 + LATE_O + PASSES, PASS_BAR = 6 + LATE_O;
    int G, pairs_block, OC, OK, ni_max, keys_max, chunks_max;
    int h, hin, sq_in, xs, qkv_in, part_in, upart, attn, act, dred_in, red, polled, rope, norm_a, norm_m, bars, table, pages, masks, wqkv, wo,
        wgu, wd, kv;
    __device__ Layout(const Step& s) {
        G = s.H / s.Hkv;
        pairs_block = ((G + 2) * D / 2 + CD_CLUSTER - 1) / CD_CLUSTER;
        OC = s.C / CD_CLUSTER;
        OK = G * D;
        const int groups = s.I / 8;
        const int mlp_blocks = gridDim.x - CD_CLUSTER * s.Hkv;
        ni_max = 8 * ((groups + mlp_blocks - 1) / mlp_blocks);
        keys_max = PASSES ? s.pass_keys : s.span;  // K/V rows in shared memory: a pass's
        chunks_max = (s.span + 31) / 32;           // 32-key chunks of a whole share
        int at = 0;
        auto take = [&](int bytes) { int o = at; at += (bytes + 15) / 16 * 16; return o; };
        h = take(R * s.C * 4);
        hin = take(R * s.C * 4);
        sq_in = take(R * CD_CLUSTER * 4);
        xs = take(R * max(s.C, OK) * 2);
        qkv_in = take(R * (G + 2) * D * 4);
        part_in = take(R * CD_CLUSTER * G * (D + 2) * 4);
        upart = take(R * G * chunks_max * (D + 2) * 4);
        attn = take(R * OK * 2);
        act = take(R * ni_max * 4);
        dred_in = take(R * CD_CLUSTER * OC * 4);
        red = take(R * CD_WARPS * 4);
        polled = take(R * max(s.Hkv, mlp_blocks / CD_CLUSTER) * (s.C / 32) * 16);  // (each role's partials: <= CD_MAX_PARTIALS)
        rope = take(R * pairs_block * 2 * 4);
        norm_a = take(s.C * 4);
        norm_m = take(s.C * 4);
        bars = take(BARS * 8);
        table = take(s.L * 8 * 8);
        pages = take((s.span / s.P + 2) * 4);
        masks = take(R * 8);
        // a block's own role's weights (and K/V rows): the two roles' regions overlap (a decode step's shares then fit up
        // to the 2048-key bucket, where they stopped at 1024)
        const int roles = at;
        wqkv = take(LATE_O ? max(pairs_block * 2 * s.C * 2, OC * OK * 2) : pairs_block * 2 * s.C * 2);
        wo = LATE_O ? wqkv : take(OC * OK * 2);
        kv = take(2 * keys_max * D * 2);
        at = roles;
        wgu = take(ni_max * 2 * s.C * 2);
        wd = take(s.C * ni_max * 2);
    }
};

// the global column of a cluster's qkv pair u (0 .. (G + 2) D / 2 - 1): head slot hg = u / (D / 2) of the G query
// heads, then the key head, then the value head
template <int D>
__device__ __forceinline__ int pair_column(const Step& s, int c, int G, int u) {
    const int hg = u / (D / 2), d = u % (D / 2);
    const int head = hg < G ? c * G + hg : (hg == G ? s.H + c : s.H + s.Hkv + c);
    return head * D + d;
}

// xs = bf16(h * rsqrt(mean(h^2) + eps) * w): thread t < C / 8 takes 8 values; warp sums meet in `red` in warp order
// (folded: the sum of squares is already there in `parts` pieces, added in order: the slices' sums in sq_in)
__device__ __forceinline__ void stage_norm(const float* h, const float* w, uint4* xs, float* red, int C, float eps, bool folded = false,
                                           int parts = CD_WARPS) {
    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    float v[8], sq = 0.0f;
    const bool in = t < C / 8;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        v[e] = in ? h[8 * t + e] : 0.0f;
        sq = fmaf(v[e], v[e], sq);
    }
    if (!folded) {
        sq = warp_sum(sq);
        if (lane == 0) red[warp] = sq;
        __syncthreads();
    }
    float total = 0.0f;
    for (int k = 0; k < parts; k++) total += red[k];
    const float f = rsqrtf(total / C + eps);
    if (in) {
        unsigned o[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            __nv_bfloat162 p = __floats2bfloat162_rn(v[2 * k] * f * w[8 * t + 2 * k], v[2 * k + 1] * f * w[8 * t + 2 * k + 1]);
            o[k] = *reinterpret_cast<unsigned*>(&p);
        }
        xs[t] = make_uint4(o[0], o[1], o[2], o[3]);
    }
    __syncthreads();
}

// stage_norm's folded form for R rows at once (one barrier): xs[r] = bf16(h[r] * rsqrt(mean(h[r]^2) + eps) * w), the
// rows' sums of squares in sq_in [R][8] (added in rank order), thread t < R C / 8 taking 8 values of row t / (C / 8);
// one row: stage_norm's own folded form
template <int R>
__device__ __forceinline__ void stage_norm_rows(const float* h, const float* w, uint4* xs, int xs_row, float* sq_in, int C, float eps) {
    if constexpr (R == 1) {
        stage_norm(h, w, xs, sq_in, C, eps, true, CD_CLUSTER);
        return;
    }
    const int C8 = C / 8;
    for (int i = threadIdx.x; i < R * C8; i += CD_THREADS) {
        const int r = i / C8, t = i % C8;
        float total = 0.0f;
        for (int k = 0; k < CD_CLUSTER; k++) total += sq_in[r * CD_CLUSTER + k];
        const float f = rsqrtf(total / C + eps);
        const float* v = h + r * C + 8 * t;
        unsigned o[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            __nv_bfloat162 p = __floats2bfloat162_rn(v[2 * k] * f * w[8 * t + 2 * k], v[2 * k + 1] * f * w[8 * t + 2 * k + 1]);
            o[k] = *reinterpret_cast<unsigned*>(&p);
        }
        xs[r * xs_row + t] = make_uint4(o[0], o[1], o[2], o[3]);
    }
    __syncthreads();
}

// (row, index within the row) of flat index k over R rows of n values each: one row takes no division (its runtime
// n would cost the one-row step integer divisions, notes/cluster_r1_index_h200_stop52.log)
template <int R>
__device__ __forceinline__ int2 row_split(int k, int n) { return R == 1 ? make_int2(0, k) : make_int2(k / n, k % n); }

// ---- partial sums tagged with their layer: a u64 per value, (tag << 32) | the float's bits, written in ONE 8-byte
// store (single-copy atomic), so a reader that sees the tag sees the value. No counter, no release fence: a reader
// reloads until every value carries the tag it expects, one L2 round trip after the stores land, where a counter
// took three (the writer's fence, its add, the reader's poll, then the loads). Tags: (epoch << 6) | layer, the
// epoch counted up by each launch (block 0, at its end), so neither the layer two back (same buffer) nor the last
// launch's values pass.
__device__ __forceinline__ unsigned layer_tag(unsigned epoch, int layer) { return epoch << 6 | (unsigned)layer; }
__device__ __forceinline__ void store_tagged(unsigned long long* at, float v, unsigned tag) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(at), "l"((unsigned long long)tag << 32 | __float_as_uint(v)) : "memory");
}
// four tagged values: their floats into v, whether all four carry `tag` returned
__device__ __forceinline__ bool load_tagged4(const unsigned long long* at, unsigned tag, float4& v) {
    unsigned t0, t1, t2, t3;
    asm volatile("{\n.reg .b64 a, b;\nld.relaxed.gpu.global.v2.u64 {a, b}, [%8];\nmov.b64 {%0, %1}, a;\nmov.b64 {%2, %3}, b;\n"
                 "ld.relaxed.gpu.global.v2.u64 {a, b}, [%9];\nmov.b64 {%4, %5}, a;\nmov.b64 {%6, %7}, b;\n}\n"
                 : "=f"(v.x), "=r"(t0), "=f"(v.y), "=r"(t1), "=f"(v.z), "=r"(t2), "=f"(v.w), "=r"(t3)
                 : "l"(at), "l"(at + 2));
    return t0 == tag && t1 == tag && t2 == tag && t3 == tag;
}

// h[slice] += sum_k part[k, slice] over k < count (tagged, written in this launch), by slice: block `rank` of a cluster
// adds only its column slice (C / 8 values; every block keeps only its slice of h current) and (send) sends the new
// slice, and its sum of squares, to every block of its cluster (st.async onto hin and sq_in, counted on `bar`; the
// caller waits, then norms hin). So each block reads an eighth of the partials (the attention role's hand-over: 12 x
// 72 x 8 bytes on the default model, where every block adding all of h read 12 x 576 x 8; that read, on the critical
// path, and the MLP blocks' 5.3 MB a layer beside it, cost the step 55 of 373 µs at 100 keys on the H100:
// notes/cluster_decode_slices_stop29.log).
// Warp w polls (partial, row) w (and w + 16, ...) into polled [count][R][C / 32]; warp r sums row r's in k order, the norm's sum of squares
// is taken by slice and added in rank order: every block the same bits. Seconds of waiting mean a block is not
// resident: fail, do not hang.
template <int R>
__device__ __forceinline__ void slice_partials(float* h, const unsigned long long* part, int count, int C, unsigned rank,
                                               float4* polled, unsigned tag, bool send, float* hin, float* sq_in,
                                               unsigned long long* bar) {
    const int t = threadIdx.x, w = t / 32, q = t % 32, Q = C / 32;  // Q float4 in the slice (C / 32 <= 32)
    const int col = (int)rank * (C / CD_CLUSTER) + 4 * q;
    if (q < Q)
        for (int kr = w; kr < count * R; kr += CD_WARPS) {  // partial k of row r: kr = k R + r (part [count][R][C])
            float4 v;
            unsigned spins = 0;
            while (!load_tagged4(part + (long long)kr * C + col, tag, v))
                if (++spins == (1u << 22)) __trap();  // seconds: a block is not resident
            polled[kr * Q + q] = v;
        }
    __syncthreads();
    if (w < R) {  // warp r: row r
        const int r = w;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float sq = 0.0f;
        if (q < Q) {
            float4 sum = polled[r * Q + q];  // (count >= 1)
            for (int k = 1; k < count; k++) {
                const float4 v = polled[(k * R + r) * Q + q];
                sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
            }
            float4* h4 = reinterpret_cast<float4*>(h + r * C) + col / 4;
            x = *h4;
            x.x += sum.x, x.y += sum.y, x.z += sum.z, x.w += sum.w;
            *h4 = x;
            sq = fmaf(x.x, x.x, fmaf(x.y, x.y, fmaf(x.z, x.z, x.w * x.w)));
        }
        if (send) {
            sq = warp_sum(sq);
            if (q < Q)
                for (int k = 0; k < CD_CLUSTER; k++) push4(hin + r * C + col, bar, k, x);
            if (q < CD_CLUSTER) push(sq_in + r * CD_CLUSTER + rank, bar, q, sq);
        }
    }
    if (!send) __syncthreads();  // polled read before the next call writes it (where no other barrier comes between)
}

// Partials (o: D floats, this lane's D / 32 at (D / 32) lane; then m, l) at first + k stride, k < count, merged in k
// order: M = max m, o = sum e^(m_k - M) o_k; returns L = sum e^(m_k - M) l_k. A partial with no keys (m = -inf) weighs
// 0 (all of them: M = -inf, L = 0). The attention's chunks into a share, and the 8 shares of a head.
template <int D>
__device__ __forceinline__ float merge_partials(const float* first, int count, int stride, float& M, float (&o)[D / 32]) {
    const int lane = threadIdx.x % 32;
    M = CD_NEG_INF;
    for (int k = 0; k < count; k++) M = fmaxf(M, first[k * stride + D]);
    float L = 0.0f;
#pragma unroll
    for (int e = 0; e < D / 32; e++) o[e] = 0.0f;
    for (int k = 0; k < count; k++) {
        const float* p = first + k * stride;
        const float w = p[D] == CD_NEG_INF ? 0.0f : __expf(p[D] - M);
        L = fmaf(w, p[D + 1], L);
#pragma unroll
        for (int e = 0; e < D / 32; e++) o[e] = fmaf(w, p[(D / 32) * lane + e], o[e]);
    }
    return L;
}

template <int D, int R, bool PASSES>
__device__ void cluster_decode_body(const Step& s) {
    using Lay = Layout<D, R, PASSES>;
    constexpr bool LATE_O = Lay::LATE_O;
    const unsigned long long entered = s.clock != nullptr ? globaltimer() : 0;
    extern __shared__ __align__(128) unsigned char smem[];
    const Lay lay(s);
    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    const int cluster = blockIdx.x / CD_CLUSTER;
    const bool attends = cluster < s.Hkv;  // this cluster's KV head: c = cluster
    const int c = cluster, G = lay.G, C = s.C, C8 = C / 8, XS8 = max(C, lay.OK) / 8;
    float* h = reinterpret_cast<float*>(smem + lay.h);        // [R][C]
    float* hin = reinterpret_cast<float*>(smem + lay.hin);    // [R][C] (attention role) h as the cluster's blocks send it, by slice
    float* sq_in = reinterpret_cast<float*>(smem + lay.sq_in);  // [R][8] and each slice's sum of squares
    uint4* xs = reinterpret_cast<uint4*>(smem + lay.xs);        // [R][XS8]
    float* qkv_in = reinterpret_cast<float*>(smem + lay.qkv_in);  // [R][(G + 2) D]
    float* part_in = reinterpret_cast<float*>(smem + lay.part_in);  // [R][8 shares][G][D + 2]
    float* upart = reinterpret_cast<float*>(smem + lay.upart);      // [R][G][chunks][D + 2]
    uint4* attn = reinterpret_cast<uint4*>(smem + lay.attn);        // [R][OK] bf16
    float* act = reinterpret_cast<float*>(smem + lay.act);          // [R][ni_max]
    float* dred_in = reinterpret_cast<float*>(smem + lay.dred_in);  // [R][8][OC]
    float* red = reinterpret_cast<float*>(smem + lay.red);          // [R][16]
    float4* polled = reinterpret_cast<float4*>(smem + lay.polled);
    float* rope = reinterpret_cast<float*>(smem + lay.rope);  // [R][pairs_block][cos, sin]
    float* norm_a = reinterpret_cast<float*>(smem + lay.norm_a);
    float* norm_m = reinterpret_cast<float*>(smem + lay.norm_m);
    // mbarriers: pushes of qkv values, of attention partials, of down sums; copies of the attention group, of the MLP
    // group; pushes of h's slices (push_slice); LATE_O: the O slice's copy; the K/V rows of a share's passes after the first
    unsigned long long* bars = reinterpret_cast<unsigned long long*>(smem + lay.bars);
    unsigned long long* table = reinterpret_cast<unsigned long long*>(smem + lay.table);  // the layer table
    int* pages = reinterpret_cast<int*>(smem + lay.pages);  // page ids of this block's old keys, from page k0 / P
    unsigned long long* masks = reinterpret_cast<unsigned long long*>(smem + lay.masks);  // [R] the rows' ancestor bits
    uint4* wqkv_s = reinterpret_cast<uint4*>(smem + lay.wqkv);
    uint4* wo_s = reinterpret_cast<uint4*>(smem + lay.wo);
    uint4* wgu_s = reinterpret_cast<uint4*>(smem + lay.wgu);
    uint4* wd_s = reinterpret_cast<uint4*>(smem + lay.wd);
    bf16* kv_s = reinterpret_cast<bf16*>(smem + lay.kv);  // [K, V][keys_max][D]

    // step constants: the rows' tokens, positions and slots (rows past cu_q[1]: padding, as a graph bucket pads them:
    // token 0, position 0, no slot, no tree key), the sequence length, this block's keys and MLP indices, and the layer
    // table; their loads go out together (one round trip), this launch's epoch among them (layer_tag; block 0 counts it
    // up at its end, when every block has read it)
    const int n = s.kv_len[0];
    const int tree_start = R == 1 ? n - 1 : s.tree_start[0];  // keys [tree_start, n): the rows' own (one a live row)
    // (loaded for the rows the arrays hold, beside cu_q, and only then kept or not: no round trip waits for cu_q)
    const int live_rows = s.cu_q[1];  // (<= rows; 0: a step launched past its sequence's end, which must write nothing)
    int position[R], slot[R], token[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const bool held = R == 1 || r < s.rows;
        position[r] = held ? s.positions[r] : 0, slot[r] = held ? s.slots[r] : -1, token[r] = held ? s.tokens[r] : 0;
    }
    unsigned long long mask_entry = R > 1 && t < s.rows ? s.masks[t] : 0ull;
#pragma unroll
    for (int r = 0; r < R; r++)
        if (r >= live_rows) position[r] = 0, slot[r] = -1, token[r] = 0;
    if (t >= live_rows) mask_entry = 0ull;
    unsigned epoch;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(epoch) : "l"(s.epoch));
    const unsigned long long table_entry = t < 8 * s.L ? s.layers[t] : 0;  // (L <= 64: one entry a thread at most)
    launch_stamps(s, epoch, entered, false);
    const int share = (n + CD_CLUSTER - 1) / CD_CLUSTER;
    const int k0 = min(n, (int)rank * share), k1 = min(n, k0 + share), keys = k1 - k0;
    const int old_end = max(k0, min(k1, tree_start));  // keys before the tree's come from the cache
    const int pairs = (G + 2) * D / 2;
    const int my_pairs = attends ? (pairs - (int)rank + CD_CLUSTER - 1) / CD_CLUSTER : 0;
    const int attention_blocks = CD_CLUSTER * s.Hkv, mlp_blocks = gridDim.x - attention_blocks, mlp_clusters = mlp_blocks / CD_CLUSTER;
    const int groups = s.I / 8, b = blockIdx.x - attention_blocks;  // (MLP blocks: b >= 0)
    const int g0 = attends ? 0 : (int)((long long)b * groups / mlp_blocks), g1 = attends ? 0 : (int)((long long)(b + 1) * groups / mlp_blocks);
    const int i0 = 8 * g0, ni = 8 * (g1 - g0);
    // partial sums alternate between two buffers by layer (see the header); each [count][R][C]
    auto opart = [&](int layer) { return s.opart + (long long)(layer % 2) * s.Hkv * R * C; };
    auto dpart = [&](int layer) { return s.dpart + (long long)(layer % 2) * mlp_clusters * R * C; };
    const int first_page = k0 / s.P, page_count = old_end > k0 ? (old_end - 1) / s.P - first_page + 1 : 0;
    // PASSES: a share in passes of keys_max keys, pass p's keys [pass_begin(p), pass_end(p)), its old ones up to
    // pass_old_end(p); otherwise one pass, the share
    const int passes = PASSES ? max(1, (keys + lay.keys_max - 1) / lay.keys_max) : 1;
    auto pass_begin = [&](int pass) { return PASSES ? k0 + pass * lay.keys_max : k0; };
    auto pass_end = [&](int pass) { return PASSES ? min(k1, pass_begin(pass) + lay.keys_max) : k1; };
    auto pass_old_end = [&](int pass) { return PASSES ? max(pass_begin(pass), min(old_end, pass_end(pass))) : old_end; };
    auto pass_old = [&](int pass) { return pass_old_end(pass) - pass_begin(pass); };
    const unsigned attention_bytes = attends ? (my_pairs * 2 * C + (LATE_O ? 0 : lay.OC * lay.OK) + 2 * pass_old(0) * D) * 2 + C * 4 : 0;
    const unsigned mlp_bytes = (ni * 2 * C + C * ni) * 2 + C * 4;
    const unsigned slice_bytes = R * CD_CLUSTER * (C / CD_CLUSTER + 1) * 4;  // a round of slice_partials pushes

    if (t == 0) {
        for (int k = 0; k < Lay::BARS; k++) mbarrier_init(&bars[k], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    if (t < 8 * s.L) table[t] = table_entry;
    if (t < R) masks[t] = mask_entry;
    __syncthreads();  // the table and the mbarriers, before the first copies use them

    // LATE_O: the O slice of layer l, one run of wo's [Hkv, C, G D] copy, counted on bars[6]
    auto issue_o = [&](int l) {
        if (t == CD_THREADS - 2)
            bulk(wo_s, reinterpret_cast<const bf16*>(table[8 * l + 2]) + ((long long)c * C + (int)rank * lay.OC) * lay.OK,
                 lay.OC * lay.OK * 2, &bars[6]);
    };
    // copy group "attention" of layer l (attention clusters): qkv pair rows, O slice (LATE_O: issue_o, later), attn_norm,
    // then the old K/V rows (issue_kv: they need the page ids); a bulk copy per contiguous run, counted on bars[3]
    auto issue_attention = [&](int l) {
        if (!attends || (CD_COPY_ONCE && l > 0)) return;
        if (l >= s.L) {  // after the last layer: block 0's final norm weights (its last hand-over waits for them)
            if (l == s.L && blockIdx.x == 0 && t == 0) {
                expect(&bars[3], C * 4);
                bulk(norm_a, s.final_norm, C * 4, &bars[3]);
            }
            return;
        }
        const unsigned long long* p = table + 8 * l;
        if (t == 0) expect(&bars[3], attention_bytes);
        if (t < my_pairs * 2) {
            const int col = pair_column<D>(s, c, G, (int)rank + CD_CLUSTER * (t / 2)) + (t % 2) * (D / 2);
            bulk(wqkv_s + t * C8, reinterpret_cast<const bf16*>(p[1]) + (long long)col * C, C * 2, &bars[3]);
        }
        if constexpr (!LATE_O)  // the O slice: a run of G D columns from each of its OC rows of wo [C, H D]
            for (int k = t; k < lay.OC; k += CD_THREADS)
                bulk(wo_s + k * (lay.OK / 8), reinterpret_cast<const bf16*>(p[2]) + (long long)((int)rank * lay.OC + k) * (s.H * D) + c * lay.OK,
                     lay.OK * 2, &bars[3]);
        if (t == CD_THREADS - 1) bulk(norm_a, reinterpret_cast<const float*>(p[0]), C * 4, &bars[3]);
    };
    // the old K/V rows of pass `pass` of layer l (a bulk copy per page's run), counted on bar
    auto issue_kv = [&](int l, int pass, unsigned long long* bar) {
        if (!attends || l >= s.L || (CD_COPY_ONCE && l > 0)) return;
        const unsigned long long* p = table + 8 * l;
        const int b0 = pass_begin(pass), b1 = pass_old_end(pass);
        for (int k = t; k < 2 * page_count; k += CD_THREADS) {  // K and V rows of one page: contiguous in the cache
            const int which = k / page_count, pg = k % page_count;
            const int j0 = max(b0, (first_page + pg) * s.P), j1 = min(b1, (first_page + pg + 1) * s.P);
            if (PASSES && j1 <= j0) continue;  // (a page of another pass)
            const bf16* cache = reinterpret_cast<const bf16*>(p[6 + which]);
            bulk(kv_s + ((long long)which * lay.keys_max + j0 - b0) * D, cache + (((long long)pages[pg] * s.Hkv + c) * s.P + j0 % s.P) * D,
                 (j1 - j0) * D * 2, bar);
        }
    };
    // copy group "MLP" of layer l: gate/up rows and the down weight of this block's indices (one run of the group-major
    // copy: [ni / 8][C] uint4), mlp_norm (bars[4])
    auto issue_mlp = [&](int l) {
        if (attends || l >= s.L || (CD_COPY_ONCE && l > 0)) return;
        const unsigned long long* p = table + 8 * l;
        if (t == 0) expect(&bars[4], mlp_bytes);
        if (t < ni * 2) bulk(wgu_s + t * C8, reinterpret_cast<const bf16*>(p[4]) + (long long)((t % 2) * s.I + i0 + t / 2) * C, C * 2, &bars[4]);
        if (t < ni / 8) bulk(wd_s + t * C, reinterpret_cast<const bf16*>(p[5]) + (long long)(i0 + 8 * t) * C, C * 16, &bars[4]);
        if (t == CD_THREADS - 1) bulk(norm_m, reinterpret_cast<const float*>(p[3]), C * 4, &bars[4]);
    };
    issue_attention(0);
    issue_mlp(0);
    // the second round trip: the page ids of this block's old keys (from page k0 / P), the RoPE factors of its pairs (v
    // pairs: identity) at each row's position, the rows' embedding rows (h); the loads first, then the stores
    const int page0 = t < page_count ? s.page_table[first_page + t] : 0;
    const int u_rope = (int)rank + CD_CLUSTER * t, hg_rope = u_rope / (D / 2), d_rope = u_rope % (D / 2);
    const bool rotates = t < my_pairs && hg_rope <= G;
    float cs0[R], sn0[R];
    uint4 e0[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        cs0[r] = rotates ? s.cos_table[(long long)position[r] * (D / 2) + d_rope] : 1.0f;
        sn0[r] = rotates ? s.sin_table[(long long)position[r] * (D / 2) + d_rope] : 0.0f;
        e0[r] = t < C8 ? reinterpret_cast<const uint4*>(s.embed + (long long)token[r] * C)[t] : make_uint4(0, 0, 0, 0);
    }
    if (t < page_count) pages[t] = page0;
    for (int k = t + CD_THREADS; k < page_count; k += CD_THREADS) pages[k] = s.page_table[first_page + k];  // (page size 1)
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (t < my_pairs) rope[(r * lay.pairs_block + t) * 2] = cs0[r], rope[(r * lay.pairs_block + t) * 2 + 1] = sn0[r];  // (my_pairs <= (G + 2) D / 16 <= CD_THREADS)
        if (t < C8) {
            const unsigned* eu = reinterpret_cast<const unsigned*>(&e0[r]);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 f = bf2(eu[k]);
                h[r * C + 8 * t + 2 * k] = f.x, h[r * C + 8 * t + 2 * k + 1] = f.y;
            }
        }
    }
    __syncthreads();  // the page ids
    issue_kv(0, 0, &bars[3]);
    cluster_sync();  // mbarriers initialised before any push reaches them; h and rope visible
    // the LM head may launch now (kernels/pdl.cuh): its blocks take the SMs no cluster holds, and those each block of
    // this launch leaves, and copy their first weight stages there before they wait for this launch to end. (Every
    // block of this launch is resident by now: the trigger counts only once all have given it.)
    pdl_trigger();
    stamp(s, 0);
    // stamps a layer (clock [1 + 7 L + 3 CD_LAUNCH_RING]; notes/scripts/cluster_decode_probe.py): block 0 (attention) after the down sums are
    // added, the qkv pushed, the merge, the O columns written; the first MLP block after the O sums are added, the down
    // partials pushed, the down sums written
#define CD_STAMP(i) stamp(s, 1 + 7 * l + (i), (i) < 4 ? 0 : CD_CLUSTER * s.Hkv)

    unsigned kv_phase = 0;  // PASSES: the pass mbarrier's phases completed (the passes after the first; a count that varies by block)
    for (int l = 0; l < s.L; l++) {
        const unsigned long long* p = table + 8 * l;
        const unsigned parity = l & 1;
        if (attends) {
            bf16* k_cache = reinterpret_cast<bf16*>(p[6]);
            bf16* v_cache = reinterpret_cast<bf16*>(p[7]);
            if (l > 0) {  // the layer before's down sums into h (its O sums went in while the MLP clusters worked), by slice
                if (t == 0) expect(&bars[5], slice_bytes);
                slice_partials<R>(h, dpart(l - 1), mlp_clusters, C, rank, polled, layer_tag(epoch, l - 1), true, hin, sq_in, &bars[5]);
                mbarrier_wait<true>(&bars[5], (l - 1) & 1);
            }
            CD_STAMP(0);
            if (!CD_COPY_ONCE || l == 0) mbarrier_wait<true>(&bars[3], parity);  // this layer's attention copies
            if (t == 0) {
                expect(&bars[0], R * (G + 2) * D * 4);
                expect(&bars[1], R * CD_CLUSTER * G * (D + 2) * 4);
            }
            if (l == 0)
#pragma unroll
                for (int r = 0; r < R; r++) stage_norm(h + r * C, norm_a, xs + r * XS8, red + r * CD_WARPS, C, s.eps);  // (no add before it)
            else
                stage_norm_rows<R>(hin, norm_a, xs, XS8, sq_in, C, s.eps);
            // qkv: half-warp v (of 32) takes the block's pairs v, v + 32, ...; its 16 lanes the 16-byte chunks of both
            // rows (20 pairs on the default model: one round, where a warp a pair took two for some warps), each weight
            // chunk against the R rows' inputs. Every lane runs the loop to its warp's last round, the shuffles
            // unconditional.
            const int half = lane / 16, hl = lane % 16;
            for (int pr0 = 2 * warp; pr0 < my_pairs; pr0 += 2 * CD_WARPS) {
                const int pr = pr0 + half;
                const bool live = pr < my_pairs;
                const uint4* w0 = wqkv_s + (live ? pr : 0) * 2 * C8;
                float a0[R], a1[R];
#pragma unroll
                for (int r = 0; r < R; r++) a0[r] = 0.0f, a1[r] = 0.0f;
                if (live) pair_dots<R>(w0, xs, XS8, C8, hl, 16, a0, a1);
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int o = 8; o > 0; o >>= 1) a0[r] += __shfl_xor_sync(0xffffffff, a0[r], o), a1[r] += __shfl_xor_sync(0xffffffff, a1[r], o);
                if (!live) continue;
                const int u = (int)rank + CD_CLUSTER * pr, hg = u / (D / 2), d = u % (D / 2);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float cs = rope[(r * lay.pairs_block + pr) * 2], sn = rope[(r * lay.pairs_block + pr) * 2 + 1];
                    float y1 = a0[r] * cs - a1[r] * sn, y2 = a1[r] * cs + a0[r] * sn;
                    if (hg >= G) {  // key or value: bf16 in the cache, and as the attention reads it
                        const bf16 b1 = __float2bfloat16_rn(y1), b2 = __float2bfloat16_rn(y2);
                        y1 = __bfloat162float(b1), y2 = __bfloat162float(b2);
                        if (hl == 0 && slot[r] >= 0) {
                            bf16* cache = hg == G ? k_cache : v_cache;
                            bf16* dst = cache + (((long long)(slot[r] / s.P) * s.Hkv + c) * s.P + slot[r] % s.P) * D + d;
                            dst[0] = b1, dst[D / 2] = b2;
                        }
                    }
                    push(qkv_in + (r * (G + 2) + hg) * D + d + (hl / CD_CLUSTER) * (D / 2), &bars[0], hl % CD_CLUSTER, hl < CD_CLUSTER ? y1 : y2);
                }
            }
            CD_STAMP(1);
            mbarrier_wait<true>(&bars[0], parity);
            // the tree's keys and values (key tree_start + r: row r's) into the pass of the share that holds them
            auto write_fresh = [&](int pass) {
                const int b0 = pass_begin(pass), j0 = max(b0, tree_start), j1 = pass_end(pass);
                for (int k = t; k < 2 * D * (j1 - j0); k += CD_THREADS) {
                    const int j = j0 + k / (2 * D), which = k / D % 2, e = k % D;
                    kv_s[((long long)which * lay.keys_max + (j - b0)) * D + e] =
                        __float2bfloat16_rn(qkv_in[((j - tree_start) * (G + 2) + G + which) * D + e]);
                }
            };
            write_fresh(0);
            __syncthreads();
            if constexpr (LATE_O) {  // every warp's qkv products are done with wqkv_s: the O slice into it, while attention runs
                if (!CD_COPY_ONCE || l == 0) {
                    if (t == 0) {
                        fence_async_shared();  // the generic reads of the region before the copy engine's writes
                        expect(&bars[6], lay.OC * lay.OK * 2);
                    }
                    __syncthreads();
                    issue_o(l);
                }
            }
            // the share's partial (running max M, exp sum L, unnormalised o) of row r's query head hg, from its warp to all
            // 8 blocks
            auto push_share = [&](int r, int hg, float M, float Lsum, const float (&o)[D / 32]) {
                float* dst = part_in + ((r * CD_CLUSTER + (int)rank) * G + hg) * (D + 2);
                for (int k = 0; k < CD_CLUSTER; k++) {
#pragma unroll
                    for (int e = 0; e < D / 32; e += 2) push2(dst + (D / 32) * lane + e, &bars[1], k, o[e], o[e + 1]);
                    if (lane == 0) push2(dst + D, &bars[1], k, M, Lsum);
                }
            };
            // attention units: (query head hg, chunk of 32 keys), the R rows' queries of that head at once (the key row read
            // once, R independent chains); lane = key; then lanes own dims 2 lane .. (D = 64). Row r sees key j <
            // tree_start, and a tree key j where bit j - tree_start of its mask is set.
            // A share of one chunk (up to 256 keys in all) is its unit's partial: pushed straight from the unit (the
            // merge below would weigh it by e^0 = 1: the same bits), with no block barrier and no pass through upart
            const int chunks = (keys + 31) / 32;
            const bool direct = chunks == 1;
            for (int pass = 0; pass < passes; pass++) {
                if (PASSES && pass > 0) {  // every warp is done with the pass before: this pass's old rows into kv_s, then its tree rows
                    __syncthreads();
                    if (t == 0) {
                        fence_async_shared();  // the generic reads of kv_s before the copy engine's writes
                        expect(&bars[Lay::PASS_BAR], 2 * pass_old(pass) * D * 2);
                    }
                    __syncthreads();
                    issue_kv(l, pass, &bars[Lay::PASS_BAR]);
                    write_fresh(pass);  // (rows past old_end: no copy writes them)
                    mbarrier_wait<true>(&bars[Lay::PASS_BAR], kv_phase & 1);
                    kv_phase++;
                    __syncthreads();  // the tree rows
                }
                const int b0 = pass_begin(pass), pass_keys = pass_end(pass) - b0;
                const int pass_chunks = (pass_keys + 31) / 32, c0 = PASSES ? pass * (lay.keys_max / 32) : 0;
                for (int u = warp; u < G * pass_chunks; u += CD_WARPS) {
                    const int hg = u / pass_chunks, ch = u % pass_chunks, j = 32 * ch + lane;
                    const bool valid = j < pass_keys;
                    const int key = b0 + j;
                    const uint4* krow = reinterpret_cast<const uint4*>(kv_s + (long long)(valid ? j : 0) * D);
                    float sc[R];
#pragma unroll
                    for (int r = 0; r < R; r++) sc[r] = 0.0f;
                    // lane j reads its row's 16-byte chunks from chunk j on (rows are 128 or 256 bytes: lanes reading the
                    // same chunk of consecutive rows would all hit one bank group); the sum order is then the lane's
#pragma unroll
                    for (int e0 = 0; e0 < D / 8; e0++) {
                        const int e = (e0 + lane) % (D / 8);
                        float kf[8];
                        unpack8(krow[e], kf);
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            const float* q = qkv_in + (r * (G + 2) + hg) * D + 8 * e;
#pragma unroll
                            for (int k = 0; k < 8; k++) sc[r] = fmaf(q[k], kf[k], sc[r]);
                        }
                    }
                    float pk[R], m[R], lsum[R], o[R][D / 32];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const bool seen = valid && (R == 1 || key < tree_start || (masks[r] >> (key - tree_start) & 1ull));
                        sc[r] = seen ? sc[r] * s.scale : CD_NEG_INF;
                        m[r] = warp_max(sc[r]);
                        pk[r] = seen ? __expf(sc[r] - m[r]) : 0.0f;
                        lsum[r] = warp_sum(pk[r]);
#pragma unroll
                        for (int e = 0; e < D / 32; e++) o[r][e] = 0.0f;
                    }
                    const int count = min(32, pass_keys - 32 * ch);
                    for (int kk = 0; kk < count; kk++) {
                        const bf16* vrow = kv_s + ((long long)lay.keys_max + 32 * ch + kk) * D;
                        float v[D / 32];
                        if constexpr (D == 64) {
                            const float2 a = bf2(reinterpret_cast<const unsigned*>(vrow)[lane]);
                            v[0] = a.x, v[1] = a.y;
                        } else {
                            const uint2 vv = reinterpret_cast<const uint2*>(vrow)[lane];
                            const float2 a = bf2(vv.x), b = bf2(vv.y);
                            v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
                        }
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            const float w = __shfl_sync(0xffffffff, pk[r], kk);
#pragma unroll
                            for (int e = 0; e < D / 32; e++) o[r][e] = fmaf(w, v[e], o[r][e]);
                        }
                    }
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        if (direct) {
                            push_share(r, hg, m[r], lsum[r], o[r]);
                            continue;
                        }
                        float* up = upart + ((r * G + hg) * chunks + c0 + ch) * (D + 2);
#pragma unroll
                        for (int e = 0; e < D / 32; e++) up[(D / 32) * lane + e] = o[r][e];
                        if (lane == 0) up[D] = m[r], up[D + 1] = lsum[r];
                    }
                }
            }
            if (!direct) __syncthreads();
            // the share's partial per (row, query head) (its chunks merged; a share with no keys: M = -inf, L = 0), pushed
            for (int rh = warp; rh < R * G && !direct; rh += CD_WARPS) {
                float M, o[D / 32];
                const float Lsum = merge_partials<D>(upart + rh * chunks * (D + 2), chunks, D + 2, M, o);
                const int2 rhg = row_split<R>(rh, G);
                push_share(rhg.x, rhg.y, M, Lsum, o);
            }
            mbarrier_wait<true>(&bars[1], parity);
            // merge the 8 shares of each (row, query head) (rank order): attn = bf16(sum w_r o_r / sum w_r l_r) (a padded row
            // that sees no key: 0)
            for (int rh = warp; rh < R * G; rh += CD_WARPS) {
                const int2 rhg = row_split<R>(rh, G);
                const int r = rhg.x, hg = rhg.y;
                float M, o[D / 32];
                const float Lsum = merge_partials<D>(part_in + (r * CD_CLUSTER * G + hg) * (D + 2), CD_CLUSTER, G * (D + 2), M, o);
                __nv_bfloat16* a = reinterpret_cast<__nv_bfloat16*>(attn) + r * lay.OK + hg * D + (D / 32) * lane;
#pragma unroll
                for (int e = 0; e < D / 32; e++) a[e] = __float2bfloat16_rn(R == 1 || Lsum > 0.0f ? o[e] / Lsum : 0.0f);
            }
            __syncthreads();
            CD_STAMP(2);
            if constexpr (LATE_O)
                if (!CD_COPY_ONCE || l == 0) mbarrier_wait<true>(&bars[6], parity);  // the O slice, copied during attention
            // O partial: columns rank * OC + oc, K = this cluster's G D attention values, of each row
            const int OK8 = lay.OK / 8;
            // (8 lanes a column, 4 columns a warp at once: K is short, 24 chunks on the default model; a warp a column
            // took 1.43 µs, this 0.77, notes/cluster_decode_ab_h100_stop27.log)
            for (int oc0 = 4 * warp; oc0 < lay.OC; oc0 += 4 * CD_WARPS) {
                const int oc = oc0 + lane / 8;
                float acc[R];
#pragma unroll
                for (int r = 0; r < R; r++) acc[r] = 0.0f;
                if (oc < lay.OC)
                    for (int ch = lane % 8; ch < OK8; ch += 8) {
                        float wv[8];
                        unpack8(wo_s[oc * OK8 + ch], wv);
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            float x[8];
                            unpack8(attn[r * OK8 + ch], x);
                            acc[r] = dot8f(wv, x, acc[r]);
                        }
                    }
#pragma unroll
                for (int r = 0; r < R; r++) {
                    acc[r] += __shfl_xor_sync(0xffffffff, acc[r], 4);
                    acc[r] += __shfl_xor_sync(0xffffffff, acc[r], 2);
                    acc[r] += __shfl_xor_sync(0xffffffff, acc[r], 1);
                    if (lane % 8 == 0 && oc < lay.OC)
                        store_tagged(opart(l) + ((long long)c * R + r) * C + (int)rank * lay.OC + oc, acc[r], layer_tag(epoch, l));
                }
            }
            CD_STAMP(3);
            __syncthreads();  // the attention group's buffers are free
            // off the critical path: the layer's O sums, into this block's slice of h (every block keeps only its slice
            // current; hin, which stage_norm read, is not overwritten before this block's O columns went out)
            slice_partials<R>(h, opart(l), s.Hkv, C, rank, polled, layer_tag(epoch, l), false, hin, sq_in, &bars[5]);
            // the next layer's copies, while the MLP clusters work. After the add, which waits as long as the MLP
            // clusters' own hand-over does: issued before it, they held that up (8.59 -> 8.18 µs a layer at 100 keys
            // without them there, H100, notes/cluster_decode_copy_late_h100_stop29.log)
            issue_attention(l + 1);
            issue_kv(l + 1, 0, &bars[3]);
            continue;
        }
        // MLP clusters: the layer's O sums into h (the layer before's down sums went in while the attention clusters
        // worked), by slice: an MLP block keeps only its slice of h current
        if (t == 0) {
            expect(&bars[5], slice_bytes);
            expect(&bars[2], R * CD_CLUSTER * lay.OC * 4);
        }
        slice_partials<R>(h, opart(l), s.Hkv, C, rank, polled, layer_tag(epoch, l), true, hin, sq_in, &bars[5]);
        mbarrier_wait<true>(&bars[5], parity);
        CD_STAMP(4);
        if (!CD_COPY_ONCE || l == 0) mbarrier_wait<true>(&bars[4], parity);  // this layer's MLP copies
        // (the slices of the next layer come after this block's down sums: hin is not overwritten)
        stage_norm_rows<R>(hin, norm_m, xs, XS8, sq_in, C, s.eps);
        // gate/up: warp w takes index i0 + w (and + 16, ...), each weight chunk against the R rows' inputs
        for (int li = warp; li < ni; li += CD_WARPS) {
            const uint4* w0 = wgu_s + li * 2 * C8;
            float a0[R], a1[R];
#pragma unroll
            for (int r = 0; r < R; r++) a0[r] = 0.0f, a1[r] = 0.0f;
            pair_dots<R>(w0, xs, XS8, C8, lane, 32, a0, a1);
#pragma unroll
            for (int r = 0; r < R; r++) {
                a0[r] = warp_sum(a0[r]), a1[r] = warp_sum(a1[r]);
                if (lane == 0) act[r * lay.ni_max + li] = round_bf16(a0[r] / (1.0f + __expf(-a0[r])) * a1[r]);
            }
        }
        __syncthreads();
        // down: thread t takes columns 4t .. 4t + 3 over the block's indices, of each row, pushed to the block that sums
        // that slice. (Two rows a thread over twice the threads was level: notes/cluster_tree_h200_stop51.log.)
        if (t < C / 4) {
            float y[R][4];
#pragma unroll
            for (int r = 0; r < R; r++) y[r][0] = y[r][1] = y[r][2] = y[r][3] = 0.0f;
            const uint4* wt = wd_s + 4 * t;  // group g's weights of columns 4t .. 4t + 3: wt[g C + q]
            for (int g = 0; g < ni / 8; g++, wt += C) {
                float a[R][8];
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int e = 0; e < 8; e++) a[r][e] = act[r * lay.ni_max + 8 * g + e];
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    float wf[8];
                    unpack8(wt[q], wf);
#pragma unroll
                    for (int r = 0; r < R; r++)
#pragma unroll
                        for (int k = 0; k < 8; k++) y[r][q] = fmaf(a[r][k], wf[k], y[r][q]);
                }
            }
            const int col = 4 * t, dest = col / lay.OC;
#pragma unroll
            for (int r = 0; r < R; r++)
                push4(dred_in + (r * CD_CLUSTER + (int)rank) * lay.OC + col % lay.OC, &bars[2], dest, make_float4(y[r][0], y[r][1], y[r][2], y[r][3]));
        }
        CD_STAMP(5);
        mbarrier_wait<true>(&bars[2], parity);
        for (int k = t; k < R * lay.OC; k += CD_THREADS) {
            const int2 rk = row_split<R>(k, lay.OC);
            const int r = rk.x, kk = rk.y;
            float sum = 0.0f;
            for (int q = 0; q < CD_CLUSTER; q++) sum += dred_in[(r * CD_CLUSTER + q) * lay.OC + kk];
            store_tagged(dpart(l) + ((long long)(cluster - s.Hkv) * R + r) * C + (int)rank * lay.OC + kk, sum, layer_tag(epoch, l));
        }
        CD_STAMP(6);
        __syncthreads();  // the MLP group's buffers are free
        // off the critical path: the layer's down sums, into this block's slice of h; then the next layer's copies, while
        // the attention clusters work (after the add, as above: out of the attention clusters' hand-over)
        slice_partials<R>(h, dpart(l), mlp_clusters, C, rank, polled, layer_tag(epoch, l), false, hin, sq_in, &bars[5]);
        issue_mlp(l + 1);
    }
#undef CD_STAMP
    if (blockIdx.x < CD_CLUSTER) {  // the last layer's sums, by slice in the first cluster: block 0 writes the residual
                                    // stream and its final norm (the LM head's input) of each row
        if (t == 0) expect(&bars[5], slice_bytes);
        slice_partials<R>(h, dpart(s.L - 1), mlp_clusters, C, rank, polled, layer_tag(epoch, s.L - 1), true, hin, sq_in, &bars[5]);
        mbarrier_wait<true>(&bars[5], (s.L - 1) & 1);
        if (blockIdx.x == 0) {
            if (!CD_COPY_ONCE) mbarrier_wait<true>(&bars[3], s.L & 1);  // the final norm's weights, in norm_a
            for (int r = 0; r < R && (R == 1 || r < s.rows); r++) {
                stage_norm(hin + r * C, CD_COPY_ONCE ? s.final_norm : norm_a, xs + r * XS8, sq_in + r * CD_CLUSTER, C, s.eps, true, CD_CLUSTER);
                for (int k = t; k < C8; k += CD_THREADS) reinterpret_cast<uint4*>(s.normed)[r * C8 + k] = xs[r * XS8 + k];
                for (int k = t; k < C / 4; k += CD_THREADS)
                    reinterpret_cast<float4*>(s.resid)[r * (C / 4) + k] = reinterpret_cast<const float4*>(hin + r * C)[k];
            }
            // every block has read the epoch: each block's values reach the slices just added, through the partial sums
            // and the slices sent within clusters
            if (t == 0) asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(s.epoch), "r"(epoch + 1) : "memory");
        }
    }
    cluster_sync();  // no block leaves while a cluster peer may still address its shared memory
    launch_stamps(s, epoch, globaltimer(), true);
}

}  // namespace cd

// cluster_decode_r{R}_d{D}: R rows at most (a one-token decode step: R = 1; a tree step of rows <= R nodes);
// cluster_decode_passes_r{R}_d{D}: the same, a share's K/V in passes of pass_keys keys
#define CLUSTER_DECODE_AS(R, D, NAME, PASSES)                                                                           \
    extern "C" __global__ void __cluster_dims__(CD_CLUSTER, 1, 1) __launch_bounds__(CD_THREADS, 1) NAME(               \
        const unsigned long long* layers, int L, const int* tokens, const bf16* embed, const float* final_norm,         \
        bf16* normed, float* resid, const int* positions, const int* slots, const int* kv_len, const int* page_table, \
        const unsigned long long* masks, const int* tree_start, const int* cu_q, int rows, const float* cos_table, const float* sin_table, \
        unsigned long long* opart, unsigned long long* dpart, unsigned* epoch, int C, int H, int Hkv, int I, int P, int span, int pass_keys, \
        float eps, float scale, unsigned long long* clock) {                                                            \
        cd::Step s{layers, L, tokens, embed, final_norm, normed, resid, positions, slots, kv_len, page_table, masks,   \
                   tree_start, cu_q, rows, cos_table, sin_table, opart, dpart, epoch, C, H, Hkv, I, P, span, pass_keys, eps, scale, clock}; \
        cd::cluster_decode_body<D, R, PASSES>(s);                                                                       \
    }
#define CLUSTER_DECODE(R, D) CLUSTER_DECODE_AS(R, D, cluster_decode_r##R##_d##D, false)
#define CLUSTER_DECODE_PASSES(R, D) CLUSTER_DECODE_AS(R, D, cluster_decode_passes_r##R##_d##D, true)
