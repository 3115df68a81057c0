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
// gemm_wgmma_w{WGS}_x{XROWS}_s{S} (below, sm_90a): up to 64 rows on warpgroup MMA, operands brought by TMA.
// gemm_wgmma_tiles_w{WGS}_x{XROWS} (below, sm_90a): the same without split-K on persistent blocks, for weights of
//   many more tiles than blocks (the LM heads at 17-64 rows).
// gemm_bf16: the plain version for any K that is a multiple of 16 (one 4-byte weight load per fragment).
// NumPy reference: numpy_backend.linear (on bf16-rounded x and W). Tests: tests/test_cuda_kernels.py.
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "cluster.cuh"
#include "hopper.cuh"
#include "pdl.cuh"
#include "warp.cuh"

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

// One y element of a split-K cluster: the S blocks' partial sums at `local` (the same offset in every block's
// shared memory) added in rank order through distributed shared memory, so the same inputs give the same bits.
template <int S>
__device__ __forceinline__ float cluster_sum(const float* local) {
    if constexpr (S == 1) return *local;
    float sum = load_cluster(local, 0);
#pragma unroll
    for (int q = 1; q < S; q++) sum += load_cluster(local, q);
    return sum;
}

// The RMSNorm between two products, split so that neither waits for a grid-wide sum (GemmNorm; rows of N = K'
// columns, h = r / sqrt(mean(r^2) + eps) * weight, r = y + residual the residual stream):
// - the product before it (gemm_wgmma, NORM_BEGIN) adds the residual to its columns of y (r -> residual_out),
//   writes x' = bf16(r * weight) (x_out), and each block the sum of its columns' r^2 of each row (warp_row_sum)
//   (partials_out [M][blocks]), and leaves at once;
// - the product after it (gemm_wgmma, gemm_stream, their gated forms; NORM_FINISH) runs on x' and, at its
//   end, scales each row's sums by s = rsqrt(sum of the row's partials (warp_row_sum) / K + eps): y = s (x' W^T)
//   (the gated end: silu(s gate) * (s up)).
// So the norm's launch, and the waits for it, are gone, and no block waits for another. h W^T is formed as
// s (bf16(r weight) W^T) instead of bf16(r s weight) W^T: the same rounding, at another place (not add_rmsnorm's
// bits). Why: the two norm launches a layer were 5.6% of the 8B decode step; split, that step went 4.300 -> 4.115 ms
// on an H200 (notes/norm_split_h200_stop48.log). At 16 rows it was slower: each block of the product after loads
// 16 x 128 partials, most at its end (read as one a row, timing only, it was 1.9% faster), so the backend splits up
// to 4 rows.
struct GemmNorm {
    const float* scale_partials;  // the product after: the rows' partial sums [M][scale_blocks]
    int scale_blocks;
    float eps;
    const float* residual;        // the product before: [M, N] or nullptr (the first layer)
    float* residual_out;          // [M, N]
    const float* weight;          // [N]
    __nv_bfloat16* x_out;         // [M, N]: x'
    float* partials_out;          // [M][gridDim.x S]
};
// A product's part in it, a template argument, so that a plain product's kernel has none of this code: the kernels
// that finish a norm are the plain ones' names with "_finish" and three more arguments, those that begin one with
// "_begin" and five (NORM_PARAMS_<suffix>). Built only where the split serves (cuda_backend.norm_split and
// finishes_norm): gemm_wgmma of one warpgroup in 16-row boxes, gemm_stream and gemm_stream_glu in k 128 stages,
// gemm_wgmma_glu.
enum NormRole { NORM_NONE, NORM_FINISH, NORM_BEGIN };
#define NORM_ROLE_ NORM_NONE
#define NORM_PARAMS_
#define NORM_ARGS_ GemmNorm{}
#define NORM_ROLE__finish NORM_FINISH
#define NORM_PARAMS__finish , const float *scale_partials, int scale_blocks, float eps
#define NORM_ARGS__finish GemmNorm{scale_partials, scale_blocks, eps, nullptr, nullptr, nullptr, nullptr, nullptr}
#define NORM_ROLE__begin NORM_BEGIN
#define NORM_PARAMS__begin , const float *residual, float *residual_out, const float *norm_weight, __nv_bfloat16 *x_out, float *partials_out
#define NORM_ARGS__begin GemmNorm{nullptr, 0, 0.0f, residual, residual_out, norm_weight, x_out, partials_out}

// The sum of values[0 .. count) in one fixed order, by a warp: lane l adds values l, l + 32, .. in turn, then a xor
// butterfly; every lane gets it, and every block that sums the same values gets the same bits.
__device__ __forceinline__ float warp_row_sum(const float* values, int count) {
    float sum = 0.0f;
    for (int i = threadIdx.x % 32; i < count; i += 32) sum += values[i];
    return warp_sum(sum);
}

// What a thread loads right after pdl_wait for the norm work at the kernel's end, so that the L2 round trip runs
// under the products: in the product after a norm, its share of the rows' partial sums (p = tid + j THREADS); in
// the product before one, the residual and weight of its store items (store_cluster_norm's e = tid + j THREADS).
// Up to NORM_PREFETCH values each; the rest are loaded at the end.
#define NORM_PREFETCH 4
template <int THREADS>
struct NormPrefetch {
    float a[NORM_PREFETCH], b[NORM_PREFETCH];
    __device__ __forceinline__ void partials(const float* from, int count) {
#pragma unroll
        for (int j = 0; j < NORM_PREFETCH; j++) {
            const int p = threadIdx.x + j * THREADS;
            a[j] = p < count ? from[p] : 0.0f;
        }
    }
    __device__ __forceinline__ void residual(const GemmNorm& g, int M, int N, int col0, int slice, int items) {
#pragma unroll
        for (int j = 0; j < NORM_PREFETCH; j++) {
            const int e = threadIdx.x + j * THREADS, m = e / slice, n = col0 + e % slice;
            const bool item = e < items && m < M && n < N;
            a[j] = item && g.residual ? g.residual[(long long)m * N + n] : 0.0f;
            b[j] = item ? g.weight[n] : 0.0f;
        }
    }
};

// The product after: scales[m] for rows m < M (shared memory), from the partials (`from`, prefetched in part)
// through `buffer` (M scale_blocks floats of shared memory), then each row summed by a warp (warp_row_sum).
template <int THREADS>
__device__ __forceinline__ void row_scales(const GemmNorm& g, const float* from, const NormPrefetch<THREADS>& pre, int M, int K,
                                           float* buffer, float* scales) {
    const int count = M * g.scale_blocks;
#pragma unroll
    for (int j = 0; j < NORM_PREFETCH; j++) {
        const int p = threadIdx.x + j * THREADS;
        if (p < count) buffer[p] = pre.a[j];
    }
#pragma unroll 8
    for (int p = threadIdx.x + NORM_PREFETCH * THREADS; p < count; p += THREADS) buffer[p] = from[p];
    __syncthreads();
    for (int m = threadIdx.x / 32; m < M; m += THREADS / 32) {  // a warp a row (not a thread: 128 dependent adds)
        const float sum = warp_row_sum(buffer + m * g.scale_blocks, g.scale_blocks);
        if (threadIdx.x % 32 == 0) scales[m] = rsqrtf(sum / K + g.eps);
    }
    __syncthreads();
}

// The end of a split-K block, for gemm_stream and gemm_wgmma: red [XROWS][RED_STRIDE] holds this block's sums
// red[m][row] of y[m][n0 + row]; cluster rank r adds rows r ROWS / S .. of the S blocks' buffers (cluster_sum) and
// writes them to y, coalesced along N. With S = 1 the block writes its own sums.
// scales: the rows' norm scales (row_scales), or nullptr.
template <int S, int ROWS, int XROWS, int RED_STRIDE, int THREADS>
__device__ __forceinline__ void store_cluster_sums(const float* red, float* __restrict__ y, int M, int N, int n0,
                                                   const float* scales = nullptr) {
    if constexpr (S > 1) cluster_sync();  // every block's sums are in its shared memory
    constexpr int SLICE = ROWS / S;
    const int rank = blockIdx.y;  // the cluster spans grid y, so this is the cluster rank
    for (int e = threadIdx.x; e < SLICE * XROWS; e += THREADS) {
        const int m = e / SLICE, row = rank * SLICE + e % SLICE;
        if (m >= M || n0 + row >= N) continue;
        const float sum = cluster_sum<S>(red + m * RED_STRIDE + row);
        y[(long long)m * N + n0 + row] = scales ? scales[m] * sum : sum;
    }
    if constexpr (S > 1) cluster_sync();  // no block leaves while another reads its shared memory
}

// The product before a norm (GemmNorm, x_out set): as store_cluster_sums, r = y + residual to residual_out, x' to
// x_out, and the block's partial sums of r^2 (its columns by warp_row_sum; squares: XROWS x ROWS / S floats of
// shared memory) to partials_out[m][bx S + rank].
template <int S, int ROWS, int XROWS, int RED_STRIDE, int THREADS>
__device__ __forceinline__ void store_cluster_norm(const float* red, const GemmNorm& g, const NormPrefetch<THREADS>& pre, int M,
                                                   int N, int n0, float* squares) {
    if constexpr (S > 1) cluster_sync();
    constexpr int SLICE = ROWS / S, ITEMS = (SLICE * XROWS + THREADS - 1) / THREADS;
    const int rank = blockIdx.y, block = blockIdx.x * S + rank;
#pragma unroll
    for (int j = 0; j < ITEMS; j++) {
        const int e = threadIdx.x + j * THREADS, m = e / SLICE, row = rank * SLICE + e % SLICE;
        if (e >= SLICE * XROWS) break;
        float square = 0.0f;
        if (m < M && n0 + row < N) {
            const long long at = (long long)m * N + n0 + row;
            const float residual = j < NORM_PREFETCH ? pre.a[j] : g.residual ? g.residual[at] : 0.0f;
            const float weight = j < NORM_PREFETCH ? pre.b[j] : g.weight[n0 + row];
            const float r = cluster_sum<S>(red + m * RED_STRIDE + row) + residual;
            g.residual_out[at] = r;
            g.x_out[at] = __float2bfloat16_rn(r * weight);
            square = r * r;
        }
        squares[e] = square;
    }
    __syncthreads();
    for (int m = threadIdx.x / 32; m < M; m += THREADS / 32) {  // a warp a row
        const float sum = warp_row_sum(squares + m * SLICE, SLICE);
        if (threadIdx.x % 32 == 0) g.partials_out[(long long)m * gridDim.x * S + block] = sum;
    }
    if constexpr (S > 1) cluster_sync();  // no block leaves while another reads its shared memory
}

// The gated end (GLU) of a block whose 2 HALF weight rows are HALF gate rows (columns c0 .. c0 + HALF - 1 of act)
// and the HALF matching up rows: red[m][j] holds gate column c0 + j, red[m][HALF + j] its up column. Rank r of the
// cluster writes act [M, I] columns c0 + r HALF / S .. in bf16 as silu(gate) * up, the expression of elementwise.cu's
// silu_mul on the same fp32 sums, so the bits are those of the GEMM followed by silu_mul.
template <int S, int XROWS, int RED_STRIDE, int THREADS, int HALF>
__device__ __forceinline__ void store_cluster_glu(const float* red, __nv_bfloat16* __restrict__ act, int M, int I, int c0,
                                                  const float* scales = nullptr) {
    if constexpr (S > 1) cluster_sync();
    constexpr int SLICE = HALF / S;
    const int rank = blockIdx.y;
    for (int e = threadIdx.x; e < SLICE * XROWS; e += THREADS) {
        const int m = e / SLICE, j = rank * SLICE + e % SLICE;
        if (m >= M || c0 + j >= I) continue;
        float gate = cluster_sum<S>(red + m * RED_STRIDE + j), up = cluster_sum<S>(red + m * RED_STRIDE + HALF + j);
        if (scales) gate *= scales[m], up *= scales[m];
        act[(long long)m * I + c0 + j] = __float2bfloat16_rn(gate / (1.0f + __expf(-gate)) * up);
    }
    if constexpr (S > 1) cluster_sync();
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
// KERNEL(..., S, CLUSTER) for every split-K cluster size along grid y (1, 2, 4, 8), for gemm_stream and gemm_wgmma
#define SPLIT_K_CLUSTERS(KERNEL, ...)                    \
    KERNEL(__VA_ARGS__, 1, )                              \
    KERNEL(__VA_ARGS__, 2, __cluster_dims__(1, 2, 1))     \
    KERNEL(__VA_ARGS__, 4, __cluster_dims__(1, 4, 1))     \
    KERNEL(__VA_ARGS__, 8, __cluster_dims__(1, 8, 1))
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

// ------------------------------------------------------------------------------------------------
// gemm_wgmma_w{WGS}_x{XROWS}_s{S} (sm_90a): the same product for M <= 64 rows, on warpgroup MMA with weights
// and x brought by the tensor memory accelerator. y^T = W x^T: a block's 64 WGS weight rows are the M side of WGS
// warpgroups' wgmma.m64n{XROWS}k16 (64 rows each) and the x rows (XROWS = 16, 32 or 64, zero past M) the N side; both
// operands K-major from shared memory, 128-byte swizzled as TMA writes them. A producer warp fills a STAGES-deep
// ring (W [64 WGS][64 k] and x [XROWS][64 k] a stage) under full / empty mbarriers; each warpgroup keeps one
// stage's products in flight. These products are bound by how many weight bytes are in flight, so x takes 32-row
// boxes where M allows: they leave room for more weight stages (notes/gemm_xrows_ab_h100_stop37.log). Split-K
// over a cluster of S blocks, summed in a fixed order through distributed shared memory as in gemm_stream, so y
// is complete, with the same bits every time, when the kernel ends.
// w_map: W [N, K] in 64 x 64 WGS boxes; x_map: x [M, K] in 64 x XROWS boxes (rows past M read as zeros);
// K % (64 S) == 0. Launch: grid (ceil(N / (64 WGS)), S), cluster (1, S, 1), block 128 WGS + 32, dynamic shared
// memory STAGES x (64 WGS + XROWS) x 128 + 1024 (alignment) + 16 STAGES (barriers).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// GLU (the gated variant, WGS even, S = 1): W is the fused [gate; up] weight [2I, K] and N = I, read in 64-row
// boxes. A block's first WGS / 2 warpgroups take gate rows n0 .. n0 + 32 WGS - 1 and the others the matching up
// rows I + n0 .., so the epilogue writes
// act [M, I] = silu(gate) * up in bf16 (the expression of elementwise.cu's silu_mul, so the bits are those of
// the GEMM followed by silu_mul) and the fp32 [M, 2I] product never reaches memory.
// The ring of gemm_wgmma and gemm_wgmma_tiles in dynamic shared memory, 1024-aligned for TMA's 128-byte swizzle:
// STAGES x W [ROWS][64 k], STAGES x x [XROWS][64 k] (bf16), then a full and an empty barrier a stage. Ring step i
// uses stage i % STAGES: the producer's TMA fills it (its full barrier expects the weights' and x's bytes and the
// producer's arrival), the 4 WGS consumer warps release it (its empty barrier).
template <int ROWS, int XROWS, int STAGES>
struct WgmmaRing {
    static constexpr int BK = 64, W_TILE = ROWS * BK, X_TILE = XROWS * BK;  // elements per stage
    unsigned char* base;
    __nv_bfloat16 *w, *x;
    unsigned long long *full, *empty;

    __device__ explicit WgmmaRing(unsigned char* shared)
        : base(shared + (1024 - (unsigned)__cvta_generic_to_shared(shared) % 1024) % 1024),
          w(reinterpret_cast<__nv_bfloat16*>(base)), x(w + STAGES * W_TILE),
          full(reinterpret_cast<unsigned long long*>(x + STAGES * X_TILE)), empty(full + STAGES) {}

    __device__ void init(int consumer_warps) {  // then __syncthreads
        if (threadIdx.x == 0)
            for (int i = 0; i < STAGES; i++) mbarrier_init(full + i, 1), mbarrier_init(empty + i, consumer_warps);
    }
    __device__ __nv_bfloat16* expect(int i) {  // step i's stage, its full barrier told the bytes to come
        mbarrier_expect_bytes(full + i % STAGES, (W_TILE + X_TILE) * 2);
        return w + i % STAGES * W_TILE;
    }
    __device__ void load_x(const TensorMap* x_map, int i, int k) {  // after the step's weights: the producer's arrival
        tma_load(x + i % STAGES * X_TILE, x_map, k, 0, full + i % STAGES);
        mbarrier_arrive(full + i % STAGES);
    }
    __device__ void wait_empty(int i) { mbarrier_wait(empty + i % STAGES, (i / STAGES - 1) & 1); }  // step i - STAGES read
    __device__ void release(int i, int lane) {  // a consumer warp is done with step i's stage
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty + i % STAGES);
    }
    // A consumer warpgroup's products of step i on its 64 weight rows: the stage's wait, 4 wgmma over its 64 k, the
    // commit, then the wait for step i - 1's products (whose stage the caller may then release).
    template <int NT>
    __device__ void products(float (&acc)[NT][4], int i, int group) const {
        const int slot = i % STAGES;
        mbarrier_wait(full + slot, (i / STAGES) & 1);
        const __nv_bfloat16* w_tile = w + slot * W_TILE + group * 64 * BK;
        const __nv_bfloat16* x_tile = x + slot * X_TILE;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
            wgmma_ss<XROWS>(acc, smem_descriptor(w_tile + ks * 16, 16, 1024), smem_descriptor(x_tile + ks * 16, 16, 1024), 1);
        wgmma_commit();
        wgmma_wait<1>();
    }
};

template <int WGS, int XROWS, int STAGES, int S, bool GLU, NormRole NORM>
__device__ void gemm_wgmma_body(const TensorMap& w_map, const TensorMap& x_map, void* __restrict__ out, int M, int N, int K,
                                const GemmNorm& norm) {
    static_assert(!GLU || (WGS % 2 == 0 && S == 1), "the gated epilogue pairs gate and up warpgroups' rows in one block");
    constexpr int ROWS = 64 * WGS, BK = 64, THREADS = 128 * WGS + 32;
    constexpr int RED_STRIDE = ROWS + 4;  // floats per x row of the reduction buffer
    extern __shared__ __align__(128) unsigned char shared[];
    WgmmaRing<ROWS, XROWS, STAGES> ring(shared);
    // read through a shuffle so the compiler knows it warp-uniform (else ptxas serialises the wgmma)
    const int warp = __shfl_sync(0xffffffff, threadIdx.x / 32, 0), group = warp / 4;  // group WGS: the producer
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int n0 = blockIdx.x * (GLU ? ROWS / 2 : ROWS), k_len = K / S, k_begin = blockIdx.y * k_len, steps = k_len / BK;
    ring.init(4 * WGS);
    __syncthreads();

    float acc[XROWS / 8][4] = {};  // a consumer's 64 weight rows x the XROWS x rows (m16n8 C fragments stacked)
    NormPrefetch<THREADS> pre;
    auto prefetch = [&] {  // right after pdl_wait: the norm's values for the end (GemmNorm), under the products
        if constexpr (NORM == NORM_FINISH) pre.partials(norm.scale_partials, M * norm.scale_blocks);
        if constexpr (NORM == NORM_BEGIN) pre.residual(norm, M, N, n0 + blockIdx.y * (ROWS / S), ROWS / S, ROWS / S * XROWS);
    };
    if (group == WGS) {
        if (lane == 0) {
            auto load_weights = [&](int i) {  // stage i's weights; its full barrier expects its x too
                __nv_bfloat16* stage = ring.expect(i);
                if constexpr (GLU) {  // gate boxes, then the matching up boxes
#pragma unroll
                    for (int b = 0; b < WGS; b++)
                        tma_load(stage + b * 64 * BK, &w_map, k_begin + i * BK, (b < WGS / 2 ? 0 : N) + n0 + b % (WGS / 2) * 64,
                                 ring.full + i % STAGES);
                } else tma_load(stage, &w_map, k_begin + i * BK, n0, ring.full + i % STAGES);
            };
            auto load_x = [&](int i) { ring.load_x(&x_map, i, k_begin + i * BK); };
            // the whole ring's weights go out before the wait for the previous kernel (kernels/pdl.cuh): no kernel
            // writes W, while x is the previous kernel's output. (x from L2 in a shallower ring of its own, issued
            // a few stages ahead so that more weight stages fit, starved the products: 4-6 x stages against 18-26
            // weight stages ran at half the rate, notes/gemm_xrows_ab_h200_stop37.log)
            for (int i = 0; i < min(STAGES, steps); i++) load_weights(i);
            pdl_wait();
            prefetch();
            for (int i = 0; i < steps; i++) {
                if (i >= STAGES) {
                    ring.wait_empty(i);
                    load_weights(i);
                }
                load_x(i);
            }
        } else pdl_wait(), prefetch();
        __syncwarp();
    } else {
        pdl_wait();
        prefetch();
        for (int i = 0; i < steps; i++) {
            ring.products(acc, i, group);
            if (i > 0) ring.release(i - 1, lane);  // step i - 1's products are done: its stage can be refilled
        }
        wgmma_wait<0>();
        wgmma_pin(acc);
        if (steps > 0) ring.release(steps - 1, lane);
    }
    pdl_trigger();  // the next kernel may launch (a GEMM copies its first weights while these blocks reduce)
    __syncthreads();  // every product has read its stage: the ring becomes the reduction buffer

    float* red = reinterpret_cast<float*>(ring.base);  // [XROWS x rows][RED_STRIDE]: red[m][row] = y[m][n0 + row] of this block
    if (group < WGS)
#pragma unroll
        for (int j = 0; j < XROWS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[(8 * j + 2 * t + (e & 1)) * RED_STRIDE + group * 64 + warp % 4 * 16 + g + 8 * (e >> 1)] = acc[j][e];
    __syncthreads();
    float* scales = nullptr;  // the norm before this product (GemmNorm): its rows' scales, after the reduction buffer
    if constexpr (NORM == NORM_FINISH) {
        scales = red + XROWS * RED_STRIDE;
        row_scales<THREADS>(norm, norm.scale_partials, pre, M, K, scales + XROWS, scales);
    }
    if constexpr (GLU) {
        store_cluster_glu<1, XROWS, RED_STRIDE, THREADS, ROWS / 2>(red, reinterpret_cast<__nv_bfloat16*>(out), M, N, n0, scales);
        return;
    }
    if constexpr (NORM == NORM_BEGIN)  // the norm after this product
        store_cluster_norm<S, ROWS, XROWS, RED_STRIDE, THREADS>(red, norm, pre, M, N, n0, red + XROWS * RED_STRIDE);
    else
        store_cluster_sums<S, ROWS, XROWS, RED_STRIDE, THREADS>(red, reinterpret_cast<float*>(out), M, N, n0, scales);
}

// gemm_wgmma_w{WGS}_x{XROWS}_s{S}: WGS consumer warpgroups (64 weight rows each), x in XROWS-row boxes. One
// warpgroup serves weights with fewer 128-row tiles than SMs (qkv, O, down), a grid of one block an SM whose ring
// fills the shared memory: the weight bytes in flight are what these products run on (stop 34: 6 stages, two blocks
// an SM, gave 8B down 83-86% of copy, 12 gave 89-91%, notes/gemm_wgmma_ring_h100_stop34.log), so the x boxes are as
// small as M allows: 22 stages (176 KB of weights) with 16-row boxes, 18 (144 KB) with 32, 13 (104 KB) with 64
// (stop 37: 8B qkv at 1-16 rows 89-94% -> 94-95% against gemm_stream, at 24-32 rows 80-81% -> 87-89%,
// notes/gemm_xrows_ab_h100_stop37.log). Rings that leave room for a second block an SM, so that the next call's
// blocks copy their first stages beside this one's, and x in a shallow ring of its own were slower (same log).
// Two warpgroups serve the rest (gate/up, LM head), two blocks an SM: 4 stages, 96 KB.
// ROLE: empty (a plain product), _finish or _begin (NormRole).
#define GEMM_WGMMA(WGS, XROWS, STAGES, ROLE, S, CLUSTER)                                                             \
    extern "C" __global__ void __launch_bounds__(128 * WGS + 32, 2) CLUSTER gemm_wgmma_w##WGS##_x##XROWS##_s##S##ROLE( \
        const __grid_constant__ TensorMap w_map, const __grid_constant__ TensorMap x_map, float* y, int M, int N, int K \
            NORM_PARAMS_##ROLE) {                                                                                     \
        gemm_wgmma_body<WGS, XROWS, STAGES, S, false, NORM_ROLE_##ROLE>(w_map, x_map, y, M, N, K, NORM_ARGS_##ROLE); \
    }
#define GEMM_WGMMA_CLUSTERS(WGS, XROWS, STAGES, ...) SPLIT_K_CLUSTERS(GEMM_WGMMA, WGS, XROWS, STAGES, __VA_ARGS__)
GEMM_WGMMA_CLUSTERS(1, 64, 13, )
GEMM_WGMMA_CLUSTERS(1, 32, 18, )
GEMM_WGMMA_CLUSTERS(1, 16, 22, )
GEMM_WGMMA_CLUSTERS(2, 64, 4, )
GEMM_WGMMA_CLUSTERS(1, 16, 22, _finish)
GEMM_WGMMA_CLUSTERS(1, 16, 22, _begin)
// gemm_wgmma_glu_w{WGS}: act bf16 [M, I] = silu(x W_gate^T) * (x W_up^T) from the fused [2I, K] weight (64-row
// boxes), 32 WGS gate columns a block; grid ceil(I / (32 WGS)), block 128 WGS + 32, STAGES x (64 WGS + 64) x 128 +
// 1024 + 16 STAGES bytes of dynamic shared memory. w2: two blocks an SM, the ring of gemm_wgmma_w2. w4: one block an
// SM, 5 stages (200 KB), for gate/up weights of at most a 128-column tile an SM: 8B gate/up (112 blocks) at 17 rows
// 71.3 -> 63.0 µs, at 32 65.4 -> 63.6, at 64 level (64.1) on an H200 (notes/glu_groups_h200_stop41.log). Where it
// gains, the w2 kernel's 64-row x boxes are mostly TMA zero fill, two a stage an SM against w4's one.
#define GEMM_WGMMA_GLU(WGS, STAGES, MIN_BLOCKS, ROLE)                                                                \
    extern "C" __global__ void __launch_bounds__(128 * WGS + 32, MIN_BLOCKS) gemm_wgmma_glu_w##WGS##ROLE(           \
        const __grid_constant__ TensorMap w_map, const __grid_constant__ TensorMap x_map, __nv_bfloat16* act, int M, int I, int K \
            NORM_PARAMS_##ROLE) {                                                                                     \
        gemm_wgmma_body<WGS, 64, STAGES, 1, true, NORM_ROLE_##ROLE>(w_map, x_map, act, M, I, K, NORM_ARGS_##ROLE);    \
    }
GEMM_WGMMA_GLU(2, 4, 2, )
GEMM_WGMMA_GLU(4, 5, 1, )
GEMM_WGMMA_GLU(2, 4, 2, _finish)
GEMM_WGMMA_GLU(4, 5, 1, _finish)

// gemm_wgmma_tiles_w{WGS}_x{XROWS} (sm_90a): gemm_wgmma without split-K (S = 1) for weights of many more tiles
// than blocks (the LM heads), on persistent blocks: block b takes tiles b, b + gridDim.x, ... and its producer
// runs one ring over all of them, so the next tile's weights stream while the consumers store this tile's sums.
// With a block per tile, the blocks of a wave start and end together, and every SM's stream stops for their
// first ring fill and their epilogue once a wave (the 8B LM head: 1002 tiles, 3.8 waves of two blocks an SM).
// The sums go from the accumulator fragments straight to y: lanes g = 0..7 of a store write 8 consecutive
// weight rows' columns of one x row (a whole 32-byte sector), so no shared-memory pass is needed; each tile's
// products are those of gemm_wgmma_w{WGS}_x{XROWS}_s1 in the same order, so y has the same bits.
// Launch: grid min(tiles, 2 SMs), block 128 WGS + 32, the dynamic shared memory of gemm_wgmma.
template <int WGS, int XROWS, int STAGES>
__device__ void gemm_wgmma_tiles_body(const TensorMap& w_map, const TensorMap& x_map, float* __restrict__ y, int M, int N, int K) {
    constexpr int ROWS = 64 * WGS, BK = 64;
    extern __shared__ __align__(128) unsigned char shared[];
    WgmmaRing<ROWS, XROWS, STAGES> ring(shared);
    const int warp = __shfl_sync(0xffffffff, threadIdx.x / 32, 0), group = warp / 4;  // group WGS: the producer
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int steps = K / BK, tiles = (N + ROWS - 1) / ROWS;
    const int my_tiles = blockIdx.x < tiles ? (tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0, total = my_tiles * steps;
    ring.init(4 * WGS);
    __syncthreads();

    if (group == WGS) {
        if (lane == 0) {  // ring step i: k stage i % steps of this block's tile i / steps
            auto load_weights = [&](int i) {
                tma_load(ring.expect(i), &w_map, i % steps * BK, (blockIdx.x + i / steps * gridDim.x) * ROWS, ring.full + i % STAGES);
            };
            for (int i = 0; i < min(STAGES, total); i++) load_weights(i);  // before the wait, as gemm_wgmma
            pdl_wait();
            for (int i = 0; i < total; i++) {
                if (i >= STAGES) {
                    ring.wait_empty(i);
                    load_weights(i);
                }
                ring.load_x(&x_map, i, i % steps * BK);
            }
        } else pdl_wait();
        __syncwarp();
        pdl_trigger();
        return;
    }
    pdl_wait();
    float acc[XROWS / 8][4] = {};
    for (int tile = 0; tile < my_tiles; tile++) {
        for (int s = 0; s < steps; s++) {
            ring.products(acc, tile * steps + s, group);
            if (s > 0) ring.release(tile * steps + s - 1, lane);
        }
        wgmma_wait<0>();
        wgmma_pin(acc);
        ring.release((tile + 1) * steps - 1, lane);  // the producer refills the ring while this tile's sums are stored
        if (tile == my_tiles - 1) pdl_trigger();
        // fragment (j, e): x row 8 j + 2 t + (e & 1), weight row n0 + 16 (warp % 4) + g + 8 (e >> 1) of this group
        const int n = (blockIdx.x + tile * gridDim.x) * ROWS + group * 64 + warp % 4 * 16 + g;
#pragma unroll
        for (int j = 0; j < XROWS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int m = 8 * j + 2 * t + (e & 1), col = n + 8 * (e >> 1);
                if (m < M && col < N) y[(long long)m * N + col] = acc[j][e];
                acc[j][e] = 0.0f;  // (zeroed, not overwritten by the next tile's first product: the same bits as s1)
            }
    }
}
#define GEMM_WGMMA_TILES(WGS, XROWS, STAGES)                                                                          \
    extern "C" __global__ void __launch_bounds__(128 * WGS + 32, 2) gemm_wgmma_tiles_w##WGS##_x##XROWS(              \
        const __grid_constant__ TensorMap w_map, const __grid_constant__ TensorMap x_map, float* y, int M, int N, int K) { \
        gemm_wgmma_tiles_body<WGS, XROWS, STAGES>(w_map, x_map, y, M, N, K);                                          \
    }
GEMM_WGMMA_TILES(2, 64, 4)
#endif
