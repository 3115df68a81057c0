// The pieces of paged tree attention that its tensor-core kernels (attention_mma.cu, attention_wgmma.cu) share, and
// exp2_fast, which the split merge (attention.cu) uses too: the product, the visibility rules and the arguments are
// described in attention.cu; the packing of query rows and the fragments in attention_mma.cu. Python inlines this
// header into each kernel's source (backends/cuda_backend.kernel_source).
#pragma once
#include <cuda_bf16.h>
#include "ampere.cuh"

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// 16 bytes global -> shared without passing through registers; zero-filled when !valid
__device__ __forceinline__ void copy16_async(__nv_bfloat16* shared, const __nv_bfloat16* global, bool valid) {
    cp_async16((unsigned)__cvta_generic_to_shared(shared), global, valid ? 16 : 0);
}

// 2^x on the SFU (ex2.approx: -inf -> +0); the tensor-core kernel keeps scores in base 2 (q is pre-scaled by
// log2 e), which saves the multiply __expf does before its own ex2
__device__ __forceinline__ float exp2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// ---- pieces both tensor-core kernels share: a thread owns rows g and g + 8 of its warp's 16 packed rows

// Block x of the grid -> (sequence b, its row tile `tile` of `rows_per_block` rows); false past the last one.
__device__ __forceinline__ bool locate_row_tile(const int* __restrict__ cu_q, int B, int G, int rows_per_block, int& b, int& tile) {
    tile = blockIdx.x;
    for (b = 0; b < B; b++) {
        const int tiles_b = ((cu_q[b + 1] - cu_q[b]) * G + rows_per_block - 1) / rows_per_block;
        if (tile < tiles_b) return true;
        tile -= tiles_b;
    }
    return false;
}

// A thread's two packed rows: node r / G, head kv_head G + r % G (rows past `rows` read and write nothing)
struct QueryRows {
    bool valid0, valid1;
    int node0, node1;
    long long qrow0, qrow1;  // (token, head) rows of q and out
    unsigned long long mask0, mask1;
    __device__ __forceinline__ QueryRows(int r0, int rows, int G, int kv_head, int H, int first_token,
                                         const unsigned long long* __restrict__ masks) {
        const int r1 = r0 + 8;
        valid0 = r0 < rows, valid1 = r1 < rows;
        node0 = valid0 ? r0 / G : 0, node1 = valid1 ? r1 / G : 0;
        qrow0 = (long long)(first_token + node0) * H + kv_head * G + (valid0 ? r0 % G : 0);
        qrow1 = (long long)(first_token + node1) * H + kv_head * G + (valid1 ? r1 % G : 0);
        mask0 = masks[first_token + node0], mask1 = masks[first_token + node1];
    }
};

// q rows (fp32) scaled by scale log2 e, as the A fragments of D / 16 k-steps
template <int D>
__device__ __forceinline__ void load_query(const float* __restrict__ q, const QueryRows& r, float scale, int t, unsigned (&qa)[D / 16][4]) {
    scale *= 1.4426950408889634f;  // log2 e: softmax in base 2
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        const int d = ks * 16 + 2 * t;
        const float2 x00 = r.valid0 ? *reinterpret_cast<const float2*>(q + r.qrow0 * D + d) : make_float2(0, 0);
        const float2 x10 = r.valid1 ? *reinterpret_cast<const float2*>(q + r.qrow1 * D + d) : make_float2(0, 0);
        const float2 x01 = r.valid0 ? *reinterpret_cast<const float2*>(q + r.qrow0 * D + d + 8) : make_float2(0, 0);
        const float2 x11 = r.valid1 ? *reinterpret_cast<const float2*>(q + r.qrow1 * D + d + 8) : make_float2(0, 0);
        qa[ks][0] = pack_bf16x2(x00.x * scale, x00.y * scale);
        qa[ks][1] = pack_bf16x2(x10.x * scale, x10.y * scale);
        qa[ks][2] = pack_bf16x2(x01.x * scale, x01.y * scale);
        qa[ks][3] = pack_bf16x2(x11.x * scale, x11.y * scale);
    }
}

// -inf where a key is not visible. Only tiles reaching past the keys every row sees (or past the sequence end) do
// any work: a tree's rows all see the keys before tree_start, a causal chunk's rows those before its first token,
// S - T (before stop 59 a causal row masked every tile: 8B heads, B = 16, T = 64 chunks at 8k keys 292.6 -> 266-272
// µs on an H200, notes/attention_causal_mask_h200_stop59.log). CAUSAL_SKIP false keeps that older rule, the code of
// attention_wgmma.cu's _tree instances (steps without causal rows, where the two rules mask the same tiles): in the
// wgmma kernel's loop every form of the new rule slowed the tree rows (B = 1, T = 64, 8k keys ~27 -> ~29 µs).
template <int NT, bool CAUSAL_SKIP = true>
__device__ __forceinline__ void mask_scores(float (&s)[NT][4], int key0, int S, int start, int is_causal, int T, const QueryRows& r, int t) {
    if constexpr (CAUSAL_SKIP) {
        const int seen_by_all = is_causal ? S - T : start;
        if (key0 + NT * 8 <= seen_by_all && key0 + NT * 8 <= S) return;
    } else if (!(is_causal || key0 + NT * 8 > start || key0 + NT * 8 > S)) return;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = key0 + nt * 8 + 2 * t + (e & 1), node = e < 2 ? r.node0 : r.node1;
            const unsigned long long mask = e < 2 ? r.mask0 : r.mask1;
            const bool visible = key < S && (is_causal ? key <= S - T + node : (key < start || ((mask >> (key - start)) & 1ull)));
            if (!visible) s[nt][e] = -__int_as_float(0x7f800000);
        }
}

// A C fragment's row lives in the 4 lanes of a quad (lane = 4 g + t): its max / sum over those lanes
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffff, v, 1);
    return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// Online softmax over one key tile (base 2), rows g (elements 0, 1) and g + 8 (elements 2, 3); a row's 4
// lanes share it. s becomes the tile's unnormalised weights; m and l move on; corr scales the old O.
template <int NT>
__device__ __forceinline__ void softmax_tile(float (&s)[NT][4], float& m0, float& m1, float& l0, float& l1, float& corr0, float& corr1) {
    const float NEG_INF = -__int_as_float(0x7f800000);
    float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
    mx0 = quad_max(mx0), mx1 = quad_max(mx1);
    const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
    const float base0 = new0 == NEG_INF ? 0.0f : new0, base1 = new1 == NEG_INF ? 0.0f : new1;
    corr0 = exp2_fast(m0 - base0), corr1 = exp2_fast(m1 - base1);
    m0 = new0, m1 = new1;
    l0 *= corr0, l1 *= corr1;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        s[nt][0] = exp2_fast(s[nt][0] - base0);
        s[nt][1] = exp2_fast(s[nt][1] - base0);
        s[nt][2] = exp2_fast(s[nt][2] - base1);
        s[nt][3] = exp2_fast(s[nt][3] - base1);
        l0 += s[nt][0] + s[nt][1];
        l1 += s[nt][2] + s[nt][3];
    }
}

template <int DT>
__device__ __forceinline__ void rescale(float (&acc)[DT][4], float corr0, float corr1) {
    if (!__any_sync(0xffffffff, corr0 != 1.0f || corr1 != 1.0f)) return;  // once the maxima settle, tiles skip this
#pragma unroll
    for (int dt = 0; dt < DT; dt++) acc[dt][0] *= corr0, acc[dt][1] *= corr0, acc[dt][2] *= corr1, acc[dt][3] *= corr1;
}

// P's A fragment for k-step kk (keys 16 kk ..): the C fragments of S n-tiles 2kk, 2kk+1
template <int NT>
__device__ __forceinline__ void pack_p(const float (&s)[NT][4], int kk, unsigned (&pa)[4]) {
    pa[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// One split: normalise and write out (bf16) directly; several: the unnormalised partial (o, m, l) for the merge
template <int D>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 8][4], float m0, float m1, float l0, float l1, const QueryRows& r,
                                           int t, int split, int splits, float* __restrict__ o_part, float* __restrict__ ml_part,
                                           __nv_bfloat16* __restrict__ out, int N, int H) {
    l0 = quad_sum(l0), l1 = quad_sum(l1);
    if (splits == 1) {
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            const int d = dt * 8 + 2 * t;
            if (r.valid0) *reinterpret_cast<__nv_bfloat162*>(out + r.qrow0 * D + d) = __floats2bfloat162_rn(acc[dt][0] / l0, acc[dt][1] / l0);
            if (r.valid1) *reinterpret_cast<__nv_bfloat162*>(out + r.qrow1 * D + d) = __floats2bfloat162_rn(acc[dt][2] / l1, acc[dt][3] / l1);
        }
        return;
    }
    float* o = o_part + (long long)split * N * H * D;
    float* ml = ml_part + (long long)split * N * H * 2;
    // a row that saw no key here (l = 0) has weight 0 in attention_merge, which then skips its o: not written
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int d = dt * 8 + 2 * t;
        if (r.valid0 && l0 > 0.0f) *reinterpret_cast<float2*>(o + r.qrow0 * D + d) = make_float2(acc[dt][0], acc[dt][1]);
        if (r.valid1 && l1 > 0.0f) *reinterpret_cast<float2*>(o + r.qrow1 * D + d) = make_float2(acc[dt][2], acc[dt][3]);
    }
    if (t == 0 && r.valid0) ml[r.qrow0 * 2] = m0, ml[r.qrow0 * 2 + 1] = l0;
    if (t == 0 && r.valid1) ml[r.qrow1 * 2] = m1, ml[r.qrow1 * 2 + 1] = l1;
}
// A share with no key tile (past the row tile's last key: the split count follows the context bucket, not
// kv_len): only (m, l) = (-inf, 0) for its rows, which attention_merge weighs 0 without reading their o
__device__ __forceinline__ void store_empty_share(const QueryRows& r, int t, float* __restrict__ ml_part, int N, int H) {
    float* ml = ml_part + (long long)blockIdx.z * N * H * 2;
    const float NEG_INF = -__int_as_float(0x7f800000);
    if (t == 0 && r.valid0) ml[r.qrow0 * 2] = NEG_INF, ml[r.qrow0 * 2 + 1] = 0.0f;
    if (t == 0 && r.valid1) ml[r.qrow1 * 2] = NEG_INF, ml[r.qrow1 * 2 + 1] = 0.0f;
}

// The key tiles of this block's split: [tile_begin, tile_begin + tile_count) of KEYS keys each. Causal rows
// see keys up to their own position, tree rows up to kv_len.
__device__ __forceinline__ void split_tiles(int S, int T, int G, int is_causal, int last_row, int keys, int& tile_begin, int& tile_count) {
    const int last_key = is_causal ? min(S - 1, S - T + last_row / G) : S - 1;
    const int key_tiles = last_key / keys + 1, per_split = (key_tiles + gridDim.z - 1) / gridDim.z;
    tile_begin = blockIdx.z * per_split;
    tile_count = max(0, min(key_tiles, tile_begin + per_split) - tile_begin);
}

// How many of a share's first tiles (at most `limit`) lie wholly before tree_start: a step writes K/V only at
// positions from tree_start on, so those may be copied before the wait for the previous kernel (kernels/pdl.cuh).
__device__ __forceinline__ int tiles_before_tree(int tile_begin, int tile_count, int keys, int start, int limit) {
    int early = 0;
    while (early < limit && early < tile_count && (tile_begin + early + 1) * keys <= start) early++;
    return early;
}
