"""Device probe, run under ncu: which kernels cuBLAS launches (grid, block, cluster, shared memory, time, DRAM share)
for the 8B gate/up, qkv and O products at 32 and 64 rows (bench gemm: cuBLAS streams gate/up at 99% of copy at 32
rows where gemm_wgmma takes 85%).

    ncu --clock-control none --metrics launch__grid_size,launch__block_size,launch__cluster_dim_x,launch__cluster_dim_y,launch__shared_mem_per_block_dynamic,launch__registers_per_thread,gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed python3 notes/scripts/cublas_kernels_probe.py
"""
import cupy as cp
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import random_bf16
be = CudaBackend()
for M in (32, 64):
    for N, K in ((28672, 4096), (6144, 4096), (4096, 4096)):
        x, w = random_bf16(cp, (M, K)), random_bf16(cp, (N, K), K ** -0.5)
        y = cp.empty((M, N), dtype=cp.float32)
        be.gemm = "cublas"
        for _ in range(2):
            be.linear(x, w)
cp.cuda.Device().synchronize()
