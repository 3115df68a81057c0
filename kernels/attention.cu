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
//   out float [N, H * D].  D <= 256 and a multiple of 32. Rows n >= cu_q[B] (padding of a captured
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
    float* __restrict__ out, int H, int Hkv, int P, int D, float scale) {
    int n = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    if (n >= cu_q[B]) {  // a padded row of a captured bucket: defined output, no reads
        for (int d = lane; d < D; d += 32) out[((long long)n * H + h) * D + d] = 0.0f;
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
    for (int e = 0; e < per_lane; e++) out[((long long)n * H + h) * D + lane + 32 * e] = acc[e] / denominator;
}
