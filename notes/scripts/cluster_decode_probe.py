"""Device probe: kernels/cluster_decode.cu (every layer of a one-token decode step in one launch of thread block
clusters in two roles) against the fused-layers kernel the engine runs now, on a random model with the
default model's shapes and random K/V pages: the residual stream after all layers (difference to the fused kernel's),
the K/V written at the step's slot, and each kernel's time (CUDA events, medians), plus block 0's stamps of layer 0.
Run from the repository root: python3 notes/scripts/cluster_decode_probe.py [contexts...]"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.backends.driver import allow_shared  # noqa: E402
from minispec.bench_gpu import card_name, random_model_on_gpu, require_gpu, smollm2_135m_config, time_gpu  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402


def main():
    cp = require_gpu()
    config = smollm2_135m_config()
    backend = CudaBackend()
    model = Model(config, random_model_on_gpu(config, backend), backend)
    c = config
    C, H, Hkv, D, I, L = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, model.num_layers
    contexts = [int(a) for a in sys.argv[1:]] or [100, 512, 1024]
    kernel = backend.kernel("cluster_decode.cu", f"cluster_decode_r1_d{D}", D)
    import cupy
    from minispec.backends.cuda_backend import kernel_source
    variants = {name: cupy.RawModule(code=defines + kernel_source("cluster_decode.cu"),
                                     options=("-std=c++17", "-DSTORAGE_BF16", "-arch=sm_90a")).get_function(f"cluster_decode_r1_d{D}")
                for name, defines in (("copy once", "#define CD_COPY_ONCE 1\n"),)}
    from minispec.backends import driver
    allow_shared(kernel, 200 << 10)
    clusters = driver.max_active_clusters(kernel, 512, 200 << 10, 8)
    print(card_name(), f"SmolLM2-135M shapes, random weights; {clusters} clusters of 8 fit (200 KB shared a block)", flush=True)
    if clusters < Hkv:
        return
    rng = np.random.default_rng(0)
    for context in contexts:
        n = context + 1
        cache = model.new_cache(-(-(n + 16) // 16) + 1, 16)
        for arrays in (cache.k, cache.v):
            for a in arrays:
                bits = (cp.random.standard_normal(a.shape, dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16)
                a[...] = bits.view(a.dtype)
        table = []
        cache.prepare(table, 0, n)
        plan = build_plan([StepItem.tree(table, context, Tree(np.array([7]), [-1]))], 16)
        dplan = backend.prepare_plan(plan)
        x = backend.embedding(model.weights.embed, dplan.tokens)  # (the kernel reads the token's row itself)
        normed = cp.empty((1, C), dtype=cp.uint16)
        cos, sin = backend.rope_tables(model.inv_freq, dplan.max_position)
        blocks = 8 * clusters
        span = -(-n // 8)
        shared = CudaBackend.cluster_decode_shared_bytes(c, L, blocks - 8 * Hkv, span, 16)
        allow_shared(kernel, shared)
        opart, dpart, epoch = backend.cluster_decode_buffers(C)
        clock = cp.zeros(1 + 7 * L + 3 * 64, dtype=cp.uint64)  # (layer stamps, then the launch ring)
        layers = backend.layer_table(model, cache, cluster=1)  # (the one-row instance's table)
        i32 = np.int32

        def ours(resid, stamps=False, kernel=kernel):
            allow_shared(kernel, shared)
            kernel((blocks,), (512,), (layers, i32(L), dplan.tokens, model.weights.embed, model.weights.final_norm, normed,
                                       resid, dplan.positions, dplan.slots, dplan.kv_len, dplan.page_tables, dplan.masks, dplan.tree_start, dplan.cu_q, i32(1),
                                       cos, sin, opart, dpart, epoch, i32(C), i32(H), i32(Hkv), i32(I), i32(16), i32(span),
                                       np.float32(c.rms_norm_eps), np.float32(model.scale), clock if stamps else np.uint64(0)),
                   shared_mem=shared)
            return resid

        def theirs(resid):  # the fused-layers kernel (the engine would take cluster_decode.cu itself)
            backend.cluster_decode = False
            try:
                return backend.fused_layers(model, dplan, cache, resid, 1)
            finally:
                backend.cluster_decode = True

        ref = theirs(x.copy())
        slot = int(plan.slots[0])
        page, row = slot // 16, slot % 16
        kv_ref = [cp.asnumpy(a[page, :, row]).copy() for a in (cache.k[0], cache.k[L - 1], cache.v[L - 1])]
        for a in (cache.k[0], cache.k[L - 1], cache.v[L - 1]):
            a[page, :, row] = 0
        got = ours(x.copy(), stamps=True)
        cp.cuda.runtime.deviceSynchronize()
        kv_got = [cp.asnumpy(a[page, :, row]) for a in (cache.k[0], cache.k[L - 1], cache.v[L - 1])]
        scale = float(cp.abs(ref).max())
        diff = float(cp.abs(got - ref).max())
        again = ours(x.copy())
        same = bool(cp.all(again == got))
        kv_same = [int((a.view(np.uint16).astype(np.int32) - b.view(np.uint16).astype(np.int32)).__abs__().max()) for a, b in zip(kv_ref, kv_got)]
        stamps = cp.asnumpy(clock).astype(np.int64)[: 1 + 7 * L]  # (the layer stamps; the launch ring after them)
        backend.fused_clock = cp.zeros(1 + 6 * L, dtype=cp.uint64)
        theirs(x.copy())
        fused = cp.asnumpy(backend.fused_clock).astype(np.int64)
        backend.fused_clock = None
        fused_layer = np.diff(fused).reshape(L, 6)[1:].sum(axis=1).mean() / 1e3
        # (time_gpu's warm-up launches go back to back: two eager fused_layers launches so failed on an H200 in
        # this probe, where each alone ran; each run here waits for the one before)
        t_theirs = time_gpu(lambda: theirs(x.copy()), 0, 20)
        t_ours = time_gpu(lambda: ours(x.copy()), 0, 20)
        t_ours2 = time_gpu(lambda: ours(x.copy()), 0, 20)
        print(f"context {context}: shared {shared >> 10} KB; max |diff| {diff:.3g} (max |resid| {scale:.3g}), same bits twice {same}, "
              f"K/V slot bf16 ulps (k0, k_last, v_last) {kv_same}", flush=True)
        print(f"  cluster_decode {t_ours * 1e6:.1f} / {t_ours2 * 1e6:.1f} µs, fused_layers {t_theirs * 1e6:.1f} µs "
              f"({t_ours / L * 1e6:.2f} vs {t_theirs / L * 1e6:.2f} µs a layer)", flush=True)
        spans = np.diff(stamps).reshape(L, 7)[1:].mean(axis=0) / 1e3
        names = ["(block 0) down counted, sums added", "-> qkv pushed", "-> merged", "-> O written",
                 "-> (MLP block) O counted, sums added", "-> down pushed", "-> down sums written"]
        print(f"  block 0, µs a layer (layers 1..{L - 1}; {spans.sum():.2f} in all; layer 0 {(stamps[7] - stamps[0]) / 1e3:.2f}; "
              f"kernel span {(stamps[-1] - stamps[0]) / 1e3:.0f} µs; fused_layers {fused_layer:.2f} a layer, span {(fused[-1] - fused[0]) / 1e3:.0f}): " + ", ".join(f"{a} {b:.2f}" for a, b in zip(names, spans)), flush=True)
        for name, variant in variants.items():
            runs = []
            for _ in range(5):
                ours(x.copy(), True, variant)
                runs.append(np.diff(cp.asnumpy(clock).astype(np.int64)[: 1 + 7 * L]).reshape(L, 7)[1:].mean(axis=0) / 1e3)
            v = np.median(np.array(runs), axis=0)
            t_variant = time_gpu(lambda: ours(x.copy(), kernel=variant), 0, 20)
            print(f"  {name}: {t_variant * 1e6:.1f} µs, {v.sum():.2f} µs a layer: " + ", ".join(f"{a} {b:.2f}" for a, b in zip(names, v)), flush=True)

if __name__ == "__main__":
    main()
