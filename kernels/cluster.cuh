// Thread block clusters (sm_90): a cluster's blocks run at once on one GPC and read and write each other's
// shared memory (distributed shared memory, DSMEM). Shared by kernels/gemm.cuh (split-K sums),
// kernels/attention_mma.cu (key shares merged) and kernels/sampling.cu (a row's slices). A block's shared memory
// must outlive every access from its cluster: kernels end with cluster_sync() after their last remote access.
#pragma once

// every thread of every block of the cluster; the release/acquire pair orders the shared-memory writes before it
// with the (remote) reads after it
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// the shared::cluster address of `local`'s offset in the shared memory of cluster block `rank`
__device__ __forceinline__ unsigned cluster_address(const void* local, unsigned rank) {
    unsigned address = (unsigned)__cvta_generic_to_shared(local), remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(address), "r"(rank));
    return remote;
}

// The value at the same shared-memory offset as `local`, in the shared memory of cluster block `rank`.
__device__ __forceinline__ float load_cluster(const float* local, unsigned rank) {
    float value;
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(value) : "r"(cluster_address(local, rank)) : "memory");
    return value;
}
__device__ __forceinline__ float2 load_cluster(const float2* local, unsigned rank) {
    float2 value;
    asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];\n" : "=f"(value.x), "=f"(value.y) : "r"(cluster_address(local, rank)) : "memory");
    return value;
}
__device__ __forceinline__ float4 load_cluster(const float4* local, unsigned rank) {
    float4 value;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(value.x), "=f"(value.y), "=f"(value.z), "=f"(value.w) : "r"(cluster_address(local, rank)) : "memory");
    return value;
}
__device__ __forceinline__ int load_cluster(const int* local, unsigned rank) {
    int value;
    asm volatile("ld.shared::cluster.s32 %0, [%1];\n" : "=r"(value) : "r"(cluster_address(local, rank)) : "memory");
    return value;
}
__device__ __forceinline__ unsigned load_cluster(const unsigned* local, unsigned rank) {
    unsigned value;
    asm volatile("ld.shared::cluster.u32 %0, [%1];\n" : "=r"(value) : "r"(cluster_address(local, rank)) : "memory");
    return value;
}
__device__ __forceinline__ unsigned long long load_cluster(const unsigned long long* local, unsigned rank) {
    unsigned long long value;
    asm volatile("ld.shared::cluster.u64 %0, [%1];\n" : "=l"(value) : "r"(cluster_address(local, rank)) : "memory");
    return value;
}
