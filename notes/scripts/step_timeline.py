"""Device probe: `minispec bench timeline` (minispec/timeline.py) at chosen tree sizes and backend settings: every
kernel of the 8B-shape step inside its CUDA graph (CUPTI's records of 5 replays), its marginal time (its end less the
latest end before it), the mean over the middle layers.

  python3 notes/scripts/step_timeline.py [T ...] [NAME=VALUE ...]   (needs cupti-python; random 8B weights, context 512)

NAME=VALUE sets a CudaBackend attribute first (a Python literal: gemm_norm=True, attention_splits=4), as the A/B
scripts' variants do. (Stop 60's first logs came from this script before the analysis moved into minispec; they also
printed the step timed by events around a replay, which CUPTI's per-launch cost inflates: ~440 µs at T = 64.)"""
import ast
import sys

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, step_timelines  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.timeline import KernelRecords  # noqa: E402

require_gpu()
records = KernelRecords()  # before the backend makes the GPU context
settings = [a for a in sys.argv[1:] if "=" in a]
sizes = [int(a) for a in sys.argv[1:] if "=" not in a] or [64, 1]
be = CudaBackend()
for name, value in (a.split("=", 1) for a in settings):
    if not hasattr(be, name):
        raise SystemExit(f"CudaBackend has no attribute {name!r}")
    setattr(be, name, ast.literal_eval(value))
cfg = llama_8b_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be)
print(f"# step_timeline on {card_name()}: 8B shapes, context 512, µs; set: {settings}")
for T, timeline in step_timelines(model, sizes, records):
    print(f"\nT = {T}: {len(timeline.names)} kernels a step, {timeline.period} a layer from kernel {timeline.first}; "
          f"first start to last end {timeline.span:.1f}, marginal sum {timeline.marginal.sum():.1f}, idle {timeline.idle.sum():.1f}")
    print(timeline.table())
records.close()
