"""Device probe: tree steps of 2-4 nodes on kernels/cluster_decode.cu (cluster_tree_rows = 4) against the fused-layers
kernel (cluster_tree_rows = 0), by turns, on a random model with the default model's shapes: ms a forward (bench e2e's
step_times: model.forward and argmax) for T = 1, 2, 3, 4 (and 8, 16 for scale) at each context.
Run from the repository root: python3 notes/scripts/cluster_tree_probe.py [rounds] [contexts...]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, in_turn, random_model_on_gpu, require_gpu, smollm2_135m_config, step_times  # noqa: E402
from minispec.model import Model  # noqa: E402


def main():
    require_gpu()
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    contexts = [int(a) for a in sys.argv[2:]] or [100, 512]
    config = smollm2_135m_config()
    backend = CudaBackend()
    model = Model(config, random_model_on_gpu(config, backend), backend)
    print(card_name(), "SmolLM2-135M shapes, random weights; ms a forward (median of 10), by turns", flush=True)
    sizes = (2, 3, 4, 8, 16)
    for context in contexts:
        times = {name: {T: [] for T in (1, *sizes)} for name in ("cluster", "fused")}
        for round_ in range(rounds):
            for name in in_turn(["cluster", "fused"], round_):
                backend.cluster_tree_rows = 4 if name == "cluster" else 0
                for T, seconds in step_times(model, context, sizes).items():
                    times[name][T].append(seconds * 1e3)
        for name, by_T in times.items():
            print(f"context {context:5d} {name:8s}", "  ".join(f"T={T} {np.median(v):.3f}" for T, v in by_T.items()), flush=True)


if __name__ == "__main__":
    main()
