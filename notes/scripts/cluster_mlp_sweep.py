"""Device probe: kernels/cluster_decode.cu with fewer MLP clusters than fit (the kernel takes every block past the
attention clusters as MLP blocks), on a random model with the default model's shapes. Fewer MLP clusters mean fewer
tagged partial sums for each attention block to read in the hand-over (13 x C x 8 bytes at 13 clusters) and more
intermediate indices for each MLP block. Prints, per context and MLP cluster count, the kernel's time (CUDA events,
eager launches) and block 0's per-layer stamps (as cluster_decode_probe.py).
Run from the repository root: python3 notes/scripts/cluster_mlp_sweep.py [contexts...]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends import driver  # noqa: E402
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.backends.driver import allow_shared  # noqa: E402
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config, time_gpu  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

NAMES = ["down sums added", "qkv pushed", "merged", "O written", "(MLP) O sums added", "down pushed", "down sums written"]


def main():
    cp = require_gpu()
    c = smollm2_135m_config()
    backend = CudaBackend()
    model = Model(c, random_model_on_gpu(c, backend), backend)
    w = model.weights
    C, H, Hkv, D, I, L = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, model.num_layers
    kernel = backend.kernel("cluster_decode.cu", f"cluster_decode_r1_d{D}", D)
    allow_shared(kernel, 200 << 10)
    fit = driver.max_active_clusters(kernel, 512, 200 << 10, 8)
    print(card_name(), f"SmolLM2-135M shapes, random weights; {fit} clusters of 8 fit", flush=True)
    opart, dpart, epoch = backend.cluster_decode_buffers(C)
    for context in [int(a) for a in sys.argv[1:]] or [100, 512]:
        n = context + 1
        cache = model.new_cache(-(-(n + 16) // 16) + 1, 16)
        for arrays in (cache.k, cache.v):
            for a in arrays:
                a[...] = (cp.random.standard_normal(a.shape, dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16)
        table = []
        cache.prepare(table, 0, n)
        dplan = backend.prepare_plan(build_plan([StepItem.tree(table, context, Tree(np.array([7]), [-1]))], 16))
        cos, sin = backend.rope_tables(model.inv_freq, dplan.max_position)
        span = -(-n // 8)
        layers = backend.layer_table(model, cache, cluster=1)  # (the one-row instance's table)
        normed = cp.empty((1, C), dtype=cp.uint16)
        resid = cp.empty((1, C), dtype=cp.float32)
        clock = cp.zeros(1 + 7 * L + 3 * 64, dtype=cp.uint64)
        i32 = np.int32
        reference = None
        for mlp in range(fit - Hkv, 5, -2):  # (4 MLP clusters: over the shared memory limit)
            blocks = 8 * (Hkv + mlp)
            shared = CudaBackend.cluster_decode_shared_bytes(c, L, 8 * mlp, span, 16)
            allow_shared(kernel, shared)

            def run(stamps=False):
                kernel((blocks,), (512,), (layers, i32(L), dplan.tokens, w.embed, w.final_norm, normed, resid, dplan.positions,
                                           dplan.slots, dplan.kv_len, dplan.page_tables, dplan.masks, dplan.tree_start, dplan.cu_q, i32(1), cos, sin, opart, dpart, epoch, i32(C),
                                           i32(H), i32(Hkv), i32(I), i32(16), i32(span), np.float32(c.rms_norm_eps),
                                           np.float32(model.scale), clock if stamps else np.uint64(0)), shared_mem=shared)

            spans = []
            for _ in range(5):
                run(True)
                spans.append(np.diff(cp.asnumpy(clock).astype(np.int64)[: 1 + 7 * L]).reshape(L, 7)[1:].mean(axis=0) / 1e3)
            out = cp.asnumpy(resid).copy()
            if reference is None:
                reference = out
            v = np.median(np.array(spans), axis=0)
            t = time_gpu(run, 2, 20)
            print(f"context {context}, {mlp} MLP clusters ({shared >> 10} KB): {t * 1e6:.1f} µs, {v.sum():.2f} µs a layer "
                  f"(max |resid - first| {np.abs(out - reference).max():.3g}): " + ", ".join(f"{a} {b:.2f}" for a, b in zip(NAMES, v)),
                  flush=True)


if __name__ == "__main__":
    main()
