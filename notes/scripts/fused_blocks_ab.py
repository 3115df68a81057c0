"""Device probe: the fused-layers kernel on fewer SMs than the card has (CudaBackend.fused_blocks): decode one step
ahead (bench_gpu.decode_ahead_time, greedy) on a random model with the default model's shapes, at the contexts given,
each grid size in turn over rounds. A grid barrier's cost may grow with the blocks that arrive; fewer blocks leave
fewer warps to the GEMV phases (gate/up has 1536 column pairs: 96 blocks of 16 warps take them in one round).
Usage: PYTHONPATH=$PWD python3 notes/scripts/fused_blocks_ab.py [blocks,blocks,...] [rounds=N] [contexts]"""
import sys

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, decode_ahead_time, random_model_on_gpu, require_gpu, smollm2_135m_config  # noqa: E402
from minispec.model import Model  # noqa: E402

require_gpu()
cfg = smollm2_135m_config()
backend = CudaBackend()
model = Model(cfg, random_model_on_gpu(cfg, backend), backend)
grids = [int(v) for v in sys.argv[1].split(",")] if len(sys.argv) > 1 and "," in sys.argv[1] else [backend.sm_count, 96]
rounds = next((int(a[7:]) for a in sys.argv[1:] if a.startswith("rounds=")), 2)
contexts = [int(a) for a in sys.argv[1:] if a.isdigit()] or [100, 512]
print(card_name(), f"{backend.sm_count} SMs", flush=True)
for _ in range(rounds):
    for blocks in grids:
        backend.fused_blocks = blocks
        backend.graphs.clear()
        times = [decode_ahead_time(model, context, 64) for context in contexts]
        print(f"blocks {blocks:4d} | " + " | ".join(f"ctx {c}: {t * 1e6:6.1f} µs/step" for c, t in zip(contexts, times)), flush=True)
