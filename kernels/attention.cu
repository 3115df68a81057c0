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

#define MAX_DIMS_PER_LANE 8

extern "C" __global__ void tree_attention(
    const float* __restrict__ q, const store_t* __restrict__ k_cache, const store_t* __restrict__ v_cache,
    const int* __restrict__ cu_q, const int* __restrict__ kv_len, const int* __restrict__ tree_start,
    const unsigned long long* __restrict__ masks, const int* __restrict__ causal,
    const int* __restrict__ page_tables, int max_pages, int B,
    store_t* __restrict__ out, int H, int Hkv, int P, int D, float scale) {
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
// writes the normalised bf16 output itself and no merge runs.
//
// Launch: grid (row tiles (upper bound: ceil(N G / ROWS) + B), Hkv, splits), block 32 x WARPS,
// dynamic shared memory STAGES x 2 x KEYS x (D + 8) x 2 bytes.
// o_part float [splits, N, H, D], ml_part float [splits, N, H, 2]; attention_merge (below) combines them.
// Fragments (g = lane / 4, t = lane % 4): A (g | g+8, k 2t..2t+1 | 2t+8..), B (k 2t.. | 2t+8.., n g),
// C (g | g+8, n 2t..2t+1).
// Measured (H100, bench attention; notes/attention_splits.log has the sweeps and ncu readings): decode-like
// shapes stream K/V at 55-91% of copy bandwidth; T = 64 trees reach only 23-32% of the K/V floor, bound by
// the mma loop itself (tensor pipe busy 31% of cycles with 2 warps per scheduler: the 8-warp variant needs
// 239 registers). Tried and slower: queries in shared memory to fit two 8-warp blocks per SM.

#define STAGES 4          // K/V tiles in the shared-memory ring

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

__device__ __forceinline__ void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without passing through registers; zero-filled when !valid
__device__ __forceinline__ void copy16_async(__nv_bfloat16* shared, const __nv_bfloat16* global, bool valid) {
    unsigned address = (unsigned)__cvta_generic_to_shared(shared);
    int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(bytes));
}

// 2^x on the SFU (ex2.approx: -inf -> +0); the tensor-core kernel keeps scores in base 2 (q is pre-scaled by
// log2 e), which saves the multiply __expf does before its own ex2
__device__ __forceinline__ float exp2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

template <int D, int WARPS, int KEYS>
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
    const int G = H / Hkv, kv_head = blockIdx.y, split = blockIdx.z, splits = gridDim.z;

    // which sequence and row tile this block works on
    int b = 0, tile = blockIdx.x;
    for (; b < B; b++) {
        int tiles_b = ((cu_q[b + 1] - cu_q[b]) * G + ROWS - 1) / ROWS;
        if (tile < tiles_b) break;
        tile -= tiles_b;
    }
    if (b >= B) return;
    const int T = cu_q[b + 1] - cu_q[b], rows = T * G, S = kv_len[b], start = tree_start[b], is_causal = causal[b];
    const int* table = page_tables + (long long)b * max_pages;

    // this thread's two rows (g and g + 8 of the warp's 16)
    const int r0 = tile * ROWS + warp * 16 + g, r1 = r0 + 8;
    const bool valid0 = r0 < rows, valid1 = r1 < rows;
    const int node0 = valid0 ? r0 / G : 0, node1 = valid1 ? r1 / G : 0;
    const int head0 = kv_head * G + (valid0 ? r0 % G : 0), head1 = kv_head * G + (valid1 ? r1 % G : 0);
    const long long qrow0 = (long long)(cu_q[b] + node0) * H + head0, qrow1 = (long long)(cu_q[b] + node1) * H + head1;
    const unsigned long long mask0 = masks[cu_q[b] + node0], mask1 = masks[cu_q[b] + node1];
    const bool warp_active = tile * ROWS + warp * 16 < rows;

    unsigned qa[D / 16][4];
    scale *= 1.4426950408889634f;  // log2 e: softmax in base 2
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        int d = ks * 16 + 2 * t;
        float2 x00 = valid0 ? *reinterpret_cast<const float2*>(q + qrow0 * D + d) : make_float2(0, 0);
        float2 x10 = valid1 ? *reinterpret_cast<const float2*>(q + qrow1 * D + d) : make_float2(0, 0);
        float2 x01 = valid0 ? *reinterpret_cast<const float2*>(q + qrow0 * D + d + 8) : make_float2(0, 0);
        float2 x11 = valid1 ? *reinterpret_cast<const float2*>(q + qrow1 * D + d + 8) : make_float2(0, 0);
        qa[ks][0] = pack_bf16x2(x00.x * scale, x00.y * scale);
        qa[ks][1] = pack_bf16x2(x10.x * scale, x10.y * scale);
        qa[ks][2] = pack_bf16x2(x01.x * scale, x01.y * scale);
        qa[ks][3] = pack_bf16x2(x11.x * scale, x11.y * scale);
    }
    float acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

    // causal rows see keys up to their own position; tree rows up to kv_len
    const int last_key = is_causal ? min(S - 1, S - T + (tile * ROWS + ROWS - 1) / G) : S - 1;
    const int key_tiles = last_key / KEYS + 1;
    const int per_split = (key_tiles + splits - 1) / splits;
    const int tile_begin = split * per_split, tile_count = max(0, min(key_tiles, tile_begin + per_split) - tile_begin);

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
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < tile_count) load_tile(tile_begin + s, s);
        asm volatile("cp.async.commit_group;\n" ::);  // empty groups keep the count uniform
    }
    for (int i = 0; i < tile_count; i++) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2));  // this thread's copies of tile i landed
        __syncthreads();  // everyone's copies of tile i landed; everyone is done with tile i - 1's buffer
        if (i + STAGES - 1 < tile_count) load_tile(tile_begin + i + STAGES - 1, (i + STAGES - 1) % STAGES);
        asm volatile("cp.async.commit_group;\n" ::);
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
        // mask: only tiles reaching past the prefix (or the sequence end, or causal rows) do any work
        const bool needs_mask = is_causal || key0 + KEYS > start || key0 + KEYS > S;
        if (needs_mask) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = key0 + nt * 8 + 2 * t + (e & 1), node = e < 2 ? node0 : node1;
                    unsigned long long mask = e < 2 ? mask0 : mask1;
                    bool visible = key < S && (is_causal ? key <= S - T + node
                                                         : (key < start || ((mask >> (key - start)) & 1ull)));
                    if (!visible) s[nt][e] = NEG_INF;
                }
        }
        // online softmax, rows g (elements 0, 1) and g + 8 (elements 2, 3); a row's 4 lanes share it
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, 2));
        float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
        float base0 = new0 == NEG_INF ? 0.0f : new0, base1 = new1 == NEG_INF ? 0.0f : new1;
        float corr0 = exp2_fast(m0 - base0), corr1 = exp2_fast(m1 - base1);
        m0 = new0;
        m1 = new1;
        l0 *= corr0;
        l1 *= corr1;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = exp2_fast(s[nt][0] - base0);
            s[nt][1] = exp2_fast(s[nt][1] - base0);
            s[nt][2] = exp2_fast(s[nt][2] - base1);
            s[nt][3] = exp2_fast(s[nt][3] - base1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }
        if (__any_sync(0xffffffff, corr0 != 1.0f || corr1 != 1.0f)) {  // once the maxima settle, tiles skip this
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                acc[dt][0] *= corr0;
                acc[dt][1] *= corr0;
                acc[dt][2] *= corr1;
                acc[dt][3] *= corr1;
            }
        }
        // O += P V, one k-step per 16 keys: the C fragments of S n-tiles 2kk, 2kk+1 are the A fragment of P
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
            unsigned pa0 = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pa1 = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            unsigned pa2 = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pa3 = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                // B fragments of V (keys x dims) straight from the row-major tile: ldmatrix with transpose,
                // lanes 0-15 address keys kk*16 + 0..15 at dims dt*8.., lanes 16-31 the same keys at (dt+1)*8..
                unsigned b0, b1, b2, b3;
                unsigned address = (unsigned)__cvta_generic_to_shared(v_buf + (kk * 16 + lane % 16) * STRIDE + (dt + lane / 16) * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3) : "r"(address));
                mma16816(acc[dt], pa0, pa1, pa2, pa3, b0, b1);
                mma16816(acc[dt + 1], pa0, pa1, pa2, pa3, b2, b3);
            }
        }
    }
    asm volatile("cp.async.wait_group 0;\n" ::);  // no copy may outlive the block
    if (!warp_active) return;
    l0 += __shfl_xor_sync(0xffffffff, l0, 1);
    l0 += __shfl_xor_sync(0xffffffff, l0, 2);
    l1 += __shfl_xor_sync(0xffffffff, l1, 1);
    l1 += __shfl_xor_sync(0xffffffff, l1, 2);
    if (splits == 1) {  // the only share: normalise and write the O projection's input directly
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            int d = dt * 8 + 2 * t;
            if (valid0) *reinterpret_cast<__nv_bfloat162*>(out + qrow0 * D + d) = __floats2bfloat162_rn(acc[dt][0] / l0, acc[dt][1] / l0);
            if (valid1) *reinterpret_cast<__nv_bfloat162*>(out + qrow1 * D + d) = __floats2bfloat162_rn(acc[dt][2] / l1, acc[dt][3] / l1);
        }
        return;
    }
    float* o = o_part + (long long)split * N * H * D;
    float* ml = ml_part + (long long)split * N * H * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        int d = dt * 8 + 2 * t;
        if (valid0) *reinterpret_cast<float2*>(o + qrow0 * D + d) = make_float2(acc[dt][0], acc[dt][1]);
        if (valid1) *reinterpret_cast<float2*>(o + qrow1 * D + d) = make_float2(acc[dt][2], acc[dt][3]);
    }
    if (t == 0 && valid0) { ml[qrow0 * 2] = m0; ml[qrow0 * 2 + 1] = l0; }
    if (t == 0 && valid1) { ml[qrow1 * 2] = m1; ml[qrow1 * 2 + 1] = l1; }
}

// tree_attention_mma_d{D}_w{WARPS}: 4 warps (64 rows, 32-key tiles: three blocks fit an SM) for few rows per
// sequence; 8 warps (128 rows, 64-key tiles, one block per SM) for large trees, where a 64-row tile would make
// every K/V tile cross L2 twice as often and 64 keys halve the per-tile softmax and barrier overhead
#define TREE_ATTENTION_MMA(D, WARPS)                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, 1) tree_attention_mma_d##D##_w##WARPS(                \
        const float* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* cu_q,          \
        const int* kv_len, const int* tree_start, const unsigned long long* masks, const int* causal,           \
        const int* page_tables, int max_pages, int B, float* o_part, float* ml_part, __nv_bfloat16* out, int N,  \
        int H, int Hkv, int P, float scale) {                                                                   \
        tree_attention_mma<D, WARPS, 32 * (WARPS / 4)>(q, k_cache, v_cache, cu_q, kv_len, tree_start, masks, causal, page_tables, \
                                     max_pages, B, o_part, ml_part, out, N, H, Hkv, P, scale);                  \
    }
TREE_ATTENTION_MMA(64, 4)
TREE_ATTENTION_MMA(64, 8)
TREE_ATTENTION_MMA(128, 4)
TREE_ATTENTION_MMA(128, 8)

// out[n, h, :] = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s (the partials' maxima are base 2) over the splits (M = max m_s; shares with
// l_s = 0 saw no key and are skipped); rows n >= cu_q[B] (padding of a captured bucket) are written as zeros.
// One warp per (n, h) row, 4 rows per block: lane s holds split s's weight (and s + 32's), each lane owns
// D / 32 adjacent dims and reads the splits' partials for them with independent loads.
// grid ceil(N H / 4), block 128; o_part [splits, N, H, D], ml_part [splits, N, H, 2], out store_t [N, H * D];
// splits <= 64, D in {64, 128}.
extern "C" __global__ void attention_merge(const float* __restrict__ o_part, const float* __restrict__ ml_part,
                                           const int* __restrict__ cu_q, int B, store_t* __restrict__ out,
                                           int N, int H, int D, int splits) {
    const int lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * 4 + threadIdx.x / 32;
    if (row >= (long long)N * H) return;
    const int per_lane = D / 32, d0 = lane * per_lane;
    if (row / H >= cu_q[B]) {
        for (int e = 0; e < per_lane; e++) out[row * D + d0 + e] = to_store(0.0f);
        return;
    }
    const long long stride = (long long)N * H;
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m[2], l[2];
    for (int i = 0; i < 2; i++) {
        const int s = lane + 32 * i;
        m[i] = s < splits ? ml_part[(s * stride + row) * 2] : NEG_INF;
        l[i] = s < splits ? ml_part[(s * stride + row) * 2 + 1] : 0.0f;
    }
    float M = fmaxf(l[0] > 0.0f ? m[0] : NEG_INF, l[1] > 0.0f ? m[1] : NEG_INF);
    for (int offset = 16; offset > 0; offset >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffff, M, offset));
    float w[2], L = 0.0f;
    for (int i = 0; i < 2; i++) {
        w[i] = l[i] > 0.0f ? exp2_fast(m[i] - M) : 0.0f;
        L += w[i] * l[i];
    }
    for (int offset = 16; offset > 0; offset >>= 1) L += __shfl_xor_sync(0xffffffff, L, offset);
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 8
    for (int s = 0; s < splits; s++) {
        const float ws = __shfl_sync(0xffffffff, s < 32 ? w[0] : w[1], s % 32);
        const float* o = o_part + (s * stride + row) * D + d0;
        if (per_lane == 4) {
            const float4 x = *reinterpret_cast<const float4*>(o);
            sum[0] += ws * x.x, sum[1] += ws * x.y, sum[2] += ws * x.z, sum[3] += ws * x.w;
        } else {
            for (int e = 0; e < per_lane; e++) sum[e] += ws * o[e];
        }
    }
    for (int e = 0; e < per_lane; e++) out[row * D + d0 + e] = to_store(sum[e] / L);
}
