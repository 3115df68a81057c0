// Paged tree attention: prefill chunks (causal), decode (T = 1) and tree verification in one kernel.
//
//   o[n, h, :] = sum_j softmax_j(q[n, h, :] . k[j, h / G, :] * scale  |  visible(n, j)) v[j, h / G, :]
//
// Query row n belongs to sequence b with cu_q[b] <= n < cu_q[b+1]; i = n - cu_q[b], T = cu_q[b+1] - cu_q[b].
// Keys j = 0 .. kv_len[b]-1 live at page page_tables[b, j / P], row j % P.
//   causal[b] = 1: visible iff j <= kv_len[b] - T + i            (prefill chunk: queries are the last T positions)
//   causal[b] = 0: visible iff j < tree_start[b], or bit (j - tree_start[b]) of masks[n] is set
//                  (tree node j - tree_start sits at position tree_start + node: the ancestor bits are
//                   applied inside the pages that hold tree tokens; pages before tree_start need no mask)
//
// Arguments: q float [N, H, D]; k_cache, v_cache store_t [NP, Hkv, P, D]; cu_q int32 [B+1];
//   kv_len, tree_start, causal int32 [B]; masks uint64 [N]; page_tables int32 [B, max_pages];
//   out store_t [N, H * D] (the O projection's input).  D <= 256 and a multiple of 32. Rows n >= cu_q[B] (padding of a captured
//   graph's bucket) are written as zeros.
// Launch: grid (N, H), block 32: one warp per (query row, head); lane l owns dims l, l + 32, ...
//   Online softmax in fp32 (running max m, denominator l, accumulator acc).
// The exact CUDA-core version (fp32 pages and head dims other than 64 / 128); bf16 pages of D = 64 / 128
// take the tensor-core version below.
// NumPy reference: numpy_backend.attention. Tests: tests/test_cuda_kernels.py.
#include "storage.cuh"
#include "pdl.cuh"
#include "ampere.cuh"
#include "hopper.cuh"
#include "cluster.cuh"

#define MAX_DIMS_PER_LANE 8

extern "C" __global__ void tree_attention(
    const float* __restrict__ q, const store_t* __restrict__ k_cache, const store_t* __restrict__ v_cache,
    const int* __restrict__ cu_q, const int* __restrict__ kv_len, const int* __restrict__ tree_start,
    const unsigned long long* __restrict__ masks, const int* __restrict__ causal,
    const int* __restrict__ page_tables, int max_pages, int B,
    store_t* __restrict__ out, int H, int Hkv, int P, int D, float scale) {
    pdl_wait();
    int n = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    if (n >= cu_q[B]) {  // a padded row of a captured bucket: defined output, no reads
        for (int d = lane; d < D; d += 32) out[((long long)n * H + h) * D + d] = to_store(0.0f);
        return;
    }
    int b = 0;
    while (b + 1 < B && cu_q[b + 1] <= n) b++;
    int T = cu_q[b + 1] - cu_q[b], i = n - cu_q[b];
    int S = kv_len[b], start = tree_start[b], is_causal = causal[b];
    unsigned long long mask = masks[n];
    int kv_head = h / (H / Hkv), per_lane = D / 32;
    const int* table = page_tables + (long long)b * max_pages;

    float query[MAX_DIMS_PER_LANE], acc[MAX_DIMS_PER_LANE];
    for (int e = 0; e < per_lane; e++) {
        query[e] = q[((long long)n * H + h) * D + lane + 32 * e] * scale;
        acc[e] = 0.0f;
    }
    float running_max = -__int_as_float(0x7f800000), denominator = 0.0f;
    int last = is_causal ? S - T + i : S - 1;
    for (int j = 0; j <= last; j++) {
        if (!is_causal && j >= start && !((mask >> (j - start)) & 1ull)) continue;
        long long base = (((long long)table[j / P] * Hkv + kv_head) * P + j % P) * D;
        float dot = 0.0f;
        for (int e = 0; e < per_lane; e++) dot += query[e] * load_f(k_cache + base + lane + 32 * e);
        for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, offset);
        float new_max = fmaxf(running_max, dot);
        float correction = __expf(running_max - new_max), weight = __expf(dot - new_max);
        denominator = denominator * correction + weight;
        for (int e = 0; e < per_lane; e++) acc[e] = acc[e] * correction + weight * load_f(v_cache + base + lane + 32 * e);
        running_max = new_max;
    }
    for (int e = 0; e < per_lane; e++) out[((long long)n * H + h) * D + lane + 32 * e] = to_store(acc[e] / denominator);
}

// ------------------------------------------------------------------------------------------------
// Tensor-core version (bf16 pages): the G query heads of all T tree nodes of one sequence that share a
// KV head are the rows of one tile (GQA packing: row r = node r / G, head kv_head * G + r % G), so each
// K/V tile is read once per ROWS = 16 x WARPS rows (64 or 128). Keys go in tiles of KEYS (32 or 64) positions
// (any page size P: a tile gathers its rows through the page table); a tile wholly before tree_start takes
// no mask work, tiles holding tree tokens test the ancestor bits. S = Q K^T and O += P V are
// mma.sync.m16n8k16 bf16 -> fp32, with an online softmax in fp32 between them (the C fragments of S are
// the A fragments of P).
// Loads: a STAGES-deep cp.async ring of K/V tiles in dynamic shared memory, so STAGES - 1 tiles are in
// flight while the tensor cores work on one (a single __syncthreads per tile both publishes the landed tile
// and frees the buffer the next load overwrites).
// Split-KV: blockIdx.z takes a contiguous share of the key tiles and writes an unnormalised partial
// (o, running max m, denominator l); attention_merge combines the shares. With one split the block
// writes the normalised bf16 output itself and no merge runs. The share count follows the context bucket,
// so a share may hold no tile: it writes only (m, l) = (-inf, 0), and the merge skips shares of weight 0.
// Split merge inside the kernel (tree_attention_mma_d{D}_w{WARPS}_c{C}, sm_90): the C key shares of a (row tile, KV
// head) pair are one thread block cluster (grid z = C), which merges them itself (merge_in_cluster, below): no
// o_part, ml_part or attention_merge launch. The backend takes it where the split rule gives 2-16 shares
// (CudaBackend.attention_merge_cluster).
// Programmatic dependent launch (kernels/pdl.cuh): the tiles wholly before tree_start, which this step does
// not write, go into the ring before the wait for the kernel ahead; Q and everything else after it.
//
// Launch: grid (row tiles (upper bound: ceil(N G / ROWS) + B - 1), Hkv, splits), block 32 x WARPS,
// dynamic shared memory STAGES x 2 x KEYS x (D + 8) x 2 bytes.
// trigger_first (both tensor-core kernels): 1 = let the next kernel launch first thing (pdl_trigger; it launches once
// every block of this grid has started), which the backend asks where the grid fits the GPU in one wave: the split
// merge's blocks are then placed during attention, and as the merge triggers first thing, so are the O GEMM's,
// which copy their first weight stages while attention runs instead of only during the merge (8B step on an H200,
// notes/attention_trigger_h200_stop41.log). 0 = never trigger: the next kernel launches when attention ends.
// o_part float [splits, N, H, D], ml_part float [splits, N, H, 2]; attention_merge (below) combines them.
// Fragments (g = lane / 4, t = lane % 4): A (g | g+8, k 2t..2t+1 | 2t+8..), B (k 2t.. | 2t+8.., n g),
// C (g | g+8, n 2t..2t+1).
// Measured (H100, bench attention; notes/attention_splits.log has the sweeps and ncu readings): decode-like
// shapes stream K/V at 55-91% of copy bandwidth; T = 64 trees reach only 23-32% of the K/V floor, bound by
// the mma loop itself (tensor pipe busy 31% of cycles with 2 warps per scheduler: the 8-warp variant needs
// 239 registers). Tried and slower: queries in shared memory to fit two 8-warp blocks per SM. On Hopper the
// 8-warp launches of long contexts or many rows go to tree_attention_wgmma (below): 1.5-1.8x faster there.

#define STAGES 4          // K/V tiles in the shared-memory ring

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

// -inf where a key is not visible; only tiles reaching past the prefix (or the sequence end, or causal rows)
// do any work
template <int NT>
__device__ __forceinline__ void mask_scores(float (&s)[NT][4], int key0, int S, int start, int is_causal, int T, const QueryRows& r, int t) {
    if (!(is_causal || key0 + NT * 8 > start || key0 + NT * 8 > S)) return;
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

// The split merge inside a cluster (the mma.sync kernel's _c{C} instances, sm_90): the C key shares of a (row tile,
// KV head) pair are the blocks of one cluster (grid z = cluster z = C, so a block's rank is its share). After its
// loop each block leaves its unnormalised partial in its own shared memory (the ring's bytes, free once every warp
// is done with the last tile): o [ROWS][D + 8] floats, then (m, l) [ROWS] as float2. After a cluster barrier the C
// blocks share the outputs by units of 4 dims of one row (unit u = rank THREADS + thread, stepping by C THREADS),
// each unit reading its C partials through distributed shared memory in rank order:
//   out = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s, M = max m_s over the shares with l_s > 0
// (attention_merge's sum; a share with l_s = 0 saw no key: weight 0, its o, unwritten bytes loaded with the others,
// selected away). A second barrier keeps each block's partial until its readers are done. Why: attention_merge is a
// launch of its own between attention and the O projection; the 8B step at 512 keys ran 2.2-3.4% faster with it left
// out altogether (outputs then wrong: the bound on what a merge inside could save), and 0.4-0.7% faster (decode one
// step ahead) with this merge (notes/attention_cluster_merge_h200_stop46.log).
template <int D>
__device__ __forceinline__ void stage_partial(const float (&acc)[D / 8][4], float m0, float m1, float l0, float l1, const QueryRows& r,
                                              int local_row, int t, float* o_s, float2* ml_s) {
    l0 = quad_sum(l0), l1 = quad_sum(l1);
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int d = dt * 8 + 2 * t;
        if (r.valid0) *reinterpret_cast<float2*>(o_s + local_row * (D + 8) + d) = make_float2(acc[dt][0], acc[dt][1]);
        if (r.valid1) *reinterpret_cast<float2*>(o_s + (local_row + 8) * (D + 8) + d) = make_float2(acc[dt][2], acc[dt][3]);
    }
    if (t == 0 && r.valid0) ml_s[local_row] = make_float2(m0, l0);
    if (t == 0 && r.valid1) ml_s[local_row + 8] = make_float2(m1, l1);
}

// live_rows: the tile's rows that exist (from tile_row0, packed as QueryRows packs them)
template <int D, int THREADS, int C>
__device__ __forceinline__ void merge_in_cluster(const float* o_s, const float2* ml_s, int live_rows, int tile_row0, int G,
                                                 int kv_head, int H, int first_token, __nv_bfloat16* __restrict__ out) {
    const float NEG_INF = -__int_as_float(0x7f800000);
    for (int u = blockIdx.z * THREADS + threadIdx.x; u < live_rows * (D / 4); u += C * THREADS) {
        const int row = u / (D / 4), d = 4 * (u % (D / 4));
        float2 ml[C];
        float M = NEG_INF;
#pragma unroll
        for (int s = 0; s < C; s++) {
            ml[s] = load_cluster(ml_s + row, s);
            if (ml[s].y > 0.0f) M = fmaxf(M, ml[s].x);
        }
        float4 o[C];  // every share's o loaded at once (a share that saw no key: unwritten bytes, selected away below)
#pragma unroll
        for (int s = 0; s < C; s++) o[s] = load_cluster(reinterpret_cast<const float4*>(o_s + row * (D + 8) + d), s);
        float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float L = 0.0f;
#pragma unroll
        for (int s = 0; s < C; s++) {
            const float w = ml[s].y > 0.0f ? exp2_fast(ml[s].x - M) : 0.0f;
            if (w != 0.0f) {
                L += w * ml[s].y;
                sum.x += w * o[s].x, sum.y += w * o[s].y, sum.z += w * o[s].z, sum.w += w * o[s].w;
            }
        }
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        const int packed = tile_row0 + row;
        __nv_bfloat162* to = reinterpret_cast<__nv_bfloat162*>(out + ((long long)(first_token + packed / G) * H + kv_head * G + packed % G) * D + d);
        to[0] = __floats2bfloat162_rn(sum.x * inv, sum.y * inv);
        to[1] = __floats2bfloat162_rn(sum.z * inv, sum.w * inv);
    }
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

template <int D, int WARPS, int KEYS, int CLUSTER = 1>
__device__ void tree_attention_mma(
    const float* __restrict__ q, const __nv_bfloat16* __restrict__ k_cache, const __nv_bfloat16* __restrict__ v_cache,
    const int* __restrict__ cu_q, const int* __restrict__ kv_len, const int* __restrict__ tree_start,
    const unsigned long long* __restrict__ masks, const int* __restrict__ causal,
    const int* __restrict__ page_tables, int max_pages, int B,
    float* __restrict__ o_part, float* __restrict__ ml_part, __nv_bfloat16* __restrict__ out,
    int N, int H, int Hkv, int P, float scale) {
    constexpr int STRIDE = D + 8;  // padded smem rows: 16-byte aligned, conflict-free fragment loads
    constexpr int ROWS = 16 * WARPS, THREADS = 32 * WARPS, TILE = KEYS * STRIDE;
    extern __shared__ __align__(16) __nv_bfloat16 ring[];  // K tiles [STAGES][KEYS][STRIDE], then V tiles
    __nv_bfloat16* k_ring = ring;
    __nv_bfloat16* v_ring = ring + STAGES * TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int G = H / Hkv, kv_head = blockIdx.y;
    int b, tile;
    if (!locate_row_tile(cu_q, B, G, ROWS, b, tile)) return;
    const int T = cu_q[b + 1] - cu_q[b], rows = T * G, S = kv_len[b], start = tree_start[b], is_causal = causal[b];
    const int* table = page_tables + (long long)b * max_pages;
    const QueryRows r(tile * ROWS + warp * 16 + g, rows, G, kv_head, H, cu_q[b], masks);
    const bool warp_active = tile * ROWS + warp * 16 < rows;

    int tile_begin, tile_count;
    split_tiles(S, T, G, is_causal, tile * ROWS + ROWS - 1, KEYS, tile_begin, tile_count);

    // one tile = KEYS x D / 8 16-byte chunks of K and as many of V. Thread x always copies chunk
    // x % CHUNKS of its keys x / CHUNKS + i KEYS_PER_PASS, so the in-page and shared-memory offsets are fixed
    // and a tile costs each thread PASSES page-table reads (no division when P is a power of two).
    constexpr int CHUNKS = D / 8, KEYS_PER_PASS = THREADS / CHUNKS, PASSES = KEYS / KEYS_PER_PASS;
    static_assert(KEYS % KEYS_PER_PASS == 0, "a tile is a whole number of passes");
    const int my_key = threadIdx.x / CHUNKS, my_chunk = threadIdx.x % CHUNKS;
    const int shared_offset = my_key * STRIDE + my_chunk * 8;
    const int head_offset = kv_head * P * D + my_chunk * 8;  // within a page: [Hkv, P, D]
    const long long page_elements = (long long)Hkv * P * D;
    const int p_shift = (P & (P - 1)) == 0 ? __ffs(P) - 1 : -1;
    auto load_tile = [&](int kt, int buffer) {
#pragma unroll
        for (int pass = 0; pass < PASSES; pass++) {
            const int pos = kt * KEYS + pass * KEYS_PER_PASS + my_key;
            const bool valid = pos < S;
            const int page = p_shift >= 0 ? pos >> p_shift : pos / P, row = pos - page * P;
            const long long offset = valid ? table[page] * page_elements + head_offset + row * D : 0;
            const int at = buffer * TILE + pass * KEYS_PER_PASS * STRIDE + shared_offset;
            copy16_async(k_ring + at, k_cache + offset, valid);
            copy16_async(v_ring + at, v_cache + offset, valid);
        }
    };
    // Tiles wholly before tree_start go into the ring before the wait for the previous kernel; the page table
    // is the step plan's. (Reading the page table a tile ahead of the copies, in registers, made this kernel
    // 15-35% slower on decode shapes: notes/attention_splits.log, stop 19.)
    const int early = tiles_before_tree(tile_begin, tile_count, KEYS, start, STAGES - 1);
    for (int s = 0; s < early; s++) {
        load_tile(tile_begin + s, s);
        cp_async_commit();
    }
    pdl_wait();
    if (CLUSTER == 1 && tile_count == 0) {  // (never with one split: split 0 always has a tile)
        store_empty_share(r, t, ml_part, N, H);
        return;
    }
    unsigned qa[D / 16][4];
    load_query<D>(q, r, scale, t, qa);
    float acc[D / 8][4] = {};
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    for (int s = early; s < STAGES - 1; s++) {
        if (s < tile_count) load_tile(tile_begin + s, s);
        cp_async_commit();  // empty groups keep the count uniform
    }
    for (int i = 0; i < tile_count; i++) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of tile i landed
        __syncthreads();  // everyone's copies of tile i landed; everyone is done with tile i - 1's buffer
        if (i + STAGES - 1 < tile_count) load_tile(tile_begin + i + STAGES - 1, (i + STAGES - 1) % STAGES);
        cp_async_commit();
        if (!warp_active) continue;
        const int key0 = (tile_begin + i) * KEYS;
        const __nv_bfloat16* k_buf = k_ring + (i % STAGES) * TILE;
        const __nv_bfloat16* v_buf = v_ring + (i % STAGES) * TILE;

        constexpr int NT = KEYS / 8;  // n8 tiles of S per key tile
        float s[NT][4] = {};
#pragma unroll
        for (int ks = 0; ks < D / 16; ks += 2) {
            // B fragments of K for k-steps ks and ks + 1: four 8x8 matrices (keys nt*8.., 8 dims each), lanes
            // 8j .. 8j+7 address the rows of matrix j; the NT products of a k-step are independent, so the
            // tensor pipe never waits on its own accumulator
            unsigned kb[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                unsigned address = (unsigned)__cvta_generic_to_shared(k_buf + (nt * 8 + lane % 8) * STRIDE + ks * 16 + (lane / 8) * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(kb[nt][0]), "=r"(kb[nt][1]), "=r"(kb[nt][2]), "=r"(kb[nt][3]) : "r"(address));
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) mma16816(s[nt], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], kb[nt][0], kb[nt][1]);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) mma16816(s[nt], qa[ks + 1][0], qa[ks + 1][1], qa[ks + 1][2], qa[ks + 1][3], kb[nt][2], kb[nt][3]);
        }
        mask_scores(s, key0, S, start, is_causal, T, r, t);
        float corr0, corr1;
        softmax_tile(s, m0, m1, l0, l1, corr0, corr1);
        rescale(acc, corr0, corr1);
        // O += P V, one k-step per 16 keys
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
            unsigned pa[4];
            pack_p(s, kk, pa);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                // B fragments of V (keys x dims) straight from the row-major tile: ldmatrix with transpose,
                // lanes 0-15 address keys kk*16 + 0..15 at dims dt*8.., lanes 16-31 the same keys at (dt+1)*8..
                unsigned b0, b1, b2, b3;
                unsigned address = (unsigned)__cvta_generic_to_shared(v_buf + (kk * 16 + lane % 16) * STRIDE + (dt + lane / 16) * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3) : "r"(address));
                mma16816(acc[dt], pa[0], pa[1], pa[2], pa[3], b0, b1);
                mma16816(acc[dt + 1], pa[0], pa[1], pa[2], pa[3], b2, b3);
            }
        }
    }
    cp_async_wait<0>();  // no copy may outlive the block
    if constexpr (CLUSTER > 1) {  // (a share with no tile stages m = -inf, l = 0)
        static_assert(ROWS * (D + 8) * 4 + ROWS * 8 <= STAGES * 2 * TILE * 2, "the partial fits in the ring's bytes");
        float* o_s = reinterpret_cast<float*>(ring);
        float2* ml_s = reinterpret_cast<float2*>(o_s + ROWS * (D + 8));
        __syncthreads();  // every warp is done with the ring
        if (warp_active) stage_partial<D>(acc, m0, m1, l0, l1, r, warp * 16 + g, t, o_s, ml_s);
        cluster_sync();
        merge_in_cluster<D, THREADS, CLUSTER>(o_s, ml_s, min(ROWS, rows - tile * ROWS), tile * ROWS, G, kv_head, H, cu_q[b], out);
        cluster_sync();  // the partials outlive their readers
    } else if (warp_active) {
        store_rows<D>(acc, m0, m1, l0, l1, r, t, blockIdx.z, gridDim.z, o_part, ml_part, out, N, H);
    }
}

// tree_attention_mma_d{D}_w{WARPS}: 4 warps (64 rows, 32-key tiles: three blocks fit an SM) for few rows per
// sequence; 8 warps (128 rows, 64-key tiles, one block per SM) for large trees, where a 64-row tile would make
// every K/V tile cross L2 twice as often and 64 keys halve the per-tile softmax and barrier overhead
#define TREE_ATTENTION_MMA(D, WARPS)                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, 1) tree_attention_mma_d##D##_w##WARPS(                \
        const float* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* cu_q,          \
        const int* kv_len, const int* tree_start, const unsigned long long* masks, const int* causal,           \
        const int* page_tables, int max_pages, int B, float* o_part, float* ml_part, __nv_bfloat16* out, int N,  \
        int H, int Hkv, int P, float scale, int trigger_first) {                                                \
        if (trigger_first) pdl_trigger();                                                                       \
        tree_attention_mma<D, WARPS, 32 * (WARPS / 4)>(q, k_cache, v_cache, cu_q, kv_len, tree_start, masks, causal, page_tables, \
                                     max_pages, B, o_part, ml_part, out, N, H, Hkv, P, scale);                  \
    }
TREE_ATTENTION_MMA(64, 4)
TREE_ATTENTION_MMA(64, 8)
TREE_ATTENTION_MMA(128, 4)
TREE_ATTENTION_MMA(128, 8)

// tree_attention_mma_d{D}_w{WARPS}_c{C} (sm_90): the same with its C key shares one cluster, merged inside
// (merge_in_cluster): grid z = C, no o_part / ml_part, no attention_merge behind it
#if __CUDA_ARCH__ >= 900
#define TREE_ATTENTION_MMA_CLUSTER(D, WARPS, C)                                                                  \
    extern "C" __global__ void __cluster_dims__(1, 1, C) __launch_bounds__(32 * WARPS, 1)                       \
    tree_attention_mma_d##D##_w##WARPS##_c##C(                                                                  \
        const float* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* cu_q,          \
        const int* kv_len, const int* tree_start, const unsigned long long* masks, const int* causal,           \
        const int* page_tables, int max_pages, int B, float* o_part, float* ml_part, __nv_bfloat16* out, int N,  \
        int H, int Hkv, int P, float scale, int trigger_first) {                                                \
        if (trigger_first) pdl_trigger();                                                                       \
        tree_attention_mma<D, WARPS, 32 * (WARPS / 4), C>(q, k_cache, v_cache, cu_q, kv_len, tree_start, masks, causal, \
                                                          page_tables, max_pages, B, o_part, ml_part, out, N, H, Hkv, P, scale); \
    }
#define TREE_ATTENTION_MMA_CLUSTERS(D, WARPS) \
    TREE_ATTENTION_MMA_CLUSTER(D, WARPS, 2) TREE_ATTENTION_MMA_CLUSTER(D, WARPS, 4) TREE_ATTENTION_MMA_CLUSTER(D, WARPS, 8)
TREE_ATTENTION_MMA_CLUSTERS(64, 4)
TREE_ATTENTION_MMA_CLUSTERS(64, 8)
TREE_ATTENTION_MMA_CLUSTERS(128, 4)
TREE_ATTENTION_MMA_CLUSTERS(128, 8)
#endif

// ------------------------------------------------------------------------------------------------
// Hopper version (sm_90a): both products on warpgroup MMA, K/V brought by the tensor memory accelerator.
// Block = 2 consumer warpgroups (warps 0-7, 64 of the block's 128 packed rows each) + a producer warpgroup
// (warps 8-11, of which `producers` = 1 or 2 work; the rest leave at once).
// The producers fill a RING-slot ring of KEYS-key tiles: each page segment of a tile (R = P rows of one head,
// contiguous in the cache) is one TMA box per 64-dim atom of K and of V, written 128-byte swizzled
// [D / 64][KEYS keys][64 dims], the layout the wgmma descriptors read. Rows TMA cannot box (past the sequence
// end, which must read as zeros, or a page size that does not divide 64) go by cp.async with zero fill.
// Per slot two mbarriers: `full` (each producer's expected bytes, and its arrive once any cp.async rows
// landed) and `empty` (the 8 consumer warps, once their products no longer read the slot). Q's A fragments
// stay in each consumer's registers (S = Q K^T reads only K from shared memory), which setmaxnreg makes room
// for; O += P(i-1) V(i-1) is issued with S(i) (FlashAttention-3's order; ptxas nonetheless waits for both
// before the softmax, notes/attention_splits.log, stop 20), and the two consumer warpgroups never meet at a
// block barrier.
// k_map / v_map: TMA descriptors of the caches viewed as [NP Hkv P rows, D] with 64 x box_rows boxes,
// 128-byte swizzle (box_rows = P when P divides 64 and P >= 8, else 0: cp.async only).
// Key tiles of KEYS = 64 or 128 positions (tree_attention_wgmma_d{D}_k{KEYS}): 128 halves the per-tile work of
// the loop (barriers, row maxima, P V's issue) and makes S one N = 128 product per k-step, but leaves 3 slots of
// 64 KB at D = 128 and doubles the smallest share; the backend takes it for long shares (attention_tile_keys).
// Launch: grid as the mma.sync version with 128 rows per block, block 384, dynamic shared memory
// 2 RING x KEYS x D x 2 + 1024 (alignment) + 16 RING (barriers) bytes, RING = attention_ring(D, KEYS).
// Measured (H100, notes/attention_splits.log), 8B heads, T = 64, 8k keys, 8 splits: 49 µs on mma.sync, 42 with
// wgmma and 128 cp.async producer threads (4 slots), 37 with 6 slots, 33 with the TMA producer. Built with
// loads or products left out, a block's tile cost ~1 µs for the loads alone and ~1 µs for the products alone,
// and the sum with both: the cp.async producer was bound by its SM's outstanding requests, which TMA leaves.
// Stop 21: the producer itself bounded the loop at P = 16 (16 boxes a tile, each lane's TMA issued in turn,
// and two runtime divisions by P per box): without the divisions one split at 8k keys took 163 -> 132 µs,
// with the boxes over two warps 121 (0.94 µs a tile); decode-like steps keep one producer warp (8193 keys
// 14.5 -> 13.5 µs, where two gave 14.5). Q from registers instead of shared memory changed nothing alone.
// 128-key tiles (8B heads, shares of 8192 keys or more): one split at 8k keys 121 -> 108 µs, T = 64 at 32k
// keys 72.5 -> 69.5, batch 16 at 8k 3-8% faster; shorter shares lost (T = 64 at 512 keys 12.8 -> 15.3).
// Tried and not kept: the last split merging in the kernel instead of attention_merge (slower: one block then
// reads every share serially), and every split block of a (row tile, KV head) pair merging a share of the pair's
// rows once all have written (stop 26: 8B T = 64 step 6.61 -> 6.81 ms at 512 keys; attention_merge, a launch of its
// own, lets the next kernel be placed and copy its first stages under PDL while it runs,
// notes/attention_merge_inside_h100_stop26.log), FlashAttention-3's ping-pong of the two warpgroups (within 3%), a seventh slot
// (level), four producer warps (as two).
// K/V slots: as many as 192 KB hold, at most 6 (6 x 32 KB at D = 128, KEYS = 64: a seventh fits, it measured
// level); CudaBackend.attention_tile_keys sizes the launch by the same rule
__host__ __device__ constexpr int attention_ring(int D, int KEYS) { return 196608 / (4 * KEYS * D) < 6 ? 196608 / (4 * KEYS * D) : 6; }
template <int D, int KEYS>
__device__ void tree_attention_wgmma(
    const float* __restrict__ q, const __nv_bfloat16* __restrict__ k_cache, const __nv_bfloat16* __restrict__ v_cache,
    const TensorMap& k_map, const TensorMap& v_map, int box_rows,
    const int* __restrict__ cu_q, const int* __restrict__ kv_len, const int* __restrict__ tree_start,
    const unsigned long long* __restrict__ masks, const int* __restrict__ causal,
    const int* __restrict__ page_tables, int max_pages, int B,
    float* __restrict__ o_part, float* __restrict__ ml_part, __nv_bfloat16* __restrict__ out,
    int N, int H, int Hkv, int P, float scale, int producers) {
    constexpr int ROWS = 128, RING = attention_ring(D, KEYS), TILE = KEYS * D, NT = KEYS / 8, ATOMS = D / 64;
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    __nv_bfloat16* base = reinterpret_cast<__nv_bfloat16*>(shared_bytes + (1024 - (unsigned)__cvta_generic_to_shared(shared_bytes) % 1024) % 1024);
    __nv_bfloat16* k_ring = base;
    __nv_bfloat16* v_ring = k_ring + RING * TILE;
    unsigned long long* full = reinterpret_cast<unsigned long long*>(v_ring + RING * TILE);
    unsigned long long* empty = full + RING;
    // warp read through a shuffle: the compiler then knows it warp-uniform, which wgmma needs to stay
    // asynchronous (on a path it thinks divergent, ptxas serialises the products)
    const int warp = __shfl_sync(0xffffffff, threadIdx.x / 32, 0), group = warp / 4;  // group 2: the producers
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int G = H / Hkv, kv_head = blockIdx.y;
    int b, tile;
    if (!locate_row_tile(cu_q, B, G, ROWS, b, tile)) return;
    const int T = cu_q[b + 1] - cu_q[b], rows = T * G, S = kv_len[b], start = tree_start[b], is_causal = causal[b];
    int tile_begin, tile_count;
    split_tiles(S, T, G, is_causal, tile * ROWS + ROWS - 1, KEYS, tile_begin, tile_count);
    const QueryRows r(tile * ROWS + group * 64 + warp % 4 * 16 + g, rows, G, kv_head, H, cu_q[b], masks);
    if (tile_count == 0) {  // the whole block leaves before its first barrier (never with one split)
        pdl_wait();
        if (group < 2) store_empty_share(r, t, ml_part, N, H);
        return;
    }

    // The producer warps' tile loads: box j = producers x lane + warp of a tile (segment j / (2 ATOMS), atom
    // j / 2 % ATOMS, K or V by j % 2), so the warps issue a tile's boxes side by side; rows past the whole
    // segments by cp.async (producer warp 0). A segment is one page's box_rows = P rows: its page is entry
    // tile x KEYS / P + segment of the table (no division by the runtime P), its first row the page's first.
    const int producer = warp - 8, job = lane * producers + producer;
    const int segments = box_rows ? KEYS / box_rows : 0, jobs = segments * 2 * ATOMS;
    if (jobs > 32 * producers) __trap();  // a box per lane: the backend never sends more (attention_tile_keys)
    const int segment = job / (2 * ATOMS), atom = job / 2 % ATOMS, is_v = job % 2;
    const int* table = page_tables + (long long)b * max_pages;
    const long long page_elements = (long long)Hkv * P * D;
    // the page of this lane's segment in tile j if the segment is whole (all its rows < S), else -1
    auto segment_page = [&](int j) {
        const int key = (tile_begin + j) * KEYS + segment * box_rows;
        return job < jobs && j < tile_count && key + box_rows <= S ? table[(tile_begin + j) * segments + segment] : -1;
    };
    auto load_tile = [&](int j, int page) {  // tile j into its slot, whose previous readers are done
        const int slot = j % RING, key0 = (tile_begin + j) * KEYS;
        const int boxes = __popc(__ballot_sync(0xffffffff, page >= 0));
        if (lane == 0) mbarrier_expect_bytes(full + slot, boxes * box_rows * 128);
        __syncwarp();
        if (page >= 0)
            tma_load((is_v ? v_ring : k_ring) + slot * TILE + atom * KEYS * 64 + segment * box_rows * 64, is_v ? &v_map : &k_map,
                     atom * 64, (page * Hkv + kv_head) * P, full + slot);
        // whole segments are a prefix of the tile
        const int boxed_rows = !box_rows ? 0 : key0 + KEYS <= S ? KEYS : max(0, S - key0) / box_rows * box_rows;
        if (producer == 0 && boxed_rows < KEYS) {  // the rest by cp.async, zero past S (masked keys must meet finite V)
            for (int i = lane; i < (KEYS - boxed_rows) * (D / 8); i += 32) {
                const int row = boxed_rows + i / (D / 8), chunk = i % (D / 8), key = key0 + row;
                const long long offset = key < S ? table[key / P] * page_elements + (kv_head * P + key % P) * D + chunk * 8 : 0;
                const int at = slot * TILE + chunk / 8 * KEYS * 64 + row * 64 + ((chunk % 8) ^ (row % 8)) * 8;
                copy16_async(k_ring + at, k_cache + offset, key < S);
                copy16_async(v_ring + at, v_cache + offset, key < S);
            }
            cp_async_commit();
            cp_async_wait<0>();
            fence_async_shared();  // generic-proxy writes, read by wgmma
            __syncwarp();
        }
        if (lane == 0) mbarrier_arrive(full + slot);
    };
    if (group == 2 && lane == 0 && producer == 0) {
        for (int i = 0; i < RING; i++) mbarrier_init(full + i, producers), mbarrier_init(empty + i, 8);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // before the TMA completes on them
    }
    __syncthreads();  // barriers initialised (the only block-wide barrier)

    // Registers move from the producer warpgroup to the consumers, whose Q fragments, O, S and P live in
    // registers: ptxas gives 384 threads 168 each, and the consumers' loop needs ~180 without spilling
    if (group == 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    else asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    if (group == 2) {  // the producer warps
        if (producer >= producers) return;
        // Tiles wholly before tree_start go out before the wait for the previous kernel: their latency overlaps
        // the Q staging and the kernel ahead's tail (the page table is the step plan's).
        const int early = box_rows ? tiles_before_tree(tile_begin, tile_count, KEYS, start, RING) : 0;
        // The page-table reads run RING tiles ahead in a shift register (constant indices keep it in registers),
        // the first RING in flight together. Read one per tile before the block barrier, they had held every
        // block ~8 µs at 8k keys (notes/attention_splits.log, stop 19).
        int pages[RING];
#pragma unroll
        for (int k = 0; k < RING; k++) pages[k] = segment_page(k);
        for (int j = 0; j < tile_count; j++) {
            if (j == early) pdl_wait();
            if (j >= RING) mbarrier_wait(empty + j % RING, (j / RING - 1) & 1);  // tile j - RING's readers are done
            const int page = pages[0];
#pragma unroll
            for (int k = 0; k < RING - 1; k++) pages[k] = pages[k + 1];
            pages[RING - 1] = segment_page(j + RING);
            load_tile(j, page);
        }
        return;
    }

    // consumers
    pdl_wait();
    const bool active = tile * ROWS + group * 64 < rows;  // a warpgroup issues wgmma together
    unsigned qa[D / 16][4];  // Q's A fragments, in registers across the key loop (S = Q K^T reads only K from shared memory)
    if (active) load_query<D>(q, r, scale, t, qa);
    float o[D / 8][4] = {}, s[NT][4];
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    unsigned pa[KEYS / 16][4];  // P of the previous tile, the A operand of its O += P V
    auto release = [&](int j) {  // this warp's products no longer read tile j's slot
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty + j % RING);
    };
    auto issue_pv = [&](int j) {
        const __nv_bfloat16* v_buf = v_ring + j % RING * TILE;
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
            const unsigned long long desc = smem_descriptor(v_buf + kk * 16 * 64, KEYS * 64 * 2, 1024);
            if constexpr (D == 128) wgmma_n128<1>(o, pa[kk], desc, 1);
            else wgmma_n64<1>(o, pa[kk], desc, 1);
        }
        wgmma_commit();
    };
    if (!active) {  // no rows here: only let the producer reuse the slots
        for (int i = 0; i < tile_count; i++) {
            mbarrier_wait(full + i % RING, (i / RING) & 1);
            release(i);
        }
        return;
    }
    auto issue_s = [&](int i) {  // S(i) = Q K(i)^T, after tile i landed
        mbarrier_wait(full + i % RING, (i / RING) & 1);
        const __nv_bfloat16* k_buf = k_ring + i % RING * TILE;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++)
            if constexpr (KEYS == 128) wgmma_n128<0>(s, qa[ks], smem_descriptor(k_buf + ks / 4 * KEYS * 64 + ks % 4 * 16, 16, 1024), ks > 0);
            else wgmma_n64<0>(s, qa[ks], smem_descriptor(k_buf + ks / 4 * KEYS * 64 + ks % 4 * 16, 16, 1024), ks > 0);
        wgmma_commit();
    };
    auto softmax = [&](int i, float& corr0, float& corr1) {  // S(i) -> the weights of tile i
        wgmma_pin(s);
        mask_scores(s, (tile_begin + i) * KEYS, S, start, is_causal, T, r, t);
        softmax_tile(s, m0, m1, l0, l1, corr0, corr1);
    };
    float corr0, corr1;
    if (tile_count > 0) {  // the first tile alone, so that the loop below always has a P V in flight
        issue_s(0);
        wgmma_wait<0>();
        softmax(0, corr0, corr1);
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) pack_p(s, kk, pa[kk]);
    }
    for (int i = 1; i < tile_count; i++) {
        issue_s(i);
        issue_pv(i - 1);
        wgmma_wait<1>();  // S(i) is done; O += P(i-1) V(i-1) may still run while the softmax does
        softmax(i, corr0, corr1);
        wgmma_wait<0>();
        wgmma_pin(o);
        release(i - 1);
        rescale(o, corr0, corr1);
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) pack_p(s, kk, pa[kk]);
    }
    if (tile_count > 0) {
        wgmma_fence();
        issue_pv(tile_count - 1);
        wgmma_wait<0>();
        wgmma_pin(o);
        release(tile_count - 1);
    }
    store_rows<D>(o, m0, m1, l0, l1, r, t, blockIdx.z, gridDim.z, o_part, ml_part, out, N, H);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TREE_ATTENTION_WGMMA(D, KEYS)                                                                            \
    extern "C" __global__ void __launch_bounds__(384, 1) tree_attention_wgmma_d##D##_k##KEYS(                   \
        const float* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,                          \
        const __grid_constant__ TensorMap k_map, const __grid_constant__ TensorMap v_map, int box_rows,         \
        const int* cu_q, const int* kv_len, const int* tree_start, const unsigned long long* masks,            \
        const int* causal, const int* page_tables, int max_pages, int B, float* o_part, float* ml_part,        \
        __nv_bfloat16* out, int N, int H, int Hkv, int P, float scale, int producers, int trigger_first) {      \
        if (trigger_first) pdl_trigger();                                                                       \
        tree_attention_wgmma<D, KEYS>(q, k_cache, v_cache, k_map, v_map, box_rows, cu_q, kv_len, tree_start,     \
                                      masks, causal, page_tables, max_pages, B, o_part, ml_part, out, N, H, Hkv, \
                                      P, scale, producers);                                                      \
    }
TREE_ATTENTION_WGMMA(64, 64)
TREE_ATTENTION_WGMMA(64, 128)
TREE_ATTENTION_WGMMA(128, 64)
TREE_ATTENTION_WGMMA(128, 128)
#endif

// out[n, h, :] = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s (the partials' maxima are base 2) over the splits (M = max m_s; shares with
// l_s = 0 saw no key: weight 0, their o never written); rows n >= cu_q[B] (padding of a captured bucket) are written as zeros.
// W warps per (n, h) row (blockDim.x = 32 W; blockDim.y rows per block): warp w sums the splits w, w + W, ..., each lane D / 32
// adjacent dims, four splits' o in flight at a time, the first four loaded together with the (m, l) pairs before their weights
// are known (a share of weight 0 is selected away, never multiplied: its o is unwritten memory). The warps' sums meet in shared
// memory in warp order, a fixed order: the same bits every run. The backend gives few rows many warps (decode: a warp per two
// shares, one round trip to L2 per row) and many rows one warp (CudaBackend.merge_shape). One warp per row looping over 32
// shares took 7.5 µs at 8B heads, T = 1, 8k keys; 3.0 µs so (notes/attention_parts_h100_stop19.log).
// grid ceil(N H / blockDim.y), dynamic shared memory blockDim.y x W x 512 bytes; o_part [splits, N, H, D], ml_part
// [splits, N, H, 2], out store_t [N, H * D]; splits <= 64, D in {64, 128}.
extern "C" __global__ void __launch_bounds__(1024) attention_merge(
    const float* __restrict__ o_part, const float* __restrict__ ml_part, const int* __restrict__ cu_q, int B,
    store_t* __restrict__ out, int N, int H, int D, int splits) {
    extern __shared__ float4 partial[];  // [blockDim.y][W][32]
    pdl_begin();
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32, per_lane = D / 32, d0 = lane * per_lane;
    const long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y, stride = (long long)N * H;
    const bool live = row < stride && row / H < cu_q[B];  // (no early return: the block meets at a barrier below)
    const float NEG_INF = -__int_as_float(0x7f800000);
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float L = 0.0f;
    float w[2];  // lane s holds split s's weight, and s + 32's
    for (int first = warp; live && first < splits; first += 4 * W) {
        float4 x[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int s = first + W * i;
            const float* o = o_part + (s * stride + row) * D + d0;
            if (s >= splits) x[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            else if (per_lane == 4) x[i] = *reinterpret_cast<const float4*>(o);
            else x[i] = make_float4(o[0], o[1], 0.0f, 0.0f);
        }
        if (first == warp) {  // the weights, while the first o loads are in flight (every warp of the row alike: no barrier)
            float m[2], l[2];
            for (int i = 0; i < 2; i++) {
                const int s = lane + 32 * i;
                m[i] = s < splits ? ml_part[(s * stride + row) * 2] : NEG_INF;
                l[i] = s < splits ? ml_part[(s * stride + row) * 2 + 1] : 0.0f;
            }
            float M = fmaxf(l[0] > 0.0f ? m[0] : NEG_INF, l[1] > 0.0f ? m[1] : NEG_INF);
            for (int offset = 16; offset > 0; offset >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffff, M, offset));
            for (int i = 0; i < 2; i++) {
                w[i] = l[i] > 0.0f ? exp2_fast(m[i] - M) : 0.0f;
                L += w[i] * l[i];
            }
            for (int offset = 16; offset > 0; offset >>= 1) L += __shfl_xor_sync(0xffffffff, L, offset);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int s = first + W * i;
            const float ws = __shfl_sync(0xffffffff, s < 32 ? w[0] : w[1], s % 32);
            if (s < splits && ws != 0.0f)  // a share that saw no key (o unwritten) or whose max underflows adds +0
                sum.x += ws * x[i].x, sum.y += ws * x[i].y, sum.z += ws * x[i].z, sum.w += ws * x[i].w;
        }
    }
    float4* mine = partial + threadIdx.y * W * 32;
    mine[warp * 32 + lane] = sum;
    __syncthreads();
    if (warp == 0 && row < stride) {
        float4 total = mine[lane];
        for (int v = 1; v < W; v++) {
            const float4 p = mine[v * 32 + lane];
            total.x += p.x, total.y += p.y, total.z += p.z, total.w += p.w;
        }
        const float t[4] = {total.x, total.y, total.z, total.w};
        for (int e = 0; e < per_lane; e++) out[row * D + d0 + e] = to_store(live ? t[e] / L : 0.0f);
    }
}
