// Warp-wide reductions over all 32 lanes (every lane gets the result): call them where the whole warp is
// converged, outside branches the compiler cannot prove warp-uniform. Shared by kernels/fused_layers.cuh,
// kernels/cluster_decode.cu and kernels/gemm.cuh.
#pragma once

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
