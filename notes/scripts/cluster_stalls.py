"""Device probe: where kernels/cluster_decode.cu's one-row step spends its warps' time, for comparing two builds.
Runs one decode step (random weights with the default model's shapes, graphs off) a few times, then once inside the
NVTX range "step" for ncu. Run from a source tree's root (it imports that tree's minispec), e.g.
  ncu --clock-control none --nvtx --nvtx-include "step/" --kernel-name regex:cluster_decode \
      --section WarpStateStats --section SchedulerStats --section InstructionStats --csv --page details \
      python3 notes/scripts/cluster_stalls.py [context]"""
import sys
from pathlib import Path

sys.path.insert(0, ".")
sys.path.insert(1, str(Path(__file__).parent))
from cluster_tree_stamps import random_default_model  # noqa: E402
from minispec.bench_gpu import require_gpu  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
context = int(sys.argv[1]) if len(sys.argv) > 1 else 512
backend, model, cache, table = random_default_model(context, 1)
backend.use_graphs = False
plan = build_plan([StepItem.tree(table, context, Tree([7], [-1]))], 16)
for _ in range(3):
    model.forward(plan, cache).argmax()
cp.cuda.get_current_stream().synchronize()
cp.cuda.nvtx.RangePush("step")
model.forward(plan, cache).argmax()
cp.cuda.nvtx.RangePop()
cp.cuda.get_current_stream().synchronize()
