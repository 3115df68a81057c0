"""The fused-layers kernel (every layer of a small step in one launch) against the layer-by-layer CUDA
path and the NumPy reference, on tiny random bf16 models (skipped without a GPU)."""

from __future__ import annotations

from unittest.mock import ANY

import ml_dtypes
import numpy as np
import pytest

from minispec.backends.numpy_backend import NumpyBackend
from minispec.model import Model
from minispec.step import StepItem, build_plan

from .attention_cases import random_tree
from .conftest import make_tiny_checkpoint
from .test_cuda_kernels import assert_close, poisoned_allocations  # noqa: F401  (autouse: outputs start as NaN)

pytestmark = pytest.mark.gpu
BF16 = ml_dtypes.bfloat16

# (prefix length L, tree shape, T) per sequence; every step has at most 16 rows
STEPS = {
    # up to 256 keys a block per (sequence, KV head, row group) merges the 8 key splits (here two with keys)
    "decode": [(40, "single", 1)],
    "decode 250": [(250, "single", 1)],  # every one of the 8 splits with keys
    "decode 300": [(300, "single", 1)],  # past 256 keys: 16 splits spread over the grid, then a merge phase
    # 3 keys: kernels/cluster_decode.cu's blocks 3..7 of each attention cluster hold no key
    "decode short": [(2, "single", 1)],
    "decode batch": [(40, "single", 1), (0, "single", 1), (200, "single", 1), (17, "single", 1)],
    "tree": [(75, "random", 16)],
    "long tree": [(300, "random", 16)],  # past 256 keys: the block instance's 16 shares (FUSED_TREE_BLOCK_SPLITS)
    "longer tree": [(560, "random", 16)],  # past 512 keys (the 1k bucket): the split-and-merge path
    "small tree": [(50, "random", 6)],  # 6 rows of 8 staged (16 for the tensor-core instance)
    "mixed trees": [(20, "chain", 7), (33, "star", 5), (0, "single", 1), (130, "random", 3)],
    # one sequence's trees of up to 4 nodes: cluster decode's 2- and 4-row instances (kernels/cluster_tree.cu) on Hopper
    # unless `blocks` turns it off; a 3-node tree with a padding row
    "tree of 2": [(90, "chain", 2)],
    "tree of 3": [(300, "random", 3)],
    "tree of 4": [(17, "star", 4)],
}
MODELS = {64: dict(heads=4, kv_heads=2, head_dim=64), 128: dict(heads=6, kv_heads=2, head_dim=128)}


def tiny_bf16_model(directory, D, intermediate=328):
    """intermediate 328 (not a multiple of 64): steps of 5-16 rows take the CUDA-core GEMV in passes of 4 rows;
    384: the tensor-core instance (fused_layers_r16)."""
    return make_tiny_checkpoint(directory, hidden=192, layers=3, intermediate=intermediate, dtype=BF16, seed=D, **MODELS[D])


def random_step(rng, specs, page_size, num_pages):
    """A plan over shuffled pages; the pages no table uses are left out (the caller fills them with NaN)."""
    free = list(rng.permutation(num_pages))
    items = []
    for L, shape, T in specs:
        table = [int(free.pop()) for _ in range(-(-(L + T) // page_size))]
        items.append(StepItem.tree(table, L, random_tree(rng, T, shape)))
    used = sorted(set(range(num_pages)) - set(free))
    return build_plan(items, page_size), used


@pytest.mark.parametrize("intermediate", [328, 384])
@pytest.mark.parametrize("blocks", [None, 3])
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("step", list(STEPS))
def test_fused_layers_match_layer_by_layer_and_reference(tmp_path, step, D, page_size, blocks, intermediate):
    import cupy as cp

    from minispec.backends.cuda_backend import CudaBackend

    rng = np.random.default_rng(D * 100 + page_size)
    directory = tiny_bf16_model(tmp_path / "model", D, intermediate)
    be = CudaBackend("bfloat16")
    if blocks:
        be.fused_blocks = blocks  # fewer blocks than units: every phase strides
        be.cluster_decode = False  # ... and the fused kernel serves one-sequence decode steps too
    model = Model.load(directory, be)
    num_pages = -(-600 // page_size)
    plan, used = random_step(rng, STEPS[step], page_size, num_pages)
    cache = model.new_cache(num_pages, page_size)
    start = []
    for layer_k, layer_v in zip(cache.k, cache.v):
        for c in (layer_k, layer_v):
            values = rng.normal(size=c.shape).astype(BF16)
            values[[p for p in range(num_pages) if p not in used]] = np.nan  # foreign pages: a stray read shows
            c[...] = cp.asarray(values.view(np.uint16))
            start.append(values.astype(np.float32))

    def run(max_rows):
        for c, values in zip([*cache.k, *cache.v], start):
            c[...] = cp.asarray(values.astype(BF16).view(np.uint16))
        be.fused_max_rows = max_rows
        device_plan = be.prepare_plan(plan)
        assert (be.fused_rows(model, device_plan) > 0) == (max_rows > 0)
        # one-sequence decode steps and trees of up to 4 nodes go to kernels/cluster_decode.cu on Hopper unless turned off
        if max_rows:
            clustered = be.cluster_decode_shape(model, device_plan, page_size) is not None
            assert clustered == (be.cluster_decode and plan.batch_size == 1 and plan.num_tokens <= be.cluster_tree_rows)
        logits = cp.asnumpy(model.compute(device_plan, cache))
        pages = [c.get().view(BF16).astype(np.float32)[used] for c in [*cache.k, *cache.v]]
        return logits, pages

    layered, layered_pages = run(0)
    fused, fused_pages = run(16)

    reference = Model.load(directory, NumpyBackend())
    ref_cache = reference.new_cache(num_pages, page_size)
    for c, values in zip([*ref_cache.k, *ref_cache.v], start):
        c[...] = values
    expected = reference.compute(plan, ref_cache)
    scale = np.abs(expected).max()
    # both CUDA paths round the same intermediates to bf16 (GEMM inputs, K/V, attention output), but their
    # fp32 sums run in different orders, so a value on a rounding edge can land one bf16 step apart and
    # carry that into the next layers: each is held to the float32 reference, the fused one no worse
    assert_close(fused, expected, 0, 3e-2 * scale, f"{step}: fused vs NumPy reference")
    assert_close(layered, expected, 0, 3e-2 * scale, f"{step}: layer-by-layer vs NumPy reference")
    fused_error, layered_error = np.abs(fused - expected).mean(), np.abs(layered - expected).mean()
    assert fused_error <= 1.5 * layered_error + 1e-3 * scale, f"{step}: mean error fused {fused_error}, layered {layered_error}"
    for i, (got, want) in enumerate(zip(fused_pages, layered_pages)):  # the new K/V rows land in the same slots
        assert_close(got, want, 0, 3e-2 * np.abs(want).max(), f"{step}: K/V pages of cache {i}")


def test_fused_layers_serve_small_steps_only(tmp_path):
    from minispec.backends.cuda_backend import CudaBackend

    be = CudaBackend("bfloat16")
    model = Model.load(tiny_bf16_model(tmp_path / "model", 64), be)
    rng = np.random.default_rng(0)
    decode, _ = random_step(rng, [(10, "single", 1)], 16, 8)
    small, _ = random_step(rng, [(10, "random", 16)], 16, 8)
    large, _ = random_step(rng, [(10, "random", 17)], 16, 8)
    chunk = build_plan([StepItem.chunk([0, 1], 0, np.arange(5))], 16)
    four, _ = random_step(rng, [(10, "random", 4)], 16, 8)
    assert be.fused_rows(model, be.prepare_plan(decode)) == 1  # the default limits take decode steps ...
    assert be.fused_rows(model, be.prepare_plan(four)) == 4  # ... and small trees on a small model
    assert be.fused_rows(model, be.prepare_plan(small)) == 0
    be.fused_max_rows = 16  # the kernel itself serves up to 16 rows
    assert be.fused_rows(model, be.prepare_plan(small)) == 16
    assert be.fused_rows(model, be.prepare_plan(large)) == 0
    assert be.fused_rows(model, be.prepare_plan(chunk)) == 0  # causal chunks run layer by layer
    # GEMV inputs in 64-column multiples: the tensor-core instance takes up to 16 rows by default
    be = CudaBackend("bfloat16")
    model = Model.load(tiny_bf16_model(tmp_path / "model64", 64, 384), be)
    assert be.fused_rows(model, be.prepare_plan(small)) == 16
    assert be.fused_pass_rows(model.config, 16) == 16 and be.fused_pass_rows(model.config, 4) == 4
    assert be.fused_rows(model, be.prepare_plan(large)) == 0


@pytest.mark.parametrize("intermediate", [328, 384])
def test_fused_layers_are_deterministic(tmp_path, intermediate):
    """Seeded sampling must repeat: the same step gives the same logits bit for bit (no float atomics)."""
    import cupy as cp

    from minispec.backends.cuda_backend import CudaBackend

    be = CudaBackend("bfloat16")
    be.fused_max_rows = 16
    model = Model.load(tiny_bf16_model(tmp_path / "model", 64, intermediate), be)
    rng = np.random.default_rng(4)
    plan, _ = random_step(rng, [(90, "single", 1), (40, "single", 1), (7, "random", 5)], 16, 40)
    cache = model.new_cache(40, 16)
    for c in [*cache.k, *cache.v]:
        c[...] = cp.asarray(rng.normal(size=c.shape).astype(BF16).view(np.uint16))
    device_plan = be.prepare_plan(plan)
    assert be.fused_rows(model, device_plan) == 8
    first = cp.asnumpy(model.compute(device_plan, cache))  # rewrites the same K/V slots with the same values
    for _ in range(20):
        assert np.array_equal(cp.asnumpy(model.compute(device_plan, cache)), first)


def run_step(model, device_plan, cache, start, used):
    """(logits, the used pages of every layer's K and V) of one step on pages reset to `start` (bf16 values)."""
    import cupy as cp

    for c, values in zip([*cache.k, *cache.v], start):
        c[...] = cp.asarray(values.view(np.uint16))
    logits = cp.asnumpy(model.compute(device_plan, cache))
    return logits, [c.get().view(BF16).astype(np.float32)[used] for c in [*cache.k, *cache.v]]


def cluster_backend():
    """A bf16 CudaBackend that takes cluster decode (skips the test off Hopper)."""
    from minispec.backends.cuda_backend import CudaBackend

    be = CudaBackend("bfloat16")
    if not be.cluster_decode:
        pytest.skip("kernels/cluster_decode.cu needs Hopper")
    return be


def one_sequence_step(be, model, rng, context, kind, T, pages):
    """(plan, device plan, cache, start values of its pages, used pages) of one sequence's step: `context` keys, then a
    tree of T nodes (random_tree's kind), over `pages` shuffled pages whose K/V start as random bf16 (run_step resets
    them)."""
    plan, used = random_step(rng, [(context, kind, T)], 16, pages)
    cache = model.new_cache(pages, 16)
    start = [rng.normal(size=c.shape).astype(BF16) for c in [*cache.k, *cache.v]]
    return plan, be.prepare_plan(plan), cache, start, used


def assert_close_to_fused(clustered, clustered_pages, fused, fused_pages):
    """cluster_decode.cu's step against the fused kernel's: the same roundings, other fp32 sum orders."""
    scale = np.abs(fused).max()
    assert_close(clustered, fused, 0, 3e-2 * scale, "cluster decode vs fused kernel")
    assert np.abs(clustered - fused).mean() <= 3e-3 * scale
    for got, want in zip(clustered_pages, fused_pages):
        assert_close(got, want, 0, 3e-2 * np.abs(want).max(), "K/V pages")


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("context", [40, 300, 1500])
@pytest.mark.parametrize("tree", [("single", 1), ("chain", 2), ("random", 3), ("random", 4), ("star", 4)])
def test_cluster_decode_matches_the_fused_kernel_and_repeats(tmp_path, D, context, tree):
    """kernels/cluster_decode.cu against the fused-layers kernel on the same decode or small tree step (the same
    roundings, other fp32 sum orders), the same bits on every run (fixed-order sums only), the same K/V written at the
    step's slots. A tree of 3 nodes runs the 4-row instance with a row of padding. At 1500 keys (shares of 188 keys) a
    decode step and a 2-node tree fit, the 4-row instance need not."""
    be = cluster_backend()
    model = Model.load(tiny_bf16_model(tmp_path / "model", D), be)
    kind, T = tree
    rng = np.random.default_rng(context + D + 1000 * T)
    _, device_plan, cache, start, used = one_sequence_step(be, model, rng, context, kind, T, max(40, -(-(context + T) // 16) + 2))
    shape = be.cluster_decode_shape(model, device_plan, 16)
    if shape is None and context > 1024 and T > 2:
        pytest.skip("the 4-row instance's shares do not fit this context")
    assert shape is not None and shape[0] > model.config.num_kv_heads  # attention clusters and MLP clusters
    assert shape[3] == {1: 1, 2: 2, 3: 4, 4: 4}[T]  # the instance's rows

    def run():
        return run_step(model, device_plan, cache, start, used)

    clustered, clustered_pages = run()
    assert clustered.shape[0] == T and np.isfinite(clustered).all()
    for _ in range(10):
        again, again_pages = run()
        assert np.array_equal(again, clustered)
        assert all(np.array_equal(a, b) for a, b in zip(again_pages, clustered_pages))
    be.cluster_decode = False
    assert be.cluster_decode_shape(model, device_plan, 16) is None
    assert_close_to_fused(clustered, clustered_pages, *run())
    # a batch of two and a tree step of more nodes than cluster_tree_rows stay on the fused kernel
    be.cluster_decode = True
    two, _ = random_step(rng, [(10, "single", 1), (20, "single", 1)], 16, 40)
    five, _ = random_step(rng, [(10, "random", 5)], 16, 40)
    assert be.cluster_decode_shape(model, be.prepare_plan(two), 16) is None
    assert be.cluster_decode_shape(model, be.prepare_plan(five), 16) is None
    if T > 1:
        be.cluster_tree_rows = 0
        assert be.cluster_decode_shape(model, device_plan, 16) is None


@pytest.mark.parametrize("context, pass_keys", [(4000, 501), (8000, 512)])
def test_cluster_decode_takes_long_contexts_of_default_widths(tmp_path, context, pass_keys):
    """The default model's widths (two layers): a decode step at 4,000 keys (shares of 501 keys; an eager step's shares
    follow its keys, a graph's its bucket's: 512 in the 4096 bucket) fits cluster_decode.cu's blocks whole, whose
    one-row instance copies the O slice into the qkv weights' region once the qkv products are done; at 8,000 keys
    (shares of 1,001) in two passes of 512. Either matches the fused kernel, the same bits on every run."""
    be = cluster_backend()
    directory = make_tiny_checkpoint(tmp_path / "model", hidden=576, layers=2, heads=9, kv_heads=3, head_dim=64,
                                     intermediate=1536, dtype=BF16, max_positions=8192)
    model = Model.load(directory, be)
    rng = np.random.default_rng(context)
    _, device_plan, cache, start, used = one_sequence_step(be, model, rng, context, "single", 1, -(-(context + 1) // 16) + 2)
    shape = be.cluster_decode_shape(model, device_plan, 16)
    assert shape is not None and shape[1] == -(-(context + 1) // 8) and shape[3:] == (1, pass_keys), shape
    clustered, clustered_pages = run_step(model, device_plan, cache, start, used)
    again, _ = run_step(model, device_plan, cache, start, used)
    assert np.isfinite(clustered).all() and np.array_equal(again, clustered)
    be.cluster_decode = False
    assert_close_to_fused(clustered, clustered_pages, *run_step(model, device_plan, cache, start, used))


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("context, pass_keys, tree", [(300, 32, ("single", 1)), (1500, 32, ("single", 1)), (1500, 96, ("single", 1)),
                                                      (297, 32, ("chain", 2)), (1000, 32, ("chain", 2)), (1000, 64, ("chain", 2))])
def test_cluster_decode_in_passes_gives_the_bits_of_the_whole_share(tmp_path, D, context, pass_keys, tree):
    """A step's K/V share in passes of pass_keys keys (cluster_pass_keys forced) against the share held whole: the
    same 32-key chunks' partials, merged in the same order, so the same logits and K/V pages, bit for bit. At 300 keys
    (decode: shares of 38) each block's second pass holds 3-6 keys, rank 7's the step's new keys among them; at 1,500
    (shares of 188) 6 passes of 32 or 2 of 96; a 2-node tree after 297 keys (shares of 38) has rank 7's 33 keys in two
    passes of 32, its two nodes' keys one in each; after 1,000 keys (shares of 126) 4 passes of 32 or 2 of 64."""
    be = cluster_backend()
    directory = tiny_bf16_model(tmp_path / "model", D)
    model = Model.load(directory, be)
    kind, T = tree
    rng = np.random.default_rng(context + D + pass_keys + 1000 * T)
    plan, device_plan, cache, start, used = one_sequence_step(be, model, rng, context, kind, T, -(-(context + T) // 16) + 8)
    span = -(-(context + T) // 8)
    assert be.cluster_decode_shape(model, device_plan, 16)[1:] == (span, ANY, T, span)
    whole, whole_pages = run_step(model, device_plan, cache, start, used)
    be.cluster_pass_keys = pass_keys
    assert be.cluster_decode_shape(model, device_plan, 16)[3:] == (T, pass_keys)
    passes, passes_pages = run_step(model, device_plan, cache, start, used)
    assert np.isfinite(whole).all() and np.array_equal(passes, whole)
    assert all(np.array_equal(a, b) for a, b in zip(passes_pages, whole_pages))
    # and both against the NumPy reference on the same pages (bf16 roundings of the intermediates, other sum orders)
    reference = Model.load(directory, NumpyBackend())
    ref_cache = reference.new_cache(cache.k[0].shape[0], 16)
    for c, values in zip([*ref_cache.k, *ref_cache.v], start):
        c[...] = values.astype(np.float32)
    expected = reference.compute(plan, ref_cache)
    assert_close(passes, expected, 0, 3e-2 * np.abs(expected).max(), "cluster decode in passes vs NumPy reference")


def test_cluster_decode_reads_o_and_down_in_its_layouts(tmp_path):
    """cluster_decode.cu's layer tables point at each layer's down weight w_down [C, I] as bf16 [I / 8, C, 8] (element
    (c, i) at ((i / 8) C + c) 8 + i % 8) and, the one-row instance's, at its O weight wo [C, H D] as bf16 [Hkv, C, G D]
    (element (c, j) at ((j / (G D)) C + c) G D + j % (G D)), checked at random places, bit for bit; made once per
    model; the tree instances' tables keep wo, the fused kernel's wo and w_down."""
    from minispec.backends.cuda_backend import CudaBackend

    be = CudaBackend("bfloat16")
    model = Model.load(tiny_bf16_model(tmp_path / "model", 64), be)
    cache = model.new_cache(8, 16)
    rng = np.random.default_rng(6)
    pairs = be.cluster_weights(model)
    assert all(a is b and c is d for (a, c), (b, d) in zip(be.cluster_weights(model), pairs))  # made once
    one, tree, plain = (be.layer_table(model, cache, cluster=R).get() for R in (1, 4, 0))
    assert np.array_equal(be.layer_table(model, cache, cluster=2).get(), tree)
    cfg = model.config
    GD = cfg.num_heads // cfg.num_kv_heads * cfg.head_dim
    for layer, (wo, down), *rows in zip(model.weights.layers, pairs, one, tree, plain):
        C, I = layer.w_down.shape
        w, flat = layer.w_down.get().view(np.uint16), down.get().view(np.uint16).reshape(-1)
        c, i = rng.integers(0, C, 200), rng.integers(0, I, 200)
        assert np.array_equal(flat[((i // 8) * C + c) * 8 + i % 8], w[c, i]) and flat.size == C * I
        w, flat = layer.wo.get().view(np.uint16), wo.get().view(np.uint16).reshape(-1)
        c, j = rng.integers(0, C, 200), rng.integers(0, cfg.num_heads * cfg.head_dim, 200)
        assert np.array_equal(flat[((j // GD) * C + c) * GD + j % GD], w[c, j]) and flat.size == w.size
        assert [row[2] for row in rows] == [wo.data.ptr, layer.wo.data.ptr, layer.wo.data.ptr]
        assert [row[5] for row in rows] == [down.data.ptr, down.data.ptr, layer.w_down.data.ptr]
        assert all(np.array_equal(np.delete(row, [2, 5]), np.delete(rows[2], [2, 5])) for row in rows)


def test_graphs_are_not_replayed_into_a_freed_cache(tmp_path):
    """Captured graphs are keyed by their cache: a new cache (of another size, at new addresses) created after
    the old one is freed may get the old id, and must not replay the old cache's graph (the entry goes with
    the cache: backends.cuda_backend.IdentityTable)."""
    import gc

    import cupy as cp

    from minispec.backends.cuda_backend import CudaBackend

    be = CudaBackend("bfloat16")
    model = Model.load(tiny_bf16_model(tmp_path / "model", 64), be)
    rng = np.random.default_rng(5)
    for pages in (40, 90, 60):
        cache = model.new_cache(pages, 16)
        for c in [*cache.k, *cache.v]:
            c[...] = cp.asarray(rng.normal(size=c.shape).astype(BF16).view(np.uint16))
        plan, _ = random_step(rng, [(70, "single", 1)], 16, pages)
        replayed = cp.asnumpy(model.forward(plan, cache).device)
        be.use_graphs = False
        eager = cp.asnumpy(model.forward(plan, cache).device)
        be.use_graphs = True
        assert np.array_equal(replayed, eager)
        del cache
        gc.collect()


@pytest.mark.parametrize("T", [16, 40])  # the own GEMMs on these small weights: gemm_stream up to 16 rows, gemm_wgmma above
def test_programmatic_dependent_launch_keeps_the_bits(tmp_path, T):
    """A step launched with programmatic dependent launch (each GEMM's first weights copied before it waits for
    the kernel ahead of it) gives the bits of plain launches, eager and replayed, again and again: a kernel that
    read or wrote before its wait would show here as a difference."""
    import cupy as cp

    from minispec.backends.cuda_backend import CudaBackend

    be = CudaBackend("bfloat16")
    if not be.pdl:
        pytest.skip("programmatic dependent launch needs Hopper and cuLaunchKernelEx")
    be.gemm, be.fused_max_rows = "own", 0  # the layer-by-layer kernels, every product on the own GEMMs
    directory = make_tiny_checkpoint(tmp_path / "model", hidden=256, layers=3, intermediate=512, dtype=BF16, seed=T,
                                     heads=4, kv_heads=2, head_dim=64)
    model = Model.load(directory, be)
    rng = np.random.default_rng(T)
    plan, _ = random_step(rng, [(300, "random", T)], 16, 64)
    cache = model.new_cache(64, 16)
    start = [rng.normal(size=c.shape).astype(BF16).view(np.uint16) for c in [*cache.k, *cache.v]]

    def run(pdl, graphs):
        be.pdl, be.use_graphs = pdl, graphs
        be.graphs.clear()
        for c, values in zip([*cache.k, *cache.v], start):
            c[...] = cp.asarray(values)
        return [model.forward(plan, cache).host() for _ in range(3)]  # with graphs: a capture, then replays

    plain = run(False, False)[0]
    assert np.isfinite(plain).all()
    for pdl, graphs in ((True, False), (True, True), (False, True)):
        for i, logits in enumerate(run(pdl, graphs)):
            assert np.array_equal(logits, plain), f"pdl={pdl} graphs={graphs} run {i}: {np.count_nonzero(logits != plain)} logits differ"


@pytest.mark.parametrize("graphs", [True, False])
def test_deferred_host_reads_give_each_steps_ids(tmp_path, graphs):
    """Decode one step ahead reads step k's ids with to_host_soon(defer=True): the copy waits for the next replay
    and, where that replay takes the ids as its tokens, reads them from its token input on a side stream. Each read
    must give its own step's ids although the next replay of the same graph overwrites them: here against step by
    step reads, with a host-fed step every third step (the pending copy then goes ahead of that replay in stream
    order) and every read waited for only at the end."""
    from minispec.backends.cuda_backend import CudaBackend
    from minispec.tree import Tree

    be = CudaBackend("bfloat16")
    be.use_graphs = graphs
    model = Model.load(tiny_bf16_model(tmp_path / "model", 64), be)
    cache = model.new_cache(16, 16)
    table = []
    cache.prepare(table, 0, 64)

    def step(position, token, tokens=None):
        return model.forward(build_plan([StepItem.tree(table, position, Tree.single(token))], 16), cache, tokens).argmax_device()

    expected, token = [], 3
    for i in range(9):  # step by step: each step's argmax read before the next launch
        token = int(be.to_host(step(i, token))[0])
        expected.append(token)
    reads, ids = [], None
    for i in range(9):
        ids = step(i, 3) if i == 0 else step(i, 0, ids) if i % 3 else step(i, expected[i - 1])
        reads.append(be.to_host_soon(ids, defer=True))
    assert len(set(expected)) > 1  # (reads of the wrong step would show)
    assert [int(read()[0]) for read in reads] == expected
    assert be._host_read is None
