"""Device probe: the kernels of one layer-by-layer step (8B shapes, context 512, T = 64 tree, or T = 1 with the fused
kernel off), for ncu to time one by one. Run as
  ncu --clock-control none --nvtx --nvtx-include "step/" --metrics gpu__time_duration.sum --csv python3 layer_profile.py T
The step runs twice; only the second (inside the NVTX range "step") is profiled."""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import llama_8b_config, random_model_on_gpu, require_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
T = int(sys.argv[1]) if len(sys.argv) > 1 else 64
layers = int(sys.argv[2]) if len(sys.argv) > 2 else 3
be = CudaBackend()
be.use_graphs = False
be.fused_max_rows = 0
cfg = llama_8b_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be, num_layers=layers)
rng = np.random.default_rng(0)
context = 512
cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
table = []
cache.prepare(table, 0, context + 64)
parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
plan = build_plan([StepItem.tree(table, context, Tree(rng.integers(0, 1000, T), parents))], 16)
model.forward(plan, cache).argmax()
cp.cuda.nvtx.RangePush("step")
model.forward(plan, cache).argmax()
cp.cuda.nvtx.RangePop()
