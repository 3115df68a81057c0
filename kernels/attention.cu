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
// This is the first, exact version (CUDA cores); the tensor-core version (G heads x T rows per tile,
// split-KV) is the speed issue's work.
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
// K/V tile is read once per 64 rows. Keys go in tiles of KEYS_PER_TILE positions (any page size P: a tile gathers
// its rows through the page table); a tile wholly before tree_start takes no mask work, tiles holding
// tree tokens test the ancestor bits. S = Q K^T and O += P V are mma.sync.m16n8k16 bf16 -> fp32, with
// an online softmax in fp32 between them (the C fragments of S are the A fragments of P).
// Split-KV: blockIdx.z takes a contiguous share of the key tiles and writes an unnormalised partial
// (o, running max m, denominator l); attention_merge combines the shares. With one split the block
// writes the normalised bf16 output itself and no merge runs.
//
// Launch: grid (row tiles (upper bound: ceil(N G / 64) + B), Hkv, splits), block 128 (4 warps x 16 rows).
// o_part float [splits, N, H, D], ml_part float [splits, N, H, 2]; attention_merge (below) combines them.
// Fragments (g = lane / 4, t = lane % 4): A (g | g+8, k 2t..2t+1 | 2t+8..), B (k 2t.. | 2t+8.., n g),
// C (g | g+8, n 2t..2t+1).

#define KEYS_PER_TILE 32  // keys per K/V tile: KEYS_PER_TILE / 8 n-tiles of S, KEYS_PER_TILE / 16 k-steps of P V

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

template <int D>
__device__ void tree_attention_mma(
    const float* __restrict__ q, const __nv_bfloat16* __restrict__ k_cache, const __nv_bfloat16* __restrict__ v_cache,
    const int* __restrict__ cu_q, const int* __restrict__ kv_len, const int* __restrict__ tree_start,
    const unsigned long long* __restrict__ masks, const int* __restrict__ causal,
    const int* __restrict__ page_tables, int max_pages, int B,
    float* __restrict__ o_part, float* __restrict__ ml_part, __nv_bfloat16* __restrict__ out,
    int N, int H, int Hkv, int P, float scale) {
    constexpr int STRIDE = D + 8;  // padded smem rows: 16-byte aligned, spreads banks
    __shared__ __align__(16) __nv_bfloat16 k_tile[2 * KEYS_PER_TILE * STRIDE];  // two buffers
    __shared__ __align__(16) __nv_bfloat16 v_tile[2 * KEYS_PER_TILE * STRIDE];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int G = H / Hkv, kv_head = blockIdx.y, split = blockIdx.z, splits = gridDim.z;

    // which sequence and row tile this block works on
    int b = 0, tile = blockIdx.x;
    for (; b < B; b++) {
        int tiles_b = ((cu_q[b + 1] - cu_q[b]) * G + 63) / 64;
        if (tile < tiles_b) break;
        tile -= tiles_b;
    }
    if (b >= B) return;
    const int T = cu_q[b + 1] - cu_q[b], rows = T * G, S = kv_len[b], start = tree_start[b], is_causal = causal[b];
    const int* table = page_tables + (long long)b * max_pages;

    // this thread's two rows (g and g + 8 of the warp's 16)
    const int r0 = tile * 64 + warp * 16 + g, r1 = r0 + 8;
    const bool valid0 = r0 < rows, valid1 = r1 < rows;
    const int node0 = valid0 ? r0 / G : 0, node1 = valid1 ? r1 / G : 0;
    const int head0 = kv_head * G + (valid0 ? r0 % G : 0), head1 = kv_head * G + (valid1 ? r1 % G : 0);
    const long long qrow0 = (long long)(cu_q[b] + node0) * H + head0, qrow1 = (long long)(cu_q[b] + node1) * H + head1;
    const unsigned long long mask0 = masks[cu_q[b] + node0], mask1 = masks[cu_q[b] + node1];
    const bool warp_active = tile * 64 + warp * 16 < rows;

    unsigned qa[D / 16][4];
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
    const int last_key = is_causal ? min(S - 1, S - T + (tile * 64 + 63) / G) : S - 1;
    const int key_tiles = last_key / KEYS_PER_TILE + 1;
    const int per_split = (key_tiles + splits - 1) / splits;
    const int tile_begin = split * per_split, tile_end = min(key_tiles, tile_begin + per_split);

    // K/V tiles are double-buffered: cp.async brings tile kt + 1 while the tensor cores work on tile kt
    auto load_tile = [&](int kt, int buffer) {
        const int key0 = kt * KEYS_PER_TILE;
        for (int c = threadIdx.x; c < KEYS_PER_TILE * D / 8; c += blockDim.x) {
            int key = c / (D / 8), part = c % (D / 8), pos = key0 + key;
            long long base = pos < S ? (((long long)table[pos / P] * Hkv + kv_head) * P + pos % P) * D + part * 8 : 0;
            copy16_async(k_tile + (buffer * KEYS_PER_TILE + key) * STRIDE + part * 8, k_cache + base, pos < S);
            copy16_async(v_tile + (buffer * KEYS_PER_TILE + key) * STRIDE + part * 8, v_cache + base, pos < S);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    if (tile_begin < tile_end) load_tile(tile_begin, 0);
    for (int kt = tile_begin; kt < tile_end; kt++) {
        const int key0 = kt * KEYS_PER_TILE, buffer = (kt - tile_begin) & 1;
        if (kt + 1 < tile_end) {
            load_tile(kt + 1, buffer ^ 1);
            asm volatile("cp.async.wait_group 1;\n" ::);  // tile kt has landed, kt + 1 may still be in flight
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        if (!warp_active) {
            __syncthreads();
            continue;
        }
        const __nv_bfloat16* k_buf = k_tile + buffer * KEYS_PER_TILE * STRIDE;
        const __nv_bfloat16* v_buf = v_tile + buffer * KEYS_PER_TILE * STRIDE;

        constexpr int NT = KEYS_PER_TILE / 8;  // n8 tiles of S per key tile
        float s[NT][4] = {};
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const __nv_bfloat16* krow = k_buf + (nt * 8 + g) * STRIDE;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                unsigned b0 = *reinterpret_cast<const unsigned*>(krow + ks * 16 + 2 * t);
                unsigned b1 = *reinterpret_cast<const unsigned*>(krow + ks * 16 + 8 + 2 * t);
                mma16816(s[nt], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b0, b1);
            }
        }
        // mask: only tiles reaching past the prefix (or the sequence end, or causal rows) do any work
        const bool needs_mask = is_causal || key0 + KEYS_PER_TILE > start || key0 + KEYS_PER_TILE > S;
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
        float corr0 = __expf(m0 - base0), corr1 = __expf(m1 - base1);
        m0 = new0;
        m1 = new1;
        l0 *= corr0;
        l1 *= corr1;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = __expf(s[nt][0] - base0);
            s[nt][1] = __expf(s[nt][1] - base0);
            s[nt][2] = __expf(s[nt][2] - base1);
            s[nt][3] = __expf(s[nt][3] - base1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            acc[dt][0] *= corr0;
            acc[dt][1] *= corr0;
            acc[dt][2] *= corr1;
            acc[dt][3] *= corr1;
        }
        // O += P V, one k-step per 16 keys: the C fragments of S n-tiles 2kk, 2kk+1 are the A fragment of P
#pragma unroll
        for (int kk = 0; kk < KEYS_PER_TILE / 16; kk++) {
            unsigned pa0 = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pa1 = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            unsigned pa2 = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pa3 = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                // B fragments of V (keys x dims) straight from the row-major tile: ldmatrix with transpose,
                // lanes 0-15 give the addresses of keys kk*16 + 0..15 at dims dt*8 .. dt*8+7
                unsigned b0, b1;
                unsigned address = (unsigned)__cvta_generic_to_shared(v_buf + (kk * 16 + lane % 16) * STRIDE + dt * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(address));
                mma16816(acc[dt], pa0, pa1, pa2, pa3, b0, b1);
            }
        }
        __syncthreads();  // every warp is done with this buffer before it is refilled
    }
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

#define TREE_ATTENTION_MMA(D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) tree_attention_mma_d##D(                                 \
        const float* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* cu_q,         \
        const int* kv_len, const int* tree_start, const unsigned long long* masks, const int* causal,          \
        const int* page_tables, int max_pages, int B, float* o_part, float* ml_part, __nv_bfloat16* out, int N, \
        int H, int Hkv, int P, float scale) {                                                                  \
        tree_attention_mma<D>(q, k_cache, v_cache, cu_q, kv_len, tree_start, masks, causal, page_tables,       \
                              max_pages, B, o_part, ml_part, out, N, H, Hkv, P, scale);                        \
    }
TREE_ATTENTION_MMA(64)
TREE_ATTENTION_MMA(128)

// out[n, h, :] = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s over the splits (M = max m_s);
// rows n >= cu_q[B] (padding of a captured bucket) are written as zeros.
// grid (N, H), block 64; o_part [splits, N, H, D], ml_part [splits, N, H, 2], out store_t [N, H * D].
extern "C" __global__ void attention_merge(const float* __restrict__ o_part, const float* __restrict__ ml_part,
                                           const int* __restrict__ cu_q, int B, store_t* __restrict__ out,
                                           int N, int H, int D, int splits) {
    int n = blockIdx.x, h = blockIdx.y;
    long long row = (long long)n * H + h;
    if (n >= cu_q[B]) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) out[row * D + d] = to_store(0.0f);
        return;
    }
    float M = -__int_as_float(0x7f800000);
    for (int s = 0; s < splits; s++) M = fmaxf(M, ml_part[((long long)s * N * H + row) * 2]);
    float L = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float* ml = ml_part + ((long long)s * N * H + row) * 2;
        if (ml[1] > 0.0f) L += __expf(ml[0] - M) * ml[1];
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float sum = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float* ml = ml_part + ((long long)s * N * H + row) * 2;
            if (ml[1] > 0.0f) sum += __expf(ml[0] - M) * o_part[((long long)s * N * H + row) * D + d];
        }
        out[row * D + d] = to_store(sum / L);
    }
}
