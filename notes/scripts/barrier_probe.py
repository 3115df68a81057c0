"""Device probe: what one grid-wide barrier costs on this card, for the barrier designs the fused-layers kernel
could use, and the L2 round trips they are made of. Each kernel runs ITERS barriers back to back in one
persistent launch of one 512-thread block per SM (as kernels/fused_layers.cuh does); µs per barrier is the
launch's time over ITERS (CUDA events, median of 5). Run from the repository root: python3 notes/scripts/barrier_probe.py

  flat        the current grid_barrier: __syncthreads, thread 0 red.release.gpu on one counter, polls it with
              ld.acquire.gpu, __syncthreads
  relaxed     the same, polling with ld.relaxed.gpu and one fence.acq_rel.gpu after the wait
  flag        thread 0 atom.add.acq_rel (returns the count); the last block to arrive bumps a separate flag
              word (another 128-byte line) that the others poll, so the polls do not contend with the adds
  flags       every block stores its count in its own word (st.release); thread t of each block polls word t
  split G     a counter per group of G blocks (each on its own line); thread g of each block polls counter g
  cluster S   hierarchical: a hardware cluster barrier (S blocks), the cluster's rank 0 arrives on the global
              counter and polls it, a second cluster barrier lets the other S - 1 blocks go (S in 2, 4)
  l2 chase    one thread, dependent ld.global.cg loads over 4 MB (L2-resident): ns per L2 round trip
  atom chase  one thread, dependent atom.add.relaxed.gpu returning values: ns per atomic round trip"""
import sys

import cupy as cp
import numpy as np

sys.path.insert(0, ".")
from minispec.bench_gpu import card_name, require_gpu, time_gpu  # noqa: E402

SOURCE = r"""
#define SPIN_LIMIT (1u << 24)
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v; }
__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
    unsigned v; asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v; }
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }

// flat: poll with ld.acquire; relaxed: with ld.relaxed and one fence after the wait
template <bool RELAXED>
__device__ void flat_barriers(unsigned* counter, int iters) {
    unsigned target = 0;
    for (int i = 0; i < iters; i++) {
        target += gridDim.x;
        __syncthreads();
        if (threadIdx.x == 0) {
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
            unsigned spins = 0;
            while ((RELAXED ? ld_relaxed(counter) : ld_acquire(counter)) < target) if (++spins == SPIN_LIMIT) __trap();
            if (RELAXED) asm volatile("fence.acq_rel.gpu;" ::: "memory");
        }
        __syncthreads();
    }
}
extern "C" __global__ void __launch_bounds__(512, 1) flat(unsigned* c, int iters) { flat_barriers<false>(c, iters); }
extern "C" __global__ void __launch_bounds__(512, 1) relaxed(unsigned* c, int iters) { flat_barriers<true>(c, iters); }

extern "C" __global__ void __launch_bounds__(512, 1) flag(unsigned* counter, int iters) {
    unsigned* flag_word = counter + 32;  // its own 128-byte line
    for (int i = 0; i < iters; i++) {
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned old;
            asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(counter) : "memory");
            if (old == (i + 1) * gridDim.x - 1) asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag_word), "r"(i + 1) : "memory");
            else {
                unsigned spins = 0;
                while (ld_acquire(flag_word) < (unsigned)(i + 1)) if (++spins == SPIN_LIMIT) __trap();
            }
        }
        __syncthreads();
    }
}

// every block stores its barrier count (epoch) in its own word of a packed array with st.release; thread t of
// every block polls block t's word with ld.acquire (a warp reads one 128-byte line a poll)
extern "C" __global__ void __launch_bounds__(512, 1) flags(unsigned* words, int iters) {
    for (int i = 1; i <= iters; i++) {
        __syncthreads();
        if (threadIdx.x == 0) asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(words + blockIdx.x), "r"(i) : "memory");
        if (threadIdx.x < gridDim.x) {
            unsigned spins = 0;
            while (ld_acquire(words + threadIdx.x) < (unsigned)i) if (++spins == SPIN_LIMIT) __trap();
        }
        __syncthreads();
    }
}

// counters per group of GROUP blocks, each on its own 128-byte line; thread g polls group g's counter
template <int GROUP>
__device__ void split_counters(unsigned* counters, int iters) {
    int groups = (gridDim.x + GROUP - 1) / GROUP, g = threadIdx.x, mine = blockIdx.x / GROUP;
    unsigned size = g < groups ? min(GROUP, (int)gridDim.x - g * GROUP) : 0;
    for (int i = 1; i <= iters; i++) {
        __syncthreads();
        if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counters + 32 * mine) : "memory");
        if (g < groups) {
            unsigned spins = 0;
            while (ld_acquire(counters + 32 * g) < size * i) if (++spins == SPIN_LIMIT) __trap();
        }
        __syncthreads();
    }
}
extern "C" __global__ void __launch_bounds__(512, 1) split32(unsigned* c, int iters) { split_counters<32>(c, iters); }
extern "C" __global__ void __launch_bounds__(512, 1) split8(unsigned* c, int iters) { split_counters<8>(c, iters); }

template <int S>
__device__ void cluster_barriers(unsigned* counter, int iters) {
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    unsigned target = 0, clusters = gridDim.x / S;
    for (int i = 0; i < iters; i++) {
        target += clusters;
        cluster_sync();
        if (rank == 0 && threadIdx.x == 0) {
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
            unsigned spins = 0;
            while (ld_acquire(counter) < target) if (++spins == SPIN_LIMIT) __trap();
        }
        cluster_sync();
    }
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(512, 1) cluster2(unsigned* c, int iters) { cluster_barriers<2>(c, iters); }
extern "C" __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(512, 1) cluster4(unsigned* c, int iters) { cluster_barriers<4>(c, iters); }

extern "C" __global__ void l2_chase(const unsigned* next, int steps, unsigned* out) {
    unsigned at = 0;
    for (int i = 0; i < steps; i++) asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(at) : "l"(next + at) : "memory");
    *out = at;
}

extern "C" __global__ void atom_chase(unsigned* word, int steps, unsigned* out) {
    unsigned v = 0;
    for (int i = 0; i < steps; i++) asm volatile("atom.relaxed.gpu.global.add.u32 %0, [%1], %2;" : "=r"(v) : "l"(word), "r"(v & 1u) : "memory");
    *out = v;
}
"""


def timed(fn):
    """ms of fn(), the median of 5 between CUDA events after a warm-up run"""
    return time_gpu(fn, 1, 5) * 1e3


def main():
    require_gpu()
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    module = cp.RawModule(code=SOURCE, options=("-std=c++17", "-arch=sm_90a"))
    counter = cp.zeros(32 * 64, dtype=cp.uint32)
    iters = 2000
    print(card_name(), f"{sms} SMs; µs per grid barrier, {iters} back to back in one launch of 512-thread blocks")
    cases = [("flat", sms), ("relaxed", sms), ("flag", sms), ("flags", sms), ("split32", sms), ("split8", sms), ("flat", 128),
             ("cluster2", sms - sms % 2), ("cluster4", sms - sms % 4)]
    for name, grid in cases:
        kernel = module.get_function(name)

        def run(kernel=kernel, grid=grid):
            counter.fill(0)
            kernel((grid,), (512,), (counter, np.int32(iters)))

        run()
        cp.cuda.Device().synchronize()
        print(f"  {name:9s} grid {grid:3d}: {timed(run) * 1e3 / iters:.3f} µs", flush=True)
    words = 1 << 20  # 4 MB: L2-resident, a random cycle so no prefetcher helps
    order = np.random.default_rng(0).permutation(words // 32) * 32
    chain = np.zeros(words, dtype=np.uint32)
    chain[order] = np.roll(order, -1)
    chain = cp.asarray(chain)
    out = cp.zeros(1, dtype=cp.uint32)
    steps = 20000
    chase = module.get_function("l2_chase")
    chase((1,), (1,), (chain, np.int32(steps), out))
    print(f"  l2 chase: {timed(lambda: chase((1,), (1,), (chain, np.int32(steps), out))) * 1e6 / steps:.0f} ns per dependent load")
    atom = module.get_function("atom_chase")
    print(f"  atom chase: {timed(lambda: atom((1,), (1,), (counter, np.int32(steps), out))) * 1e6 / steps:.0f} ns per dependent atomic")


if __name__ == "__main__":
    main()
