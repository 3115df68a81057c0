"""Device probe: what does a point-to-point exchange inside a thread block cluster cost, against a cluster barrier
and a grid barrier? A decode layer of the fused kernel is five dependent exchanges of ~1-1.5 µs
(notes/o_fold_h100_stop26.log); a layout that did qkv, attention and O inside one cluster per KV head and the MLP
as a cluster-reduced split over all SMs would need two grid barriers a layer and three cluster exchanges. Stop 23
measured the cluster barrier at 0.66-0.72 µs (notes/cluster_stream_probe_h100_stop23.log); an exchange that waits
only for the bytes it reads (st.async with an mbarrier's complete_tx, the consumer alone waiting) could cost less.

  cbar         µs per barrier.cluster arrive + wait, clusters of 8 blocks of 512 threads, 1 block an SM
  ping         µs per hop: rank 0 and rank 1 send 4 bytes back and forth (st.async, the receiver's mbarrier)
  a2a N        µs per round: every block pushes N floats to each of the 8 blocks (v4 st.async), then waits on its
               own mbarrier for the 8 N floats it receives (an all-to-all: the MLP's down partials, 72 floats)
  gather N     µs per round: 8 blocks push N floats to rank 0, which waits, then pushes N floats back to all
               (qkv -> one attention block -> O)
  grid         µs per flat grid barrier over the same grid (notes/scripts/barrier_probe.py's `flat`, launched in
               clusters of 8)

Run from the repository root: python3 notes/scripts/cluster_push_probe.py"""
import sys

import cupy as cp
import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, "notes/scripts")
from barrier_probe import SOURCE as BARRIER_SOURCE  # noqa: E402
from cluster_stream_probe import launch  # noqa: E402

from minispec.bench_gpu import card_name, require_gpu, time_gpu  # noqa: E402

SOURCE = r"""
#include "cluster.cuh"
#include "hopper.cuh"

__device__ __forceinline__ unsigned rank_in_cluster() {
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    return rank;
}
__device__ __forceinline__ void expect(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
}
// 16 bytes into block `rank`'s copy of `local`, counted on its copy of `bar`
__device__ __forceinline__ void push4(float* local, unsigned long long* bar, unsigned rank, float4 v) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n"
                 ::"r"(cluster_address(local, rank)), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(cluster_address(bar, rank)) : "memory");
}
__device__ __forceinline__ void push1(float* local, unsigned long long* bar, unsigned rank, float v) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];\n"
                 ::"r"(cluster_address(local, rank)), "f"(v), "r"(cluster_address(bar, rank)) : "memory");
}

__shared__ unsigned long long bars[2];
__shared__ __align__(16) float buf[2][8 * 256];

__device__ void setup() {
    if (threadIdx.x == 0) {
        mbarrier_init(&bars[0], 1), mbarrier_init(&bars[1], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_sync();
}

extern "C" __global__ void __launch_bounds__(512, 1) cbar(int iters, float* sink) {
    for (int i = 0; i < iters; i++) cluster_sync();
}

extern "C" __global__ void __launch_bounds__(512, 1) ping(int iters, float* sink) {
    setup();
    unsigned rank = rank_in_cluster();
    if (threadIdx.x == 0 && rank < 2) {
        float v = 1.0f;
        for (int i = 0; i < iters; i++) {
            int s = i & 1;
            if (rank == 0) {
                push1(&buf[s][0], &bars[s], 1, v);
                expect(&bars[s], 4);
                mbarrier_wait<true>(&bars[s], (i >> 1) & 1);
                v = buf[s][0] + 1.0f;
            } else {
                expect(&bars[s], 4);
                mbarrier_wait<true>(&bars[s], (i >> 1) & 1);
                v = buf[s][0] + 1.0f;
                push1(&buf[s][0], &bars[s], 0, v);
            }
        }
        if (v == 12345.0f) *sink = v;
    }
    cluster_sync();
}

extern "C" __global__ void __launch_bounds__(512, 1) a2a(int iters, int n, float* sink) {
    setup();
    unsigned rank = rank_in_cluster();
    int quads = n / 4;
    float acc = 0.0f;
    for (int i = 0; i < iters; i++) {
        int s = i & 1;
        if (threadIdx.x == 0) expect(&bars[s], 8 * n * 4);
        for (int t = threadIdx.x; t < 8 * quads; t += blockDim.x) {
            int dest = t / quads, j = t % quads;
            push4(&buf[s][rank * n + 4 * j], &bars[s], dest, make_float4(i, j, 0, 0));
        }
        mbarrier_wait<true>(&bars[s], (i >> 1) & 1);
        if (threadIdx.x < 8 * n) acc += buf[s][threadIdx.x];
    }
    if (acc == 12345.0f) *sink = acc;
    cluster_sync();
}

extern "C" __global__ void __launch_bounds__(512, 1) gather(int iters, int n, float* sink) {
    // round i: everyone pushes n floats to rank 0 (bars[0] there), rank 0 waits and pushes n floats back to each
    // block (bars[1] everywhere); rounds alternate buffers through the parity
    setup();
    unsigned rank = rank_in_cluster();
    int quads = n / 4;
    float acc = 0.0f;
    for (int i = 0; i < iters; i++) {
        unsigned parity = i & 1;
        if (threadIdx.x == 0) {
            if (rank == 0) expect(&bars[0], 8 * n * 4);
            expect(&bars[1], n * 4);
        }
        for (int t = threadIdx.x; t < quads; t += blockDim.x) push4(&buf[0][rank * n + 4 * t], &bars[0], 0, make_float4(i, t, 0, 0));
        if (rank == 0) {
            mbarrier_wait<true>(&bars[0], parity);
            for (int t = threadIdx.x; t < 8 * quads; t += blockDim.x) {
                int dest = t / quads, j = t % quads;
                push4(&buf[1][4 * j], &bars[1], dest, make_float4(buf[0][dest * n + 4 * j], 0, 0, 0));
            }
        }
        mbarrier_wait<true>(&bars[1], parity);
        if (threadIdx.x < n) acc += buf[1][threadIdx.x];
    }
    if (acc == 12345.0f) *sink = acc;
    cluster_sync();
}

"""


def main():
    require_gpu()
    from minispec.backends.cuda_backend import KERNELS

    module = cp.RawModule(code=SOURCE, options=("-std=c++17", "-arch=sm_90a", f"-I{KERNELS}"))
    kernels = {name: module.get_function(name) for name in ("cbar", "ping", "a2a", "gather")}
    kernels["grid"] = cp.RawModule(code=BARRIER_SOURCE, options=("-std=c++17", "-arch=sm_90a")).get_function("flat")
    shared = 120 << 10  # one block an SM, as the fused kernel
    for kernel in kernels.values():
        kernel.max_dynamic_shared_size_bytes = shared
    sink = cp.zeros(1, dtype=cp.float32)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    print(card_name(), f"{sms} SMs; clusters of 8 blocks of 512 threads, {shared >> 10} KB shared each")
    iters = 4000
    for clusters in (1, 15):
        grid = 8 * clusters
        runs = [("cbar", (np.int32(iters), sink)), ("ping", (np.int32(iters), sink))]
        runs += [(f"a2a {n}", (np.int32(iters), np.int32(n), sink)) for n in (8, 72, 192)]
        runs += [(f"gather {n}", (np.int32(iters), np.int32(n), sink)) for n in (64, 192)]
        for label, args in runs:
            kernel = kernels[label.split()[0]]
            try:
                ms = time_gpu(lambda: launch(kernel, grid, 8, args, shared), 2, 5)
                print(f"  grid {grid:3d}  {label:12s} {ms * 1e3 / iters * 1e3:7.3f} µs", flush=True)
            except RuntimeError as error:
                print(f"  grid {grid:3d}  {label:12s} {error}", flush=True)
        counter = cp.zeros(1, dtype=cp.uint32)

        def run_grid():
            counter.fill(0)
            launch(kernels["grid"], grid, 8, (counter, np.int32(iters)), shared)

        ms = time_gpu(run_grid, 2, 5)
        print(f"  grid {grid:3d}  {'grid':12s} {ms * 1e3 / iters * 1e3:7.3f} µs", flush=True)


if __name__ == "__main__":
    main()
