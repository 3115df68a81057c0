// Hopper (sm_90a) building blocks shared by kernels/attention_wgmma.cu and kernels/gemm_wgmma.cu: warpgroup MMA (wgmma)
// with shared-memory descriptors, mbarriers, and tensor-memory-accelerator (TMA) tile loads. Python inlines
// this header into each kernel's source (backends/cuda_backend.kernel_source); functions that use sm_90a-only
// instructions are only compiled where a kernel built for sm_90a calls them.
#pragma once
#include <cuda_bf16.h>

// ---- warpgroup MMA: 4 warps issue one asynchronous 64 x N x 16 product.
// A (64 rows x k16) comes from registers in the m16n8k16 A-fragment layout, warp w of the group holding rows
// 16w .. 16w+15; the accumulator is the m16n8 C-fragment layout stacked over N / 8 column tiles (d[j][0..3] =
// (row g, cols 8j+2t, +1), (row g+8, same cols)), so code written for mma.sync fragments reads it unchanged.
// B (and A in the _ss form) comes from shared memory through a descriptor: start address, LBO and SBO (bytes
// / 16, 14 bits each) and the swizzle mode (bits 62-63: 1 = 128-byte). Tiles here use the 128-byte swizzle
// (as TMA writes it): a 128-byte row r of an 8-row, 1024-byte-aligned group keeps its 16-byte chunk c at
// chunk c ^ (r % 8).
//   K-major (rows x k, k contiguous: Q and K for S = Q K^T, both GEMM operands): rows of 64 k; SBO = 1024
//     (the next 8 rows); k-step s of a 64-wide atom starts 32 s bytes in; the next 64 k are a separate block.
//   MN-major B (k x n with n contiguous: V [keys, dims] for O += P V, read transposed): LBO = the byte
//     distance between 64-wide atoms along n, SBO = 1024 (the next 8 rows along k).
// notes/scripts/wgmma_probe.py checks both against NumPy.
__device__ __forceinline__ unsigned long long smem_descriptor(const void* tile, unsigned lbo, unsigned sbo) {
    const unsigned long long address = (unsigned)__cvta_generic_to_shared(tile);
    return ((address & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// until at most N of this warpgroup's committed groups are pending (they complete in order)
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// the compiler must not move reads of an accumulator above the wait that makes it valid
template <int NT>
__device__ __forceinline__ void wgmma_pin(float (&d)[NT][4]) {
#pragma unroll
    for (int j = 0; j < NT; j++) asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
}
// shared memory written by cp.async / st.shared must be made visible to wgmma's (async proxy) reads
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

#define WG_ACC4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define WG_ACC16 WG_ACC4(0), WG_ACC4(1), WG_ACC4(2), WG_ACC4(3)
#define WG_ACC32 WG_ACC4(0), WG_ACC4(1), WG_ACC4(2), WG_ACC4(3), WG_ACC4(4), WG_ACC4(5), WG_ACC4(6), WG_ACC4(7)
#define WG_ACC64 WG_ACC32, WG_ACC4(8), WG_ACC4(9), WG_ACC4(10), WG_ACC4(11), WG_ACC4(12), WG_ACC4(13), WG_ACC4(14), WG_ACC4(15)

// d[64 x 64] (+)= A[64 x 16] B[16 x 64]; accumulate = 0 overwrites d
template <int TRANS_B>
__device__ __forceinline__ void wgmma_n64(float (&d)[8][4], const unsigned (&a)[4], unsigned long long b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : WG_ACC32
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate), "n"(TRANS_B));
}

// d[64 x N] (+)= A[64 x 16] B[16 x N] for N = 16, 32 or 64, A from shared memory too (K-major): gemm_wgmma's weight
// tile against x rows on the N side.
// (The attention's S = Q K^T took Q this way from stop 12 to 20: with Q's fragments in registers, the ptxas of
// then gave P's fragments the same registers at D = 64, and a 288-thread block capped the kernel at 168
// registers. With setmaxnreg the SASS keeps them apart, and the attention tests would catch a repeat: every
// key tile after the first would be multiplied by P.)
template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], unsigned long long a, unsigned long long b, int accumulate) {
    static_assert(N == 16 || N == 32 || N == 64, "gemm_wgmma's x tiles are 16, 32 or 64 rows");
    if constexpr (N == 64)
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "%32, %33, p, 1, 1, 0, 0;\n}\n"
            : WG_ACC32
            : "l"(a), "l"(b), "r"(accumulate));
    else if constexpr (N == 32)
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
            "%16, %17, p, 1, 1, 0, 0;\n}\n"
            : WG_ACC16
            : "l"(a), "l"(b), "r"(accumulate));
    else if constexpr (N == 16)
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7}, "
            "%8, %9, p, 1, 1, 0, 0;\n}\n"
            : WG_ACC4(0), WG_ACC4(1)
            : "l"(a), "l"(b), "r"(accumulate));
}

// d[64 x 128] (+)= A[64 x 16] B[16 x 128]
template <int TRANS_B>
__device__ __forceinline__ void wgmma_n128(float (&d)[16][4], const unsigned (&a)[4], unsigned long long b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : WG_ACC64
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate), "n"(TRANS_B));
}

// ---- mbarriers and TMA
struct __align__(64) TensorMap {
    unsigned long long words[16];
};
__device__ __forceinline__ void mbarrier_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(unsigned long long* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
}
__device__ __forceinline__ void mbarrier_expect_bytes(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
}
// until the mbarrier's phase of `parity` completes. CLUSTER: the acquire at cluster scope, where the bytes counted on
// it were stored by other blocks of the cluster (st.async pushes, kernels/cluster_decode.cu)
template <bool CLUSTER = false>
__device__ __forceinline__ void mbarrier_wait(unsigned long long* bar, unsigned parity) {
#define MBARRIER_WAIT(SEMANTICS)                                                                              \
    asm volatile("{\n.reg .pred ready;\nWAIT:\n"                                                            \
                 "mbarrier.try_wait.parity" SEMANTICS ".shared::cta.b64 ready, [%0], %1;\n"                   \
                 "@!ready bra WAIT;\n}\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(parity) : "memory")
    if constexpr (CLUSTER) MBARRIER_WAIT(".acquire.cluster");
    else MBARRIER_WAIT("");
#undef MBARRIER_WAIT
}
// box (c0 = column, c1 = row) of the 2-d tensor behind `map` into shared memory; its bytes complete on `bar`
__device__ __forceinline__ void tma_load(void* shared, const TensorMap* map, int c0, int c1, unsigned long long* bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"((unsigned)__cvta_generic_to_shared(shared)), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1),
                 "r"((unsigned)__cvta_generic_to_shared(bar)) : "memory");
}
