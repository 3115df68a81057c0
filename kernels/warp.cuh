// Warp-wide reductions over all 32 lanes (every lane gets the result): call them where the whole warp is
// converged, outside branches the compiler cannot prove warp-uniform. Shared by kernels/fused_layers.cuh,
// kernels/cluster_decode.cu and kernels/gemm.cuh.
#pragma once

// LANES < 32: the sum over each group of LANES consecutive lanes (a xor butterfly within the group), every lane of
// the warp still taking part in the shuffles.
template <int LANES = 32>
__device__ __forceinline__ float warp_sum(float v) {
    static_assert(LANES > 0 && 32 % LANES == 0, "groups of a power of two lanes within a warp");
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
