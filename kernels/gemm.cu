// Small-M GEMM on tensor cores, streaming the weights: y[M, N] = x[M, K] . W[N, K]^T.
//
// Decode and tree verify have M = B * T <= 64 rows, so the cost is reading W once (N * K * 2 bytes); the
// kernel keeps the whole GPU's weight reads in flight through a cp.async ring in shared memory.
//
// Operands: x bf16 [M, K] (written in bf16 by the op before the GEMM), W bf16 [N, K] (the checkpoint
// layout, y = x W^T), y float [M, N].
//
// gemm_stream_r{R}_k{BK}_s{S} (R = 8, 16, 32, 64 staged x rows; BK = 64 or 128 k per stage; S = 1, 2, 4, 8
// blocks per cluster), K % (BK S) == 0, N K < 2^32 (element offsets are 32-bit):
//   The product is computed transposed, y^T = W x^T, so the weight rows fill the 16-row side of
//   mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 and the few x rows its 8-column side (R / 8 column tiles).
//   Fragments (g = lane / 4, t = lane % 4), read from shared memory with ldmatrix.x4:
//     A (W):   a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//     B (x^T): b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g);   C: c0,c1 = (g, 2t..), c2,c3 = (g+8, 2t..)
//   Launch: grid (ceil(N / 128), S, ceil(M / R)), block 256, cluster (1, S, 1), dynamic shared memory
//   STAGES x (128 + R) x BK x 2 bytes. Block (bx, s, bz) owns weight rows bx*128 .. +128, x rows bz*R .. +R and
//   k range [s K / S, (s+1) K / S). Its 8 warps are 4 row groups of 32 weight rows x 2 halves of each
//   k stage; a stage is W [128, BK] + x [R, BK] in bf16, its 16-byte chunks swizzled (chunk c of row r
//   sits at c ^ (r % 8)) so the 8 rows of every ldmatrix phase and cp.async quarter-warp hit 32 distinct banks.
//   STAGES - 1 stages are in flight while the tensor cores work on the oldest.
//   Reduction, in a fixed order (the same inputs give the same bits): the k-half 1 warps store their
//   sums in shared memory, the k-half 0 warps add theirs, then rank r of the cluster sums rows
//   r * 128 / S .. +128 / S over the S blocks' shared memory (rank order, through distributed shared
//   memory) and writes them to y, coalesced along N. So y is complete when the kernel ends.
// gemm_wgmma_w{WGS}_x{XROWS}_s{S} (gemm_wgmma.cu, sm_90a): up to 64 rows on warpgroup MMA, operands brought by TMA.
// gemm_wgmma_tiles_w{WGS}_x{XROWS} (gemm_wgmma.cu, sm_90a): the same without split-K on persistent blocks, for weights of
//   many more tiles than blocks (the LM heads at 17-64 rows).
// gemm_bf16: the plain version for any K that is a multiple of 16 (one 4-byte weight load per fragment).
// What both families share (split-K cluster sums, the split RMSNorm, the gated epilogue): gemm.cuh.
// NumPy reference: numpy_backend.linear (on bf16-rounded x and W). Tests: tests/test_cuda_kernels.py.
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "pdl.cuh"
#include "gemm.cuh"

namespace stream {
constexpr int ROWS = 128;            // weight rows (columns of y) per block
constexpr int THREADS = 256;
constexpr int RED_STRIDE = ROWS + 4;  // floats per x row of the reduction buffer (+4: the warps' stores hit distinct banks)
}  // namespace stream

__device__ __forceinline__ int swizzle(int row, int chunk) { return chunk ^ (row & 7); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned shared_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address));
}

// GLU (gemm_stream_glu_*): W is the fused [gate; up] weight [2I, K], N = I, and out is act bf16 [M, I]; block bx
// stages gate rows bx 64 .. +64 as its rows 0-63 and the matching up rows as 64-127 (store_cluster_glu).
template <int R, int S, int BK, int STAGES, bool GLU, NormRole NORM>
__device__ __forceinline__ void gemm_stream_body(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                                 void* __restrict__ out, int M, int N, int K, const GemmNorm& norm) {
    using namespace stream;
    constexpr int NT = R / 8;                                  // 8-column mma tiles over the staged x rows
    constexpr int CHUNKS = BK / 8, ROW_STEP = THREADS / CHUNKS;  // 16-byte chunks per staged row; a thread's row step
    constexpr int W_BYTES = ROWS * BK * 2, STAGE_BYTES = W_BYTES + R * BK * 2;
    constexpr int W_LOADS = ROWS * CHUNKS / THREADS, X_LOADS = (R * CHUNKS + THREADS - 1) / THREADS;
    extern __shared__ __align__(128) unsigned char shared[];  // STAGES x (W [128, BK] | x [R, BK]), then the reduction
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int group = warp & 3, half = warp >> 2;             // weight rows group*32 .. +32; k chunks half*4 .. +4
    const int n0 = blockIdx.x * (GLU ? ROWS / 2 : ROWS), k_len = K / S, k_begin = blockIdx.y * k_len, steps = k_len / BK;
    const int m_base = blockIdx.z * R;
    x += (long long)m_base * K;
    M = min(M - m_base, R);
    const unsigned base = (unsigned)__cvta_generic_to_shared(shared);

    // This thread copies chunk c of staged rows r0 + ROW_STEP j (the same swizzle for every j: ROW_STEP % 8 == 0).
    const int c = tid % CHUNKS, r0 = tid / CHUNKS;
    const unsigned chunk_offset = (r0 * CHUNKS + swizzle(r0, c)) * 16;
    unsigned w_src[W_LOADS], x_src[X_LOADS];                  // element offsets (32-bit: fewer registers than pointers)
#pragma unroll
    for (int j = 0; j < W_LOADS; j++) {
        const int r = r0 + ROW_STEP * j;  // the block's weight row (rows past N repeat the last: their sums are not stored)
        const int row = !GLU ? min(n0 + r, N - 1) : r < ROWS / 2 ? min(n0 + r, N - 1) : N + min(n0 + r - ROWS / 2, N - 1);
        w_src[j] = (unsigned)row * K + k_begin + c * 8;
    }
#pragma unroll
    for (int j = 0; j < X_LOADS; j++) x_src[j] = (unsigned)min(r0 + ROW_STEP * j, M - 1) * K + k_begin + c * 8;
    auto load_weights = [&](int step) {
        unsigned ws = base + (step % STAGES) * STAGE_BYTES + chunk_offset;
        unsigned k = step * BK;
#pragma unroll
        for (int j = 0; j < W_LOADS; j++) cp_async16(ws + j * ROW_STEP * BK * 2, w + (w_src[j] + k), 16);
    };
    auto load_x = [&](int step) {
        unsigned xs = base + (step % STAGES) * STAGE_BYTES + chunk_offset + W_BYTES;
        unsigned k = step * BK;
#pragma unroll
        for (int j = 0; j < X_LOADS; j++)
            if (r0 + ROW_STEP * j < R) cp_async16(xs + j * ROW_STEP * BK * 2, x + (x_src[j] + k), r0 + ROW_STEP * j < M ? 16 : 0);
    };

    // ldmatrix rows: A (weights) lane l gives row l % 16 of a 16-row tile, k chunk + l / 16 (matrices a0..a3);
    // B (x) lane l gives row l % 8 of an 8-row tile, chunk + l / 8 (b0, b1 of k 0-15, then of k 16-31).
    const int a_row = group * 32 + (lane & 15), a_chunk = half * CHUNKS / 2 + (lane >> 4);
    const int b_row = lane & 7, b_chunk = half * CHUNKS / 2 + (lane >> 3);
    float acc[2][NT][4] = {};
    // The ring's first weight stages go out before the wait for the previous kernel (kernels/pdl.cuh): no
    // kernel writes W, while x is the previous kernel's output. The first commit group holds them all.
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
        if (s < steps) load_weights(s);
    pdl_wait();
    NormPrefetch<THREADS> pre;  // the rows' partial sums of the norm before this product (this row tile's)
    const float* partials = norm.scale_partials + (long long)m_base * norm.scale_blocks;
    if constexpr (NORM == NORM_FINISH) pre.partials(partials, M * norm.scale_blocks);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < steps) load_x(s);
        cp_async_commit();  // empty groups keep the count uniform
    }
    for (int step = 0; step < steps; step++) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of `step` landed
        __syncthreads();                                       // everyone's did; and stage step - 1 is free to refill
        if (step + STAGES - 1 < steps) load_weights(step + STAGES - 1), load_x(step + STAGES - 1);
        cp_async_commit();
        // The block's last copies are out: the next kernel may launch, so that a GEMM behind this one copies its first
        // weight stages while these blocks drain their ring (notes/gemm_trigger_ab_h100_stop34.log: 8B O at one row
        // 81 -> 88% of copy bandwidth, qkv 86 -> 93%; triggering first thing, or earlier in the loop, was slower).
        if (step + STAGES >= steps) pdl_trigger();
        const unsigned ws = base + (step % STAGES) * STAGE_BYTES, xs = ws + W_BYTES;
#pragma unroll
        for (int u = 0; u < BK / 64; u++) {                    // the warp's half of the stage, 32 k at a time
            unsigned a[2][2][4];                                   // [row tile][k 0-15, 16-31][a0..a3]
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int k16 = 0; k16 < 2; k16++) {
                    int r = a_row + mt * 16;
                    ldmatrix_x4(a[mt][k16], ws + (r * CHUNKS + swizzle(r, a_chunk + 4 * u + 2 * k16)) * 16);
                }
            // Column tiles in groups of up to 4, k 0-15 of every (row tile, column tile) pair before k 16-31, so
            // 2 x 4 independent mmas separate each mma from the one that adds to its result.
            constexpr int GROUP = NT < 4 ? NT : 4;
#pragma unroll
            for (int n1 = 0; n1 < NT; n1 += GROUP) {
                unsigned b[GROUP][4];
#pragma unroll
                for (int j = 0; j < GROUP; j++) {
                    int r = (n1 + j) * 8 + b_row;
                    ldmatrix_x4(b[j], xs + (r * CHUNKS + swizzle(r, b_chunk + 4 * u)) * 16);
                }
#pragma unroll
                for (int k16 = 0; k16 < 2; k16++)
#pragma unroll
                    for (int j = 0; j < GROUP; j++)
#pragma unroll
                        for (int mt = 0; mt < 2; mt++)
                            mma16816(acc[mt][n1 + j], a[mt][k16][0], a[mt][k16][1], a[mt][k16][2], a[mt][k16][3], b[j][2 * k16], b[j][2 * k16 + 1]);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();                                           // the ring is free: it becomes the reduction buffer

    float* red = reinterpret_cast<float*>(shared);            // [R][RED_STRIDE]: red[m][row] = y[m][n0 + row] of this block
    for (int pass = 1; pass >= 0; pass--) {                    // k-half 1 stores, then k-half 0 adds
        if (half == pass) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float& slot = red[(nt * 8 + 2 * t + (i & 1)) * RED_STRIDE + group * 32 + mt * 16 + g + 8 * (i >> 1)];
                        slot = pass ? acc[mt][nt][i] : slot + acc[mt][nt][i];
                    }
        }
        __syncthreads();
    }
    float* scales = nullptr;  // the norm before this product (GemmNorm): its rows' scales, after the reduction buffer
    if constexpr (NORM == NORM_FINISH) {
        scales = red + R * RED_STRIDE;
        row_scales<THREADS>(norm, partials, pre, M, K, scales + R, scales);
    }
    if constexpr (GLU)
        store_cluster_glu<S, R, RED_STRIDE, THREADS, ROWS / 2>(red, reinterpret_cast<__nv_bfloat16*>(out) + (long long)m_base * N, M, N, n0,
                                                              scales);
    else
        store_cluster_sums<S, ROWS, R, RED_STRIDE, THREADS>(red, reinterpret_cast<float*>(out) + (long long)m_base * N, M, N, n0,
                                                            scales);
}

// Ring shapes measured best (notes/gemm_stages_h100.log): k 128 x 3 stages for up to 16 rows (longer runs
// per weight row), k 64 x 4 for more (k 128 would leave one block per SM there). cuda_backend.stream_shape mirrors this.
// ROLE: empty (a plain product) or _finish (NormRole).
#define GEMM_STREAM(R, BK, STAGES, ROLE, S, CLUSTER)                                                                   \
    extern "C" __global__ void __launch_bounds__(256, 2) CLUSTER gemm_stream_r##R##_k##BK##_s##S##ROLE(               \
        const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int M, int N, int K NORM_PARAMS_##ROLE) {            \
        gemm_stream_body<R, S, BK, STAGES, false, NORM_ROLE_##ROLE>(x, w, y, M, N, K, NORM_ARGS_##ROLE);              \
    }
#define GEMM_STREAM_CLUSTERS(R, BK, STAGES, ...) SPLIT_K_CLUSTERS(GEMM_STREAM, R, BK, STAGES, __VA_ARGS__)
GEMM_STREAM_CLUSTERS(8, 128, 3, )
GEMM_STREAM_CLUSTERS(16, 128, 3, )
GEMM_STREAM_CLUSTERS(8, 64, 4, )   // K a multiple of 64, not of 128
GEMM_STREAM_CLUSTERS(16, 64, 4, )
GEMM_STREAM_CLUSTERS(32, 64, 4, )
GEMM_STREAM_CLUSTERS(64, 64, 4, )
GEMM_STREAM_CLUSTERS(8, 128, 3, _finish)
GEMM_STREAM_CLUSTERS(16, 128, 3, _finish)
// gemm_stream_glu_r{R}_k128_s{S}: act bf16 [M, I] = silu(x W_gate^T) * (x W_up^T) from the fused [2I, K] weight, up to
// 16 rows (the gate/up product of a decode step where gemm_wgmma_glu_w* does not serve): grid (ceil(I / 64), S,
// ceil(M / R)), otherwise gemm_stream's launch. The [M, 2I] fp32 product never reaches memory, and silu_mul's
// launch is saved.
#define GEMM_STREAM_GLU(R, BK, STAGES, ROLE, S, CLUSTER)                                                               \
    extern "C" __global__ void __launch_bounds__(256, 2) CLUSTER gemm_stream_glu_r##R##_k##BK##_s##S##ROLE(           \
        const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* act, int M, int I, int K NORM_PARAMS_##ROLE) {  \
        gemm_stream_body<R, S, BK, STAGES, true, NORM_ROLE_##ROLE>(x, w, act, M, I, K, NORM_ARGS_##ROLE);             \
    }
SPLIT_K_CLUSTERS(GEMM_STREAM_GLU, 8, 128, 3, )
SPLIT_K_CLUSTERS(GEMM_STREAM_GLU, 16, 128, 3, )
SPLIT_K_CLUSTERS(GEMM_STREAM_GLU, 8, 128, 3, _finish)
SPLIT_K_CLUSTERS(GEMM_STREAM_GLU, 16, 128, 3, _finish)

// C fragments of four m16 tiles (rows m_base ..) and one n8 tile (columns n0 ..) to y [M, N], bounds-checked.
__device__ __forceinline__ void store_tiles(float* __restrict__ y, const float (*acc)[4], int m_base, int n0, int M, int N,
                                            int g, int t) {
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
        int r0 = m_base + mt * 16 + g, r1 = r0 + 8, c = n0 + 2 * t;
        if (r0 < M && c < N) y[(long long)r0 * N + c] = acc[mt][0];
        if (r0 < M && c + 1 < N) y[(long long)r0 * N + c + 1] = acc[mt][1];
        if (r1 < M && c < N) y[(long long)r1 * N + c] = acc[mt][2];
        if (r1 < M && c + 1 < N) y[(long long)r1 * N + c + 1] = acc[mt][3];
    }
}

// Launch: grid (ceil(N / 32), ceil(M / 64)), block 128: warp w owns columns (blockIdx.x * 4 + w) * 8 .. +8.
extern "C" __global__ void gemm_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                     float* __restrict__ y, int M, int N, int K) {
    pdl_wait();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int n0 = (blockIdx.x * 4 + warp) * 8, m_base = blockIdx.y * 64;
    if (n0 >= N) return;
    const __nv_bfloat16* w_row = w + (long long)min(n0 + g, N - 1) * K;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
        unsigned b0 = *reinterpret_cast<const unsigned*>(w_row + k0 + 2 * t);
        unsigned b1 = *reinterpret_cast<const unsigned*>(w_row + k0 + 2 * t + 8);
#pragma unroll
        for (int mt = 0; mt < 4; mt++) {
            int r0 = m_base + mt * 16 + g, r1 = r0 + 8;
            if (m_base + mt * 16 >= M) break;
            const unsigned* x0 = reinterpret_cast<const unsigned*>(x + (long long)r0 * K + k0 + 2 * t);
            const unsigned* x1 = reinterpret_cast<const unsigned*>(x + (long long)r1 * K + k0 + 2 * t);
            mma16816(acc[mt], r0 < M ? x0[0] : 0u, r1 < M ? x1[0] : 0u, r0 < M ? x0[4] : 0u, r1 < M ? x1[4] : 0u, b0, b1);
        }
    }
    store_tiles(y, acc, m_base, n0, M, N, g, t);
}
