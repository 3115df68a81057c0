// Programmatic dependent launch (sm_90 and later). On Hopper the engine launches every kernel of a step except
// the fused layers with the programmatic-stream-serialization attribute (backends/driver.py): a kernel's blocks
// may then be placed on the SMs before the kernel ahead of it in the stream has finished, once every block of
// that kernel has run griddepcontrol.launch_dependents. What it buys: a GEMM streams weights that no earlier
// kernel writes, so it copies its first stages of them while the short kernel before it (an RMSNorm, the
// attention merge, SiLU·mul) still runs, and only then waits (gemm_stream_body). Attention likewise copies its
// first K/V tiles that lie wholly before tree_start: a step writes K/V only at positions from tree_start on.
//
//   pdl_wait()     every kernel, every thread, before it reads anything an earlier kernel writes or writes
//                  anything an earlier kernel reads: waits until the kernel before has finished and its writes
//                  are visible. No thread passes it before that, so no kernel finishes before the one before
//                  it, and waiting on the previous kernel is waiting on all earlier ones. (A block that reads
//                  and writes nothing, an attention row tile past the last row, may leave without it: the
//                  kernel's other blocks still wait.)
//                  What is written before the step's first kernel may be read before it: weights, norm weights,
//                  RoPE tables, and the step's plan (copied by the host, or written by ngram_step.cu ahead of the
//                  step; rope_write_kv and attention_merge, which read it early, are launched behind a GEMM or
//                  behind kernels behind one, and a GEMM triggers only after its own wait, so that writer has
//                  finished). The short kernels load such values between pdl_trigger and pdl_wait, off the path
//                  that follows the wait (rope_write_kv, attention_merge: the 8B T = 64 step 1.0-1.6% faster,
//                  notes/pdl_hoist_h200_stop60.log; add_rmsnorm's weight loads are written there too, but ptxas
//                  issues them after the wait, beside x's, as stop 61's SASS showed).
//                  The compiler, not only the code, places loads: it takes const __restrict__ loads (ld.global.nc,
//                  LDG.E.CONSTANT) for invariant and may issue them above this asm, "memory" clobber or not. When
//                  add_rmsnorm read its residual rows before the wait (stop 61, not kept:
//                  notes/norm_residual_early_h200_stop61.log), ptxas moved half of x's
//                  loads there too and the 8B step's logits changed from run to run. What the kernel ahead writes
//                  is safe from that only as an ordinary load (__ldcg); notes/scripts/pdl_audit.py lists the
//                  parameters each kernel reads above its wait (today plan data and earlier steps' K/V only).
//   pdl_trigger()  the short kernels, first thing: the next kernel may launch now. gemm_stream once its
//                  blocks have issued their last weight copies, gemm_wgmma once its blocks have streamed
//                  their weights (before their reduction).
//                  Attention first thing where its grid fits the GPU in one wave (trigger_first,
//                  kernels/attention_mma.cu, attention_wgmma.cu; the shapes measured, stop 41), else not at all: with every kernel
//                  triggering first thing the 8B T = 4 step was 8% slower (notes/pdl_probe_h100_stop16.log).
// Without the attribute (other GPUs, the fused kernel, cuBLAS) both are no-ops.
#pragma once

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// a short kernel's opening: let the next kernel launch, then wait for the previous one
__device__ __forceinline__ void pdl_begin() {
    pdl_trigger();
    pdl_wait();
}
