// gemm_wgmma's products that finish a split RMSNorm (kernels/gemm.cuh: GemmNorm, NormRole NORM_FINISH), in a file of their
// own so that a machine's first run compiles them beside kernels/gemm_wgmma.cu (the product, operands and launch
// described there; the ring and body in kernels/gemm_wgmma.cuh).
//   gemm_wgmma_w1_x{16,32,64}_s{S}_finish[q], gemm_wgmma_glu_w{2,4}_finish: y = s (x' W^T), s = rsqrt(sum of the
//   row's partials / K + eps) (_finishq: the 16-row kernels that take the partials as quads, from 5 rows).
#include "gemm_wgmma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
GEMM_WGMMA_CLUSTERS(1, 16, 22, _finish)
GEMM_WGMMA_CLUSTERS(1, 16, 22, _finishq)  // above cuda_gemm.FINISH_SCALAR_ROWS rows
GEMM_WGMMA_CLUSTERS(1, 32, 18, _finish)  // NormStage: the partials (or the residual slice) past the ring
GEMM_WGMMA_CLUSTERS(1, 64, 13, _finish)
GEMM_WGMMA_GLU(2, 4, 2, _finish)
GEMM_WGMMA_GLU(4, 5, 1, _finish)
#endif
