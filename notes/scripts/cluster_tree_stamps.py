"""Device probe: kernels/cluster_decode.cu's per-layer stamps (block 0 of the attention role, the first MLP block;
%globaltimer) for steps of 1, 2 and 4 rows on a random model with the default model's shapes, and the launch shape each
instance gets. Medians over the layers of 5 launches; µs from the layer's start (block 0 after the down sums are added).
Run from the repository root: python3 notes/scripts/cluster_tree_stamps.py [context]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

NAMES = ("qkv pushed", "merged", "O written", "MLP: O added", "down pushed", "down written", "next layer")


def random_default_model(context: int, rows: int):
    """(backend, model, cache, page table) for probes: random weights with the default model's shapes on a new
    CudaBackend, a cache of pages of 16 prepared for `context` keys and `rows` more. (Shared with
    cluster_block_stamps.py and cluster_stalls.py.)"""
    config = smollm2_135m_config()
    backend = CudaBackend()
    model = Model(config, random_model_on_gpu(config, backend), backend)
    cache = model.new_cache(-(-(context + rows) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, context + rows)
    return backend, model, cache, table


def main():
    cp = require_gpu()
    context = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    backend, model, cache, table = random_default_model(context, 64)
    L = model.num_layers
    print(card_name(), f"SmolLM2-135M shapes, random weights, context {context}", flush=True)
    for T in (1, 2, 3, 4):
        plan = build_plan([StepItem.tree(table, context, Tree(np.arange(T), list(range(-1, T - 1))))], 16)
        device_plan = backend.prepare_plan(plan)
        shape = backend.cluster_decode_shape(model, device_plan, 16)
        backend.cluster_clock = cp.zeros(1 + 7 * L + 3 * 64, dtype=cp.uint64)
        rows = []
        for _ in range(5):
            model.compute(device_plan, cache)
            cp.cuda.get_current_stream().synchronize()
            stamps = backend.cluster_clock.get().astype(np.int64)
            per_layer = stamps[1 : 1 + 7 * L].reshape(L, 7)
            nxt = np.append(per_layer[1:, 0], per_layer[-1, 0])
            rows.append(np.concatenate([per_layer[:-1, 1:] - per_layer[:-1, :1], (nxt - per_layer[:, 0])[:-1, None]], axis=1))
        med = np.median(np.concatenate(rows), axis=0) / 1e3
        backend.cluster_clock = None
        print(f"T={T} shape (clusters, span, shared, rows) {shape}: µs from the layer's start:",
              ", ".join(f"{n} {v:.2f}" for n, v in zip(NAMES[:6] + NAMES[6:], med[:6].tolist() + [med[6]])), flush=True)


if __name__ == "__main__":
    main()
