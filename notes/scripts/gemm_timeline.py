"""Device probe: where a small-M product's fixed cost a call goes. bench gemm times 20 calls of `linear` in a captured
graph on rotating weight copies (past L2); this replays such a graph under CUPTI's kernel records and gives, per call,
its own span (start to end), the gap or overlap with the call before (its start less that one's end: negative when
its first blocks ran under it, placed as the other's blocks left), and the stream time at the rate the LM head's
long stream reaches (`bench gemm`: ~4.5 TB/s read), so that own - stream is what a call adds beside its bytes.

  python3 notes/scripts/gemm_timeline.py [M ...]   (needs cupti-python; 8B qkv, O and down shapes; default M 1 16 64)
"""
import itertools
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import captured_graph, card_name, copy_bandwidth, require_gpu, weight_copies  # noqa: E402
from minispec.timeline import KernelRecords, short_name  # noqa: E402

cp = require_gpu()
records = KernelRecords()  # before the backend makes the GPU context
be = CudaBackend("bfloat16")
READ_RATE = 4.5e12  # bytes/s: the 8B LM head's stream at one row (bench gemm, H200)
CALLS = 20
SHAPES = {"qkv": (6144, 4096), "O": (4096, 4096), "down": (4096, 14336)}  # (N, K)
rows = [int(a) for a in sys.argv[1:]] or [1, 16, 64]
print(f"# gemm_timeline on {card_name()}: copy bandwidth {copy_bandwidth() / 1e12:.2f} TB/s; {CALLS} calls of linear a "
      f"captured graph on rotating weight copies; medians over the middle calls of the last of 5 replays; µs")
print(f"{'shape':<6} {'M':>3} {'kernel':<32} {'blocks':>6} {'per call':>8} {'own':>6} {'gap':>6} {'stream':>7} {'own-stream':>10}")
for name, (N, K) in SHAPES.items():
    copies = weight_copies(cp, N, K)
    for M in rows:
        x = cp.random.standard_normal((M, K), dtype=cp.float32).astype(cp.float16).view(cp.uint16)
        turn = itertools.count()
        graph, stream, _kept = captured_graph(lambda: be.linear(x, copies[next(turn) % len(copies)]), CALLS)
        records.take()
        for _ in range(5):
            graph.launch(stream)
        stream.synchronize()
        run = records.take()
        run = run[-len(run) // 5:]  # the last replay (one kernel a call; a split-K sum would add its own)
        starts, ends = np.array([r[0] for r in run]), np.array([r[1] for r in run])
        own, gap = (ends - starts) / 1e3, (starts[1:] - ends[:-1]) / 1e3
        middle = slice(len(run) // 4, 3 * len(run) // 4)
        per_call = (ends[-1] - starts[0]) / 1e3 / CALLS
        stream_us = N * K * 2 / READ_RATE * 1e6
        kernel = short_name(run[0][2])
        print(f"{name:<6} {M:>3} {kernel:<32} {run[0][3]:>6} {per_call:>8.2f} {np.median(own[middle]):>6.2f} "
              f"{np.median(gap[middle]):>6.2f} {stream_us:>7.2f} {np.median(own[middle]) - stream_us:>10.2f}", flush=True)
records.close()
