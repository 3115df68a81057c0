"""Device probe: the wgmma tree attention at page sizes 16 / 32 / 64 (8B heads, T = 64, 8k and 32k keys), with the
automatic split count and with one split: how the TMA box count per tile moves the tile loop.
Usage: PYTHONPATH=$PWD python3 notes/scripts/page_size_probe.py"""
import sys
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, time_captured, require_gpu, card_name
cp = require_gpu()
be = CudaBackend("bfloat16")
print(card_name())
for ctx in (8192, 32768):
    for P in (16, 32, 64):
        q, k, v, plan = attention_case(cp, be, 1, 64, ctx, 32, 8, 128, P=P)
        res = []
        for splits in (None, 1):
            be.attention_splits = splits
            res.append(time_captured(lambda: be.attention(q, k, v, plan, 0.1)) * 1e6)
        be.attention_splits = None
        print(f"ctx {ctx} P {P}: auto {res[0]:.1f} µs, one split {res[1]:.1f} µs", flush=True)
