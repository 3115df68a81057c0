// Paged tree attention on tensor cores through mma.sync (bf16 pages, D = 64 or 128): attention.cu's product,
// visibility rules and arguments,
//   o[n, h, :] = sum_j softmax_j(q[n, h, :] . k[j, h / G, :] * scale | visible(n, j)) v[j, h / G, :].
// The G query heads of all T tree nodes of one sequence that share a KV head are the rows of one tile (GQA packing: row r = node r / G, head kv_head * G + r % G), so each
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
// o_part float [splits, N, H, D], ml_part float [splits, N, H, 2]; attention_merge (attention.cu) combines them.
// Fragments (g = lane / 4, t = lane % 4): A (g | g+8, k 2t..2t+1 | 2t+8..), B (k 2t.. | 2t+8.., n g),
// C (g | g+8, n 2t..2t+1).
// Measured (H100, bench attention; notes/attention_splits.log has the sweeps and ncu readings): decode-like
// shapes stream K/V at 55-91% of copy bandwidth; T = 64 trees reach only 23-32% of the K/V floor, bound by
// the mma loop itself (tensor pipe busy 31% of cycles with 2 warps per scheduler: the 8-warp variant needs
// 239 registers). Tried and slower: queries in shared memory to fit two 8-warp blocks per SM. On Hopper the
// 8-warp launches of long contexts or many rows go to tree_attention_wgmma (attention_wgmma.cu): 1.5-1.8x faster there.
#include <cuda_bf16.h>
#include "pdl.cuh"
#include "cluster.cuh"
#include "attention.cuh"
#include "head_dim.cuh"

#define STAGES 4          // K/V tiles in the shared-memory ring

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
HEAD_DIM_64(TREE_ATTENTION_MMA(64, 4))
HEAD_DIM_64(TREE_ATTENTION_MMA(64, 8))
HEAD_DIM_128(TREE_ATTENTION_MMA(128, 4))
HEAD_DIM_128(TREE_ATTENTION_MMA(128, 8))

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
HEAD_DIM_64(TREE_ATTENTION_MMA_CLUSTERS(64, 4))
HEAD_DIM_64(TREE_ATTENTION_MMA_CLUSTERS(64, 8))
HEAD_DIM_128(TREE_ATTENTION_MMA_CLUSTERS(128, 4))
HEAD_DIM_128(TREE_ATTENTION_MMA_CLUSTERS(128, 8))
#endif
