// gemm_wgmma's products that begin a split RMSNorm (kernels/gemm.cuh: GemmNorm, NormRole NORM_BEGIN), in a file of their
// own so that a machine's first run compiles them beside kernels/gemm_wgmma.cu (the product, operands and launch
// described there; the ring and body in kernels/gemm_wgmma.cuh).
//   gemm_wgmma_w1_x{16,32,64}_s{S}_begin: r = x W^T + residual (residual_out), x_out = bf16(r w) and each block's
//   partial sums of r^2 over its columns, for the product after to finish.
#include "gemm_wgmma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
GEMM_WGMMA_CLUSTERS(1, 16, 22, _begin)
GEMM_WGMMA_CLUSTERS(1, 32, 18, _begin)
GEMM_WGMMA_CLUSTERS(1, 64, 13, _begin)
#endif
