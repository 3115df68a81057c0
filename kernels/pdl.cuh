// Programmatic dependent launch (sm_90 and later). On Hopper the engine launches every kernel of a step except
// the fused layers with the programmatic-stream-serialization attribute (backends/driver.py): a kernel's blocks
// may then be placed on the SMs while the kernel before it in the stream is still running, which hides the
// launch and the first loads of a chain of short dependent kernels behind the previous kernel's tail.
//
// Every kernel opens with pdl_begin(), every thread of it, before anything else:
//   griddepcontrol.launch_dependents  the next kernel may launch once every block of this one has passed here
//                                     (so a kernel's blocks are all resident before the next one takes SMs)
//   griddepcontrol.wait               wait until the kernel before has finished and its writes are visible
// Because no thread passes the wait before the previous kernel has finished, no kernel finishes before the one
// before it, and waiting on the previous kernel is waiting on all earlier ones. Without the attribute (other
// GPUs, the fused kernel, cuBLAS) both are no-ops.
#pragma once

__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#ifndef PDL_NO_EARLY_TRIGGER
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
