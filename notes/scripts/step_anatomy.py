"""Device probe: where a one-sequence decode step's time goes outside kernels/cluster_decode.cu's layers, on a random
model with the default model's shapes. Decode one step ahead as the engine runs it (bench_gpu.decode_ahead_time) with
the kernel's stamps on (CudaBackend.cluster_clock): per launch, block 0 in, the last block in and block 0 out, from
the kernel's ring of the last 64 launches; from consecutive launches the step's period and what lies between one
launch's end and the next one's start (final norm, LM head, argmax, launch gaps; before stop 29 also the next step's embedding). Then
each of those operations alone, captured 20 times into a graph (bench_gpu.time_captured), and the kernel alone.
Run from the repository root: python3 notes/scripts/step_anatomy.py [contexts...]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, decode_ahead_time, random_model_on_gpu, require_gpu, smollm2_135m_config, time_captured  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

RING = 64


def main():
    cp = require_gpu()
    config = smollm2_135m_config()
    backend = CudaBackend()
    model = Model(config, random_model_on_gpu(config, backend), backend)
    c, w, L = config, model.weights, model.num_layers
    contexts = [int(a) for a in sys.argv[1:]] or [100, 512]
    print(card_name(), "SmolLM2-135M shapes, random weights", flush=True)
    for context in contexts:
        clock = cp.zeros(1 + 7 * L + 3 * RING, dtype=cp.uint64)
        backend.cluster_clock = clock
        backend.graphs.clear()
        step = decode_ahead_time(model, context, 48)
        cp.cuda.runtime.deviceSynchronize()
        stamps = cp.asnumpy(clock).astype(np.int64)
        ring = stamps[1 + 7 * L:].reshape(RING, 3)
        ring = ring[np.argsort(ring[:, 0])]
        ring = ring[ring[:, 0] > 0][-40:]  # the last 40 launches, in order (one run of 48 steps, less its first)
        inside = (ring[:, 2] - ring[:, 0]) / 1e3
        ramp = (ring[:, 1] - ring[:, 0]) / 1e3
        period = np.diff(ring[:, 0]) / 1e3
        outside = (ring[1:, 0] - ring[:-1, 2]) / 1e3
        layers = np.diff(stamps[: 1 + 7 * L]).reshape(L, 7)
        last = ring[-1]
        preamble = (stamps[0] - last[0]) / 1e3 if stamps[0] > last[0] else float("nan")
        tail = (last[2] - stamps[7 * L]) / 1e3
        med = np.median
        print(f"context {context}: decode one step ahead {step * 1e6:.1f} µs a step; launches (medians of {len(ring)}): "
              f"period {med(period):.1f} µs, block 0 in -> out {med(inside):.1f}, last block in after block 0 {med(ramp):.2f}, "
              f"out -> next launch in {med(outside):.1f} (min {outside.min():.1f}, max {outside.max():.1f})", flush=True)
        print(f"  last launch: block 0 in -> stamp 0 (tables, first copies issued, cluster barrier) {preamble:.2f} µs; "
              f"layer 0 {layers[0].sum() / 1e3:.2f}, layers 1.. {layers[1:].sum(axis=1).mean() / 1e3:.2f} a layer; "
              f"last layer's down sums written -> block 0 out {tail:.2f}", flush=True)
        backend.cluster_clock = None
        backend.graphs.clear()
        # the operations around the layers, each alone (20 in a graph)
        cache = model.new_cache(-(-(context + 2) // 16) + 1, 16)
        table = []
        cache.prepare(table, 0, context + 1)
        dplan = backend.prepare_plan(build_plan([StepItem.tree(table, context, Tree(np.array([7]), [-1]))], 16))
        x = backend.embedding(w.embed, dplan.tokens)
        h, _ = backend.add_rmsnorm(x, None, w.final_norm, c.rms_norm_eps)
        logits = backend.logits(h, w.lm_head)
        parts = {
            "embedding": lambda: backend.embedding(w.embed, dplan.tokens),
            "final norm": lambda: backend.add_rmsnorm(x, None, w.final_norm, c.rms_norm_eps),
            "LM head": lambda: backend.logits(h, w.lm_head),
            "argmax": lambda: backend.argmax_device(logits),
            "cluster decode (embedding, layers, final norm)": lambda: backend.decode_in_one_launch(model, dplan, cache),
        }
        times = {name: time_captured(fn) * 1e6 for name, fn in parts.items()}
        head_bytes = w.lm_head.nbytes
        print("  alone, µs (20 in a graph): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
              + f"; LM head {head_bytes / 1e6:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
