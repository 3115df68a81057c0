// Small-M GEMM on tensor cores: y[M, N] = x[M, K] . W[N, K]^T, bf16 operands, fp32 accumulate.
//
// x float [M, K] (rounded to bf16 as it is loaded), W bf16 [N, K] (the checkpoint layout), y float [M, N].
// K must be a multiple of 16 (the launcher checks; every Llama width is).
// mma.sync.m16n8k16.row.col (PTX; NVRTC cannot include <mma.h> here). Fragments, g = lane / 4, t = lane % 4:
//   A (16x16, rows of x):  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B (16x8, k x n):       b0 = (k 2t..2t+1, n g)  b1 = (k 2t+8.., n g)   -> two consecutive bf16 of W row n
//   C (16x8):              c0,c1 = (g, 2t..2t+1)   c2,c3 = (g+8, 2t..)
// Launch: grid (ceil(N / 32), ceil(M / 64)), block 128: warp w owns columns (blockIdx.x * 4 + w) * 8 .. +8
// and the rows blockIdx.y * 64 .. +64 in four m16 tiles, so each weight is read once per 64 rows.
// This is the first correct version; the weight-streaming version (wide loads, several in flight,
// split-K) is the speed issue's work.
// NumPy reference: numpy_backend.linear. Tests: tests/test_cuda_kernels.py.
#include <cuda_bf16.h>

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

extern "C" __global__ void gemm_bf16(const float* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                     float* __restrict__ y, int M, int N, int K) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int n0 = (blockIdx.x * 4 + warp) * 8, m_base = blockIdx.y * 64;
    if (n0 >= N) return;
    int n = n0 + g;
    const __nv_bfloat16* w_row = w + (long long)min(n, N - 1) * K;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
        unsigned b0 = n < N ? *reinterpret_cast<const unsigned*>(w_row + k0 + 2 * t) : 0u;
        unsigned b1 = n < N ? *reinterpret_cast<const unsigned*>(w_row + k0 + 2 * t + 8) : 0u;
#pragma unroll
        for (int mt = 0; mt < 4; mt++) {
            int r0 = m_base + mt * 16 + g, r1 = r0 + 8;
            if (m_base + mt * 16 >= M) break;
            float2 x00 = r0 < M ? *reinterpret_cast<const float2*>(x + (long long)r0 * K + k0 + 2 * t) : make_float2(0, 0);
            float2 x10 = r1 < M ? *reinterpret_cast<const float2*>(x + (long long)r1 * K + k0 + 2 * t) : make_float2(0, 0);
            float2 x01 = r0 < M ? *reinterpret_cast<const float2*>(x + (long long)r0 * K + k0 + 2 * t + 8) : make_float2(0, 0);
            float2 x11 = r1 < M ? *reinterpret_cast<const float2*>(x + (long long)r1 * K + k0 + 2 * t + 8) : make_float2(0, 0);
            unsigned a0 = pack_bf16(x00.x, x00.y), a1 = pack_bf16(x10.x, x10.y);
            unsigned a2 = pack_bf16(x01.x, x01.y), a3 = pack_bf16(x11.x, x11.y);
            asm volatile(
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                : "+f"(acc[mt][0]), "+f"(acc[mt][1]), "+f"(acc[mt][2]), "+f"(acc[mt][3])
                : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        }
    }
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
        int r0 = m_base + mt * 16 + g, r1 = r0 + 8, c = n0 + 2 * t;
        if (r0 < M && c < N) y[(long long)r0 * N + c] = acc[mt][0];
        if (r0 < M && c + 1 < N) y[(long long)r0 * N + c + 1] = acc[mt][1];
        if (r1 < M && c < N) y[(long long)r1 * N + c] = acc[mt][2];
        if (r1 < M && c + 1 < N) y[(long long)r1 * N + c + 1] = acc[mt][3];
    }
}
