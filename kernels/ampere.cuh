// sm_80 building blocks shared by the attention and GEMM kernels and kernels/fused_layers.cuh: the
// m16n8k16 bf16 tensor-core product and cp.async copies. Python inlines this header into each kernel's source
// (backends/cuda_backend.kernel_source).
#pragma once

// c[4] += A (16 x 16 bf16, 4 registers) . B (16 x 8 bf16, 2 registers), fp32 accumulate. Fragments (g = lane / 4,
// t = lane % 4): a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..);
// b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g); c0, c1 = (g, 2t..), c2, c3 = (g+8, 2t..).
__device__ __forceinline__ void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without passing through registers (L2 only: .cg); bytes = 0 reads nothing and
// fills the 16 bytes with zeros. A thread's copies complete in the groups it commits, in order.
__device__ __forceinline__ void cp_async16(unsigned shared_address, const void* global, int bytes = 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address), "l"(global), "r"(bytes));
}
// 4 bytes global -> shared (through L1: .ca, the only path for copies under 16 bytes), for values with no
// alignment to rely on
__device__ __forceinline__ void cp_async4(void* shared, const void* global) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"((unsigned)__cvta_generic_to_shared(shared)), "l"(global));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// until at most N of this thread's committed groups are pending
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
