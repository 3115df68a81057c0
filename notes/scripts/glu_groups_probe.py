"""Device probe: the 8B gate/up product with SiLU·mul (gate_up_silu) at 17-64 rows on gemm_wgmma_glu_w2 (two
warpgroups a block, two blocks an SM, 4 stages of 16 KB weights) against gemm_wgmma_glu_w4 (four warpgroups,
one block an SM, 5 stages of 32 KB), forced through CudaBackend.glu_groups, each timed as a captured graph of 20 calls on rotating weight copies (past L2,
as a step's layers read them), by turns, against the weight floor (bytes / copy bandwidth measured here); then the
8B step (random weights, context 512) at T = 1, 32, 64 with each. The question: is gate/up at 17-64 rows (79-88%
of copy bandwidth on an H200, stop 41) bound by the weight bytes each SM keeps in flight (2 x 3 x 16 KB on the 92
SMs holding two blocks, 48 KB on the 40 holding one, against 4 x 32 KB)?

    PYTHONPATH=$PWD python3 notes/scripts/glu_groups_probe.py [rounds]
"""
import itertools
import sys

import numpy as np

from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, copy_bandwidth, in_turn, llama_8b_config, random_bf16, random_model_on_gpu, require_gpu, step_times, time_captured
from minispec.model import Model

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
be = CudaBackend()
I, K = 14336, 4096
copies = [random_bf16(cp, (2 * I, K), 1 / np.sqrt(K)) for _ in range(-(-(400 << 20) // (2 * I * K * 2)))]
turn = itertools.count()
floor = 2 * I * K * 2 / copy_bandwidth() * 1e6
print(f"# glu_groups_probe on {card_name()}: 8B gate/up + SiLU·mul, µs a call; weight floor {floor:.1f} µs", flush=True)
results = {}
for r in range(ROUNDS):
    for M in (17, 32, 64):
        x = random_bf16(cp, (M, K))
        outs = {}
        for G in in_turn([2, 4], r):
            be.glu_groups = G
            assert be.glu_kernel(M, 2 * I, K) == "wgmma"
            outs[G] = be.gate_up_silu(x, copies[0])
            t = time_captured(lambda: be.gate_up_silu(x, copies[next(turn) % len(copies)])) * 1e6
            results.setdefault((M, G), []).append(t)
        assert cp.array_equal(outs[2], outs[4]), f"M={M}: the two kernels' bits differ"
be.glu_groups = None
for (M, G), times in sorted(results.items()):
    t = float(np.median(times))
    print(f"M={M:2d} G={G}: {t:6.1f} µs ({floor / t * 100:5.1f}% of copy bandwidth)  ({' '.join(f'{v:.1f}' for v in times)})", flush=True)
del copies
cfg = llama_8b_config()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
steps = {}
for r in range(ROUNDS):
    for G in in_turn([2, 4], r):
        be.glu_groups = G
        t = step_times(model, 512, tree_sizes=(32, 64))
        steps.setdefault(G, []).append(t)
        print(f"round {r} G={G}: " + "  ".join(f"T={T} {v * 1e3:.3f}" for T, v in t.items()) + " ms", flush=True)
print("medians: ms (x plain for trees)")
for G, runs in steps.items():
    med = {T: float(np.median([run[T] for run in runs])) for T in runs[0]}
    print(f"G={G}: " + "  ".join(f"T={T} {v * 1e3:.3f}" + (f" ({v / med[1]:.3f}x)" if T > 1 else "") for T, v in med.items()), flush=True)
