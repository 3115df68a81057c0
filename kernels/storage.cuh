// Storage type of weights and KV pages: bf16 (default) or fp32 (exactness checks).
// Python compiles each kernel file with -DSTORAGE_BF16 or without it, and inlines
// this header into the source text (CuPy's compile cache keys on the source only).
#pragma once
#include <cuda_bf16.h>

#ifdef STORAGE_BF16
typedef __nv_bfloat16 store_t;
__device__ __forceinline__ float load_f(const store_t* p) { return __bfloat162float(*p); }
__device__ __forceinline__ store_t to_store(float x) { return __float2bfloat16_rn(x); }
#else
typedef float store_t;
__device__ __forceinline__ float load_f(const store_t* p) { return *p; }
__device__ __forceinline__ store_t to_store(float x) { return x; }
#endif
