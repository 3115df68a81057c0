"""Device probe: could a small model's decode step run inside ONE thread block cluster (up to 16 SMs of a GPC)
instead of across all SMs with grid barriers? The fused-layers kernel spends ~6 of a layer's ~19 µs in grid
barriers (~1 µs each, notes/barrier_probe_stop15.log). A cluster has a hardware barrier and distributed shared
memory; what it lacks is bandwidth, since only its SMs stream the weights. This measures both sides:

  cbar S       µs per barrier.cluster arrive + wait, one cluster of S blocks of 512 threads (S = 16 is a
               non-portable cluster size: the function allows it with cuFuncSetAttribute)
  bcast S N    µs per round of: every block stores N floats into every block's shared memory (st.shared::cluster),
               then a cluster barrier (an all-gather of a GEMV's output slices)
  tma G [cS]   GB/s of G blocks each streaming its share of a buffer with cp.async.bulk into a ring of shared
               memory (STAGES x CHUNK bytes, one thread issuing, mbarriers), from DRAM (512 MB buffer) and from L2
               (a 24 MB buffer read just before); cS = launched as clusters of S (all in one GPC when S = G = 16)
  ldg G        the same with ld.global.nc.v4 loads, 8 a thread in flight (the fused kernel's GEMV loads)

Run from the repository root: python3 notes/scripts/cluster_stream_probe.py"""
import ctypes
import sys

import cupy as cp
import numpy as np

sys.path.insert(0, ".")
from minispec.backends import driver  # noqa: E402
from minispec.bench_gpu import card_name, require_gpu, time_gpu  # noqa: E402

STAGES, CHUNK = 6, 32 << 10

SOURCE = r"""
#include "cluster.cuh"
#include "hopper.cuh"

extern "C" __global__ void __launch_bounds__(512, 1) cbar(int iters) {
    for (int i = 0; i < iters; i++) cluster_sync();
}

extern "C" __global__ void __launch_bounds__(512, 1) bcast(int iters, int n) {
    __shared__ float slots[16 * 128];
    unsigned rank, size;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
    for (int i = 0; i < iters; i++) {
        for (int t = threadIdx.x; t < n * (int)size; t += blockDim.x) {
            int dest = t / n, j = t % n;
            store_cluster(&slots[rank * n + j], dest, (float)(i + j));
        }
        cluster_sync();
    }
}

__device__ __forceinline__ void arrive_expect(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
}

extern "C" __global__ void __launch_bounds__(512, 1) tma(const char* src, long long per_block, unsigned* sink) {
    extern __shared__ __align__(128) char ring[];
    __shared__ unsigned long long full[STAGES];
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) mbarrier_init(&full[s], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    const char* base = src + blockIdx.x * per_block;
    long long n = per_block / CHUNK;
    for (long long i = 0; i < n; i++) {
        int s = i % STAGES;
        if (i >= STAGES) mbarrier_wait(&full[s], ((i / STAGES) - 1) & 1);
        arrive_expect(&full[s], CHUNK);
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                     ::"r"((unsigned)__cvta_generic_to_shared(ring + s * CHUNK)), "l"(base + i * CHUNK), "r"(CHUNK),
                     "r"((unsigned)__cvta_generic_to_shared(&full[s])) : "memory");
    }
    for (long long i = n > STAGES ? n - STAGES : 0; i < n; i++) mbarrier_wait(&full[i % STAGES], (i / STAGES) & 1);
    if (*(volatile unsigned*)ring == 0x12345678u) *sink = 1;
}

extern "C" __global__ void __launch_bounds__(512, 1) ldg(const uint4* src, long long per_block, unsigned* sink) {
    const uint4* base = src + blockIdx.x * (per_block / 16);
    long long n = per_block / 16;
    unsigned acc = 0;
    for (long long i = threadIdx.x; i < n; i += 8 * blockDim.x) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            long long j = i + u * blockDim.x;
            if (j < n) asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w) : "l"(base + j));
            else v[u] = make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) acc ^= v[u].x ^ v[u].w;
    }
    if (acc == 0x12345678u) *sink = acc;
}
"""

CLUSTER_DIMENSION, NON_PORTABLE_CLUSTER = 4, 14  # CUlaunchAttributeID, CUfunction_attribute


def launch(kernel, grid, cluster, args, shared=0):
    """cuLaunchKernelEx with a cluster dimension (cluster = 1: a plain launch)"""
    attribute = driver.LaunchAttribute(id=CLUSTER_DIMENSION)
    ctypes.memmove(attribute.value, (ctypes.c_uint32 * 3)(cluster, 1, 1), 12)
    buffer, pointers = driver.pack_arguments(args)
    config = driver.LaunchConfig((ctypes.c_uint32 * 3)(grid, 1, 1), (ctypes.c_uint32 * 3)(512, 1, 1), shared,
                                 cp.cuda.get_current_stream().ptr, ctypes.pointer(attribute), 1)
    result = driver._driver_launch_ex()(ctypes.byref(config), ctypes.c_void_p(kernel.kernel.ptr), pointers, None)
    if result != 0:
        raise RuntimeError(f"cuLaunchKernelEx: CUresult {result} (grid {grid}, cluster {cluster})")


def main():
    require_gpu()
    from minispec.backends.cuda_backend import KERNELS

    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    module = cp.RawModule(code=SOURCE, options=("-std=c++17", "-arch=sm_90a", f"-I{KERNELS}",
                                                f"-DSTAGES={STAGES}", f"-DCHUNK={CHUNK}"))
    set_attribute = driver.libcuda().cuFuncSetAttribute
    set_attribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    kernels = {name: module.get_function(name) for name in ("cbar", "bcast", "tma", "ldg")}
    for kernel in kernels.values():
        assert set_attribute(ctypes.c_void_p(kernel.kernel.ptr), NON_PORTABLE_CLUSTER, 1) == 0
    kernels["tma"].max_dynamic_shared_size_bytes = STAGES * CHUNK
    print(card_name(), f"{sms} SMs")

    iters = 4000
    for size in (2, 4, 8, 16):
        try:
            ms = time_gpu(lambda: launch(kernels["cbar"], size, size, (np.int32(iters),)), 2, 5) * 1e3
            print(f"  cbar {size:2d}: {ms * 1e3 / iters:.3f} µs per cluster barrier", flush=True)
        except RuntimeError as error:
            print(f"  cbar {size:2d}: {error}")
    for size, n in ((8, 72), (16, 36), (16, 96), (16, 128)):
        try:
            ms = time_gpu(lambda: launch(kernels["bcast"], size, size, (np.int32(iters), np.int32(n))), 2, 5) * 1e3
            print(f"  bcast {size:2d} x {n:3d} floats: {ms * 1e3 / iters:.3f} µs per all-gather round", flush=True)
        except RuntimeError as error:
            print(f"  bcast {size:2d}: {error}")

    sink = cp.zeros(1, dtype=cp.uint32)
    dram = cp.ones(512 << 18, dtype=cp.uint32)  # 512 MB
    l2 = cp.ones(24 << 18, dtype=cp.uint32)  # 24 MB
    for name in ("tma", "ldg"):
        for grid, cluster in ((1, 1), (8, 1), (8, 8), (16, 1), (16, 16), (32, 1), (32, 16), (66, 1), (132, 1)):
            if name == "ldg" and cluster > 1:
                continue
            row = []
            for buffer, label in ((dram, "DRAM"), (l2, "L2")):
                per_block = (buffer.nbytes // grid) // CHUNK * CHUNK
                if label == "DRAM" and grid < 8:
                    per_block = 32 << 20
                args = (buffer, np.int64(per_block), sink)
                shared = STAGES * CHUNK if name == "tma" else 0
                try:
                    if label == "L2":
                        launch(kernels[name], grid, cluster, args, shared)  # bring the buffer into L2
                    ms = time_gpu(lambda: launch(kernels[name], grid, cluster, args, shared), 2, 5) * 1e3
                    total = per_block * grid / (ms * 1e-3) / 1e9
                    row.append(f"{label} {total:7.1f} GB/s ({total / grid:6.1f} a block)")
                except RuntimeError as error:
                    row.append(f"{label} {error}")
            print(f"  {name} grid {grid:3d} cluster {cluster:2d}: " + "   ".join(row), flush=True)


if __name__ == "__main__":
    main()
