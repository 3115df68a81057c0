"""Device probe, under Nsight Compute: the 8B gate/up product with SiLU·mul once each as gemm_stream_glu at one row,
gemm_wgmma_glu_w2 (two warpgroups a block) at 17 and 64 rows and gemm_wgmma_glu_w4 (four) at 64, between
cudaProfilerStart / Stop, so that `ncu --profile-from-start off` reads only those four launches (caches flushed
before each, so the weights come from DRAM as in a step).

    ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        python3 notes/scripts/glu_ncu.py
"""
import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import random_bf16, require_gpu

cp = require_gpu()
be = CudaBackend()
I, K = 14336, 4096
w = random_bf16(cp, (2 * I, K), 1 / np.sqrt(K))
cases = [(1, None), (17, 2), (64, 2), (64, 4)]
xs = {M: random_bf16(cp, (M, K)) for M, _ in cases}
for M, G in cases:  # compile and warm up outside the profiled range
    be.glu_groups = G
    be.gate_up_silu(xs[M], w)
cp.cuda.Device().synchronize()
cp.cuda.runtime.profilerStart()
for M, G in cases:
    be.glu_groups = G
    print(M, G, be.glu_kernel(M, 2 * I, K), flush=True)
    be.gate_up_silu(xs[M], w)
cp.cuda.Device().synchronize()
cp.cuda.runtime.profilerStop()
