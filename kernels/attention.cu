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
// take the tensor-core versions, on mma.sync (attention_mma.cu) and on Hopper's warpgroup MMA (attention_wgmma.cu),
// whose key shares attention_merge (below) combines. Their shared pieces are in attention.cuh.
// NumPy reference: numpy_backend.attention. Tests: tests/test_cuda_kernels.py.
#include "storage.cuh"
#include "pdl.cuh"
#include "attention.cuh"

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
    pdl_trigger();
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32, per_lane = D / 32, d0 = lane * per_lane;
    const long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y, stride = (long long)N * H;
    const bool live = row < stride && row / H < cu_q[B];  // (no early return: the block meets at a barrier below)
    pdl_wait();  // after the plan's cu_q (written before the step's first kernel, pdl.cuh): a round trip less after it
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
