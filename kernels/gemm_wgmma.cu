// Small-M GEMM on Hopper's warpgroup MMA (sm_90a), gemm.cu's product y[M, N] = x[M, K] . W[N, K]^T with its operands.
// gemm_wgmma_w{WGS}_x{XROWS}_s{S}: M <= 64 rows, weights and x brought by the tensor memory accelerator. y^T = W x^T: a block's 64 WGS weight rows are the M side of WGS
// warpgroups' wgmma.m64n{XROWS}k16 (64 rows each) and the x rows (XROWS = 16, 32 or 64, zero past M) the N side; both
// operands K-major from shared memory, 128-byte swizzled as TMA writes them. A producer warp fills a STAGES-deep
// ring (W [64 WGS][64 k] and x [XROWS][64 k] a stage) under full / empty mbarriers; each warpgroup keeps one
// stage's products in flight. These products are bound by how many weight bytes are in flight, so x takes 32-row
// boxes where M allows: they leave room for more weight stages (notes/gemm_xrows_ab_h100_stop37.log). Split-K
// over a cluster of S blocks, summed in a fixed order through distributed shared memory as in gemm_stream, so y
// is complete, with the same bits every time, when the kernel ends.
// w_map: W [N, K] in 64 x 64 WGS boxes; x_map: x [M, K] in 64 x XROWS boxes (rows past M read as zeros);
// K % (64 S) == 0. Launch: grid (ceil(N / (64 WGS)), S), cluster (1, S, 1), block 128 WGS + 32, dynamic shared
// memory STAGES x (64 WGS + XROWS) x 128 + 1024 (alignment) + 16 STAGES (barriers), and for the 32- and 64-row
// kernels that begin or finish a split norm (kernels/gemm_wgmma_begin.cu, gemm_wgmma_finish.cu) its NormStage
// (kernels/gemm.cuh) after that.
#include "gemm_wgmma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
GEMM_WGMMA_CLUSTERS(1, 64, 13, )
GEMM_WGMMA_CLUSTERS(1, 32, 18, )
GEMM_WGMMA_CLUSTERS(1, 16, 22, )
GEMM_WGMMA_CLUSTERS(2, 64, 4, )
GEMM_WGMMA_GLU(2, 4, 2, )
GEMM_WGMMA_GLU(4, 5, 1, )

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
