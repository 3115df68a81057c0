// RoPE's rotation of one element (Hugging Face rotate_half): the pair (x1, x2) = (x[i], x[i + D/2]) of a head
// by angle positions * inv_freq[i] (cos c, sin s) gives x1 c - x2 s at i (first) and x2 c + x1 s at i + D/2.
// Every product and sum is rounded on its own (no fused multiply-add), so the kernels that rotate in different
// places (elementwise.cu's rope_write_kv after the QKV GEMM, gemm.cu's gemm_wgmma_rope inside it) give the same bits.
#pragma once

__device__ __forceinline__ float rope_rotate(float x1, float x2, float c, float s, bool first) {
    return first ? __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)) : __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}
