// gemm_stream (kernels/gemm.cu: its product, operands, fragments and launch) with a fused epilogue, in a file of its
// own so that a machine's first run compiles it beside gemm.cu:
//   gemm_stream_r{R}_k128_s{S}_finish: the product, scaled by the split RMSNorm of the rows it reads (NormRole
//     NORM_FINISH, kernels/gemm.cuh): up to 16 rows;
//   gemm_stream_glu_r{R}_k128_s{S}[_finish]: the gated product, below.
#include "gemm_stream.cuh"

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
