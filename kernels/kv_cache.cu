// KV commit of accepted tree nodes and page copies, for every layer's K and V cache in one launch
// (new K/V rows are written by rope_write_kv in elementwise.cu).
//
// Cache layout: store_t [NP, Hkv, P, D]; flat slot s = page * P + row lives at cache[s / P, h, s % P, :].
// caches: uint64 [C] device pointers of the C = 2 * layers caches (K of every layer, then V).
// gather_slots:  buffer[c, i, h, :] = caches[c][src[i] / P, h, src[i] % P, :]    buffer store_t [C, count, Hkv, D]
// scatter_slots: caches[c][dst[i] / P, h, dst[i] % P, :] = buffer[c, i, h, :]
//   KV commit = gather every source, then scatter: sources and destinations overlap
//   (accept nodes 0, 2, 3 after rejecting 1), so no write may precede a read. A page copy
//   (copy-on-write) is the same pair of kernels over the page's P slots.
//   grid (count, C), block 128.
// NumPy reference: NumpyBackend.move_slots. Tests: tests/test_cuda_kernels.py.
#include "storage.cuh"
#include "pdl.cuh"

__device__ __forceinline__ long long slot_offset(int slot, int h, int Hkv, int P, int D) {
    return (((long long)(slot / P) * Hkv + h) * P + slot % P) * D;
}

extern "C" __global__ void gather_slots(const unsigned long long* __restrict__ caches, const int* __restrict__ source,
                                        store_t* __restrict__ buffer, int Hkv, int P, int D) {
    pdl_begin();
    const store_t* cache = reinterpret_cast<const store_t*>(caches[blockIdx.y]);
    long long row = ((long long)blockIdx.y * gridDim.x + blockIdx.x) * Hkv * D;
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x)
        buffer[row + idx] = cache[slot_offset(source[blockIdx.x], idx / D, Hkv, P, D) + idx % D];
}

extern "C" __global__ void scatter_slots(const unsigned long long* __restrict__ caches, const int* __restrict__ destination,
                                         const store_t* __restrict__ buffer, int Hkv, int P, int D) {
    pdl_begin();
    store_t* cache = reinterpret_cast<store_t*>(caches[blockIdx.y]);
    long long row = ((long long)blockIdx.y * gridDim.x + blockIdx.x) * Hkv * D;
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x)
        cache[slot_offset(destination[blockIdx.x], idx / D, Hkv, P, D) + idx % D] = buffer[row + idx];
}
