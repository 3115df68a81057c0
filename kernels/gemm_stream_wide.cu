// gemm_stream (kernels/gemm.cu: its product, operands, fragments and launch) with 32 or 64 staged x rows, in a file of
// its own: no rule of cuda_gemm takes them (from 17 rows gemm_wgmma serves on Hopper, cuBLAS elsewhere; from 32 rows
// gemm_stream lost to cuBLAS on every shape, `bench gemm`), so a first run does not compile them. They serve where
// the own kernels are forced (CudaBackend.gemm = "own", or no cuBLAS) and in the benchmarks. Stop 65: 2.6 of gemm.cu's
// 4.2 s of nvcc on a 2-core machine; NVRTC on a fresh H200 took 4.8 s for the whole file beside 12 other compiles.
#include <cuda_bf16.h>
#include "ampere.cuh"
#include "pdl.cuh"
#include "gemm_stream.cuh"

GEMM_STREAM_CLUSTERS(32, 64, 4, )
GEMM_STREAM_CLUSTERS(64, 64, 4, )
