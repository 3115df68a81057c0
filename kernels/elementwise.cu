// Small per-token ops: embedding gather, RMSNorm with fused residual add, RoPE, SiLU*mul.
//
// embedding:    out[n, :] = table[tokens[n], :]
//   table store_t [V, C] row-major, tokens int32 [N], out float [N, C].   grid (N), block 256.
// add_rmsnorm:  r = x + residual (residual <- r; when has_residual == 0, r = x)
//               out = r / sqrt(mean(r^2) + eps) * weight
//   x, residual, out float [N, C]; weight float [C].                     grid (N), block 256.
// qkv_rope:     qkv float [N, (H + 2 Hkv) D] -> q [N, H, D], k [N, Hkv, D] rotated, v [N, Hkv, D]
//   rotation of pairs (i, i + D/2) by angle positions[n] * inv_freq[i] (Hugging Face rotate_half):
//   x1' = x1 cos - x2 sin,  x2' = x2 cos + x1 sin;  cos/sin float [max_pos, D/2] tables.
//                                                                        grid (N), block 128.
// silu_mul:     gate_up float [N, 2I] (gate | up) -> out [N, I] = gate / (1 + exp(-gate)) * up
//                                                                        grid (N * I / 256 + 1), block 256.
// NumPy reference: minispec/backends/numpy_backend.py (embedding, add_rmsnorm, split_qkv_rope, silu_mul).
// Tests: tests/test_cuda_kernels.py.
#include "storage.cuh"

extern "C" __global__ void embedding(const store_t* __restrict__ table, const int* __restrict__ tokens,
                                     float* __restrict__ out, int C) {
    const store_t* row = table + (long long)tokens[blockIdx.x] * C;
    float* dst = out + (long long)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = load_f(row + c);
}

__device__ float block_sum(float value) {
    __shared__ float partial[32];
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffff, value, offset);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    value = lane < blockDim.x / 32 ? partial[lane] : 0.0f;
    if (warp == 0)
        for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffff, value, offset);
    if (threadIdx.x == 0) partial[0] = value;
    __syncthreads();
    float total = partial[0];
    __syncthreads();
    return total;
}

extern "C" __global__ void add_rmsnorm(const float* __restrict__ x, float* __restrict__ residual, int has_residual,
                                       const float* __restrict__ weight, float* __restrict__ out, int C, float eps) {
    long long base = (long long)blockIdx.x * C;
    float square_sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float r = x[base + c] + (has_residual ? residual[base + c] : 0.0f);
        residual[base + c] = r;
        square_sum += r * r;
    }
    float scale = rsqrtf(block_sum(square_sum) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[base + c] = residual[base + c] * scale * weight[c];
}

extern "C" __global__ void qkv_rope(const float* __restrict__ qkv, const int* __restrict__ positions,
                                    const float* __restrict__ cos_table, const float* __restrict__ sin_table,
                                    float* __restrict__ q, float* __restrict__ k, float* __restrict__ v,
                                    int H, int Hkv, int D) {
    int n = blockIdx.x, half = D / 2;
    const float* row = qkv + (long long)n * (H + 2 * Hkv) * D;
    const float* cos_row = cos_table + (long long)positions[n] * half;
    const float* sin_row = sin_table + (long long)positions[n] * half;
    // rotate (head, i) pairs of q and k; copy v
    for (int idx = threadIdx.x; idx < (H + Hkv) * half; idx += blockDim.x) {
        int head = idx / half, i = idx % half;
        float x1 = row[head * D + i], x2 = row[head * D + i + half];
        float c = cos_row[i], s = sin_row[i];
        float* dst = head < H ? q + ((long long)n * H + head) * D : k + ((long long)n * Hkv + head - H) * D;
        dst[i] = x1 * c - x2 * s;
        dst[i + half] = x2 * c + x1 * s;
    }
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x) v[(long long)n * Hkv * D + idx] = row[(H + Hkv) * D + idx];
}

extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, float* __restrict__ out, int N, int I) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * I) return;
    long long n = idx / I, i = idx % I;
    float gate = gate_up[n * 2 * I + i], up = gate_up[n * 2 * I + I + i];
    out[idx] = gate / (1.0f + __expf(-gate)) * up;
}
