"""Device probe for ncu: tree attention on the wgmma kernel, 8B heads, T = 64, 8k keys, once with one split
(every block streams 128 key tiles: the steady state of the tile loop) and once with the automatic split count.
  ncu --clock-control none --kernel-name regex:tree_attention_wgmma --launch-skip 2 --section ... python3 attention_ncu.py"""
import sys
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, require_gpu

cp = require_gpu()
be = CudaBackend("bfloat16")
be.pdl = False
q, k, v, plan = attention_case(cp, be, 1, 64, 8192, 32, 8, 128)
for splits in (1, None):  # warm-up launches (skipped by ncu), then the profiled ones
    be.attention_splits = splits
    be.attention(q, k, v, plan, 0.1)
for splits in (1, None):
    be.attention_splits = splits
    be.attention(q, k, v, plan, 0.1)
cp.cuda.Device().synchronize()
