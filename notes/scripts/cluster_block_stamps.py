"""Device probe: every block's %globaltimer stamps of a one-token step at `context` keys (random weights, default model's
shapes), `launches` eager launches, saved as uint64 [launches, blocks, L, 7] to OUT (npz). The cluster decode files are
built with CD_STAMP_BLOCKS (kernels/cluster_decode.cuh: stamp() then also records every block's layer stamps,
[block][L][7] after the launch ring; stop 52 patched stamp() by hand for it, notes/cluster_r1_index_h200_stop52.log).
A block records its own role's stamps (attention blocks 0-3 of each layer, MLP blocks 4-6); the others stay 0
(checked on an H200 at stop 53: 120 blocks, 68,400 zeros in 5 launches, 24 x 30 x 3 + 96 x 30 x 4 a launch).
Run from a source tree's root: python3 notes/scripts/cluster_block_stamps.py OUT [context] [launches]"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")
sys.path.insert(1, str(Path(__file__).parent))
from cluster_tree_stamps import random_default_model  # noqa: E402
from minispec.bench_gpu import require_gpu  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

import minispec.backends.cuda_backend as cuda_backend  # noqa: E402

cp = require_gpu()
plain_source = cuda_backend.kernel_source
cuda_backend.kernel_source = lambda name: ("#define CD_STAMP_BLOCKS 1\n" if name.startswith("cluster_") else "") + plain_source(name)
out = sys.argv[1]
context = int(sys.argv[2]) if len(sys.argv) > 2 else 512
launches = int(sys.argv[3]) if len(sys.argv) > 3 else 20
backend, model, cache, table = random_default_model(context, 1)
config, L = model.config, model.num_layers
plan = build_plan([StepItem.tree(table, context, Tree([7], [-1]))], 16)
device_plan = backend.prepare_plan(plan)
clusters, span, shared, rows, pass_keys = backend.cluster_decode_shape(model, device_plan, 16)
blocks = clusters * 8
base = 1 + 7 * L + 3 * 64
model.compute(device_plan, cache)  # compile, buffers
runs = []
for _ in range(launches):
    backend.cluster_clock = cp.zeros(base + blocks * 7 * L, dtype=cp.uint64)
    model.compute(device_plan, cache)
    cp.cuda.get_current_stream().synchronize()
    runs.append(backend.cluster_clock[base:].get().reshape(blocks, L, 7))
    backend.cluster_clock = None
np.savez(out, stamps=np.stack(runs), clusters=clusters, kv_heads=config.num_kv_heads, span=span, shared=shared)
print(f"{launches} launches, {blocks} blocks ({config.num_kv_heads} attention clusters), span {span}, shared {shared}")
