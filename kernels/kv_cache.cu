// KV commit of accepted tree nodes (new K/V rows are written by rope_write_kv in elementwise.cu).
//
// Cache layout: store_t [NP, Hkv, P, D]; flat slot s = page * P + row lives at cache[s / P, h, s % P, :].
// gather_slots:  buffer[i, h, :] = cache[src[i] / P, h, src[i] % P, :]     buffer store_t [count, Hkv, D]
// scatter_slots: cache[dst[i] / P, h, dst[i] % P, :] = buffer[i, h, :]
//   KV commit = gather every source, then scatter: sources and destinations overlap
//   (accept nodes 0, 2, 3 after rejecting 1), so no write may precede a read.   grid (count), block 128.
// NumPy reference: NumpyBackend.move_slots. Tests: tests/test_cuda_kernels.py.
#include "storage.cuh"

__device__ __forceinline__ long long slot_offset(int slot, int h, int Hkv, int P, int D) {
    return (((long long)(slot / P) * Hkv + h) * P + slot % P) * D;
}

extern "C" __global__ void gather_slots(const store_t* __restrict__ cache, const int* __restrict__ source,
                                        store_t* __restrict__ buffer, int Hkv, int P, int D) {
    int i = blockIdx.x;
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x)
        buffer[(long long)i * Hkv * D + idx] = cache[slot_offset(source[i], idx / D, Hkv, P, D) + idx % D];
}

extern "C" __global__ void scatter_slots(store_t* __restrict__ cache, const int* __restrict__ destination,
                                         const store_t* __restrict__ buffer, int Hkv, int P, int D) {
    int i = blockIdx.x;
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x)
        cache[slot_offset(destination[i], idx / D, Hkv, P, D) + idx % D] = buffer[(long long)i * Hkv * D + idx];
}
