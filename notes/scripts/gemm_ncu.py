"""Device probe, under Nsight Compute: the 8B O, qkv and down products (linear, the engine's kernel for each) at 1
and 64 rows, once each between cudaProfilerStart / Stop, so that `ncu --profile-from-start off` reads only those
launches (caches flushed before each, so the weights come from DRAM as in a step). The question: is the fabric
between the L2's two partitions as busy for these shorter products (O at 65% of copy bandwidth on an H200) as for
gate/up (83-86%, notes/glu_groups_h200_stop41.log), or do they leave it idle?

    ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,\
lts__ltcfabric2ltc_cycles_active.avg.pct_of_peak_sustained_elapsed,lts__t_bytes.sum python3 notes/scripts/gemm_ncu.py
"""
import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import random_bf16, require_gpu

cp = require_gpu()
be = CudaBackend()
shapes = {"o": (4096, 4096), "qkv": (6144, 4096), "down": (4096, 14336)}  # (N, K)
weights = {name: random_bf16(cp, shape, 1 / np.sqrt(shape[1])) for name, shape in shapes.items()}
cases = [(name, M) for name in shapes for M in (1, 64)]
xs = {(name, M): random_bf16(cp, (M, shapes[name][1])) for name, M in cases}
for case in cases:  # compile and warm up outside the profiled range
    be.linear(xs[case], weights[case[0]])
cp.cuda.Device().synchronize()
cp.cuda.runtime.profilerStart()
for name, M in cases:
    N, K = shapes[name]
    print(name, M, be.own_kernel(M, N, K), be.wgmma_shape(N, K), flush=True)
    be.linear(xs[name, M], weights[name])
cp.cuda.Device().synchronize()
cp.cuda.runtime.profilerStop()
