"""A/B of what the engine's loops see per step, random weights with the default model's shapes (no download):
forward + argmax + the ids' copy to the host (bench e2e's step, T = 1, 4, 16 at context 512), and the greedy and
sampled decode one step ahead (Engine.decode_ahead's loop). Unlike graph_ab.py this includes the argmax and the
host's share, so it compares builds that put the argmax in or out of the step's graph.
usage (repo root): PYTHONPATH=$PWD python3 notes/scripts/step_ab.py TAG   (an older build: run it from a copy, as
graph_ab.py says)"""
import sys

import minispec
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import decode_ahead_time, random_model_on_gpu, require_gpu, smollm2_135m_config, step_times
from minispec.model import Model
from minispec.sampling import SamplingParams

cp = require_gpu()
cfg = smollm2_135m_config()
be = CudaBackend()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
steps = step_times(model, 512, tree_sizes=(4, 16))
ahead = decode_ahead_time(model, 512)
sampled = decode_ahead_time(model, 512, params=SamplingParams(temperature=0.8, top_k=50, top_p=0.9))
print(f"{sys.argv[1]} ({minispec.__file__}): µs a step: " + "  ".join(f"T={T} {s * 1e6:.1f}" for T, s in steps.items())
      + f"  greedy ahead {ahead * 1e6:.1f}  sampled ahead {sampled * 1e6:.1f}", flush=True)
