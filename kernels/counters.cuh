// Counters between the blocks of one launch: a block publishes its writes by adding 1 (thread 0's gpu-scope release
// add, after a __syncthreads that orders the block's writes before it), and a block that reads them waits until the
// count reaches a target (thread 0's acquire polls, then a __syncthreads that passes the acquire on). The acquire is
// what a reader needs; __threadfence() would be a sequentially consistent fence (MEMBAR.SC), measurably slower.
// Every acquire poll invalidates the L1 (CCTL.IVALL). Used by kernels/fused_layers.cuh (its grid barrier and dataflow
// counters); kernels/cluster_decode.cu polls tagged values instead (one round trip where these take three).
#pragma once

__device__ __forceinline__ void release_add(unsigned* counter) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
}

// until *counter >= target (acquire); seconds of waiting mean a block is not resident: fail, do not hang
__device__ __forceinline__ void poll_until(const unsigned* counter, unsigned target) {
    unsigned seen, spins = 0;
    do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        if (++spins == (1u << 22)) __trap();
    } while (seen < target);
}

// this block's writes so far, counted
__device__ __forceinline__ void block_arrive(unsigned* counter) {
    __syncthreads();
    if (threadIdx.x == 0) release_add(counter);
}

// every thread of the block until *counter >= target, and the writes counted there visible to it
__device__ __forceinline__ void block_wait(const unsigned* counter, unsigned target) {
    if (threadIdx.x == 0) poll_until(counter, target);
    __syncthreads();
}
