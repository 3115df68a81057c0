// Eight bf16 in one 16-byte word (a uint4 load) as floats. Shared by kernels/fused_layers.cuh and
// kernels/cluster_decode.cuh.
#pragma once
#include <cuda_bf16.h>

// two bf16 in a 32-bit word -> (low, high)
__device__ __forceinline__ float2 bf2(unsigned u) { return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u)); }

// f[0..7] = the 8 bf16 of v, in memory order
__device__ __forceinline__ void unpack8(uint4 v, float* f) {
    float2 a = bf2(v.x), b = bf2(v.y), c = bf2(v.z), d = bf2(v.w);
    f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y, f[4] = c.x, f[5] = c.y, f[6] = d.x, f[7] = d.y;
}
