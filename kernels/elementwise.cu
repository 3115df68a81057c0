// Per-token ops between the GEMMs. Each reads the fp32 output of the GEMM before it and writes the next
// GEMM's input in the storage type (bf16, or fp32 in exact mode).
//
// embedding:     out[n, :] = table[tokens[n], :]
//   table store_t [V, C], tokens int32 [N], out float [N, C].                        grid (N), block 256.
// add_rmsnorm:   r = x + residual (residual <- r; r = x when has_residual = 0)
//                out = r / sqrt(mean(r^2) + eps) * weight
//   x float [N, C], residual float [N, C], weight float [C], out store_t [N, C].
//                                                                         grid (N), block 1024 (one row each);
//                rows of up to NORM_HELD x 1024 stay in registers between the sum and the scaling, their loads
//                all in flight at once (a loop over the row would wait an L2 round trip per element).
// rope_write_kv: qkv float [N, (H + 2 Hkv) D] (q heads | k heads | v heads); rotate pairs (i, i + D/2) of every
//                q and k head by angle positions[n] * inv_freq[i] (Hugging Face rotate_half):
//                x1' = x1 cos - x2 sin,  x2' = x2 cos + x1 sin  (cos/sin float [positions, D/2] tables)
//                q_out[n] = rotated q;  k/v of row n go to cache slot slots[n] (page slot / P, row slot % P;
//                slot < 0: not written). caches store_t [NP, Hkv, P, D].
//                grid (N, ceil(((H + Hkv) D / 2 + Hkv D) / 256)), block 256: a thread per rotated pair or
//                V element, so every load of a row is in flight at once.
// silu_mul:      out[n, i] = gate / (1 + exp(-gate)) * up,  gate = gate_up[n, i], up = gate_up[n, I + i]
//   gate_up float [N, 2I], out store_t [N, I].                              grid (N, ceil(I / 256)), block 256.
// NumPy reference: numpy_backend.embedding, add_rmsnorm, split_qkv_rope + write_kv, silu_mul.
// Tests: tests/test_cuda_kernels.py.
#include "storage.cuh"
#include "pdl.cuh"

extern "C" __global__ void embedding(const store_t* __restrict__ table, const int* __restrict__ tokens,
                                     float* __restrict__ out, int C) {
    pdl_begin();
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

#define NORM_HELD 8  // values a thread holds across the block sum (rows of up to 8192)

extern "C" __global__ void add_rmsnorm(const float* __restrict__ x, float* __restrict__ residual,
                                       int has_residual, const float* __restrict__ weight, store_t* __restrict__ out,
                                       int C, float eps) {
    pdl_trigger();
    long long base = (long long)blockIdx.x * C;
    float square_sum = 0.0f;
    if (C <= NORM_HELD * (int)blockDim.x) {
        float held[NORM_HELD], scaled_by[NORM_HELD];
#pragma unroll
        for (int k = 0; k < NORM_HELD; k++) {  // no kernel writes the weight (ptxas issues these loads after the wait, beside x's)
            const int c = threadIdx.x + k * blockDim.x;
            scaled_by[k] = c < C ? weight[c] : 0.0f;
        }
        pdl_wait();
#pragma unroll
        for (int k = 0; k < NORM_HELD; k++) {
            const int c = threadIdx.x + k * blockDim.x;
            held[k] = c < C ? x[base + c] + (has_residual ? residual[base + c] : 0.0f) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < NORM_HELD; k++) {  // the same terms in the same order as the loop below
            const int c = threadIdx.x + k * blockDim.x;
            if (c < C) residual[base + c] = held[k], square_sum += held[k] * held[k];
        }
        float scale = rsqrtf(block_sum(square_sum) / C + eps);
#pragma unroll
        for (int k = 0; k < NORM_HELD; k++) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c < C) out[base + c] = to_store(held[k] * scale * scaled_by[k]);
        }
        return;
    }
    pdl_wait();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float r = x[base + c] + (has_residual ? residual[base + c] : 0.0f);
        residual[base + c] = r;
        square_sum += r * r;
    }
    float scale = rsqrtf(block_sum(square_sum) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[base + c] = to_store(residual[base + c] * scale * weight[c]);
}

extern "C" __global__ void rope_write_kv(const float* __restrict__ qkv,
                                         const int* __restrict__ positions, const float* __restrict__ cos_table,
                                         const float* __restrict__ sin_table, const int* __restrict__ slots,
                                         float* __restrict__ q_out, store_t* __restrict__ k_cache,
                                         store_t* __restrict__ v_cache, int H, int Hkv, int D, int P) {
    pdl_trigger();
    // the plan (slots, positions) and the tables are written before the step's first kernel (pdl.cuh): their
    // loads go before the wait, so only the qkv loads are left on the path after it
    const int n = blockIdx.x, half = D / 2, width = (H + 2 * Hkv) * D, slot = slots[n];
    const int idx = blockIdx.y * blockDim.x + threadIdx.x, pairs = (H + Hkv) * half;
    const long long row = (long long)n * width;
    if (idx < pairs) {
        const int head = idx / half, i = idx % half;
        if (head >= H && slot < 0) return;  // reads and writes nothing: may leave before the wait (pdl.cuh)
        const float c = cos_table[(long long)positions[n] * half + i], s = sin_table[(long long)positions[n] * half + i];
        pdl_wait();
        const float x1 = qkv[row + head * D + i], x2 = qkv[row + head * D + i + half];
        // the contraction written out (NVRTC's choice before the loads moved): left to the compiler it changed
        // with the loads' placement, and the step's bits with it
        const float y1 = __fmaf_rn(x1, c, -__fmul_rn(x2, s)), y2 = __fmaf_rn(x2, c, __fmul_rn(x1, s));
        if (head < H) {
            q_out[((long long)n * H + head) * D + i] = y1;
            q_out[((long long)n * H + head) * D + i + half] = y2;
        } else {
            long long dst = (((long long)(slot / P) * Hkv + head - H) * P + slot % P) * D;
            k_cache[dst + i] = to_store(y1);
            k_cache[dst + i + half] = to_store(y2);
        }
    } else if (idx - pairs < Hkv * D && slot >= 0) {  // V element idx - pairs
        pdl_wait();
        const int e = idx - pairs, h = e / D, d = e % D;
        long long dst = (((long long)(slot / P) * Hkv + h) * P + slot % P) * D + d;
        v_cache[dst] = to_store(qkv[row + (H + Hkv) * D + e]);
    }
}

extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, store_t* __restrict__ out, int I) {
    pdl_begin();
    long long row = (long long)blockIdx.x * 2 * I;
    int i = blockIdx.y * blockDim.x + threadIdx.x;  // many blocks per row: a decode step has N = 1
    if (i >= I) return;
    float gate = gate_up[row + i], up = gate_up[row + I + i];
    out[(long long)blockIdx.x * I + i] = to_store(gate / (1.0f + __expf(-gate)) * up);
}
