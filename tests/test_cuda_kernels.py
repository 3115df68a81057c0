"""Every CUDA kernel against its NumPy reference (run on an H100/H200; skipped without a GPU).

Random inputs (never zeros); every allocation is poisoned with NaN bytes before
a kernel writes it; foreign pages hold NaN; odd sizes; page sizes 1, 3, 16.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from minispec.backends import numpy_backend as ref
from minispec.backends.cuda_gemm import WGMMA_GEMM_STAGES

from .attention_cases import make_problem, problem_specs

pytestmark = pytest.mark.gpu
BF16 = ml_dtypes.bfloat16


@pytest.fixture(autouse=True)
def poisoned_allocations():
    """Fill every new device allocation with 0xFF bytes (NaN in fp32 and bf16) so unwritten outputs show."""
    import cupy as cp

    pool = cp.cuda.MemoryPool()

    def allocate(size):
        # on the current (compute) stream: a recycled block may still be read by a kernel queued there
        memory = pool.malloc(size)
        cp.cuda.runtime.memsetAsync(memory.ptr, 0xFF, size, cp.cuda.get_current_stream().ptr)
        return memory

    cp.cuda.set_allocator(allocate)
    yield
    cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)


def backend(dtype):
    from minispec.backends.cuda_backend import CudaBackend

    return CudaBackend(dtype=dtype)


def test_a_gpu_before_hopper_is_refused_in_one_line(monkeypatch):
    """The kernels launch thread block clusters (compute capability 9.0): an older GPU gets a clear error at load
    time, not a compile error at the first GEMM or sampled token."""
    import cupy as cp

    from minispec.backends.cuda_backend import CudaBackend
    from minispec.errors import MinispecError

    real = cp.cuda.runtime.getDeviceProperties
    monkeypatch.setattr(cp.cuda.runtime, "getDeviceProperties", lambda device: {**real(device), "major": 8, "minor": 0, "name": b"NVIDIA A100"})
    with pytest.raises(MinispecError, match=r"compute capability 9\.0 or later.*A100 is 8\.0"):
        CudaBackend()


def stored(array, dtype):
    """Host values exactly as the backend stores them."""
    return np.asarray(array, dtype=np.float32).astype(BF16).astype(np.float32) if dtype == "bfloat16" else np.asarray(array, dtype=np.float32)


def assert_close(out, expected, rtol, atol, what):
    out, expected = np.asarray(out, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert np.isfinite(out).all(), f"{what}: {np.size(out) - np.isfinite(out).sum()} non-finite outputs (unwritten or poisoned reads)"
    error = np.abs(out - expected) - (atol + rtol * np.abs(expected))
    worst = np.unravel_index(np.argmax(error), error.shape)
    assert error.max() <= 0, f"{what}: worst element {worst}: got {out[worst]}, expected {expected[worst]}"


def host_float(array, dtype):
    """A device array in the storage type as float32 on the host."""
    host = array.get()
    return host.view(BF16).astype(np.float32) if dtype == "bfloat16" and host.dtype == np.uint16 else host.astype(np.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_elementwise_kernels(dtype):
    import cupy as cp

    be, rng = backend(dtype), np.random.default_rng(0)
    tol = 1e-2 if dtype == "bfloat16" else 1e-5  # outputs feeding a GEMM are rounded to the storage type
    V, C, N = 301, 200, 37
    table = rng.normal(size=(V, C)).astype(np.float32)
    tokens = rng.integers(0, V, size=N).astype(np.int32)
    out = be.embedding(be.convert(table), cp.asarray(tokens))
    assert_close(cp.asnumpy(out), ref.embedding(stored(table, dtype), tokens), 0, 0, "embedding")

    for C in (200, 5003, 9001):  # rows held in registers (up to 8 x 1024), and the loop past that
        x = rng.normal(size=(N, C)).astype(np.float32)
        residual = rng.normal(size=(N, C)).astype(np.float32)
        weight = (1 + 0.1 * rng.normal(size=C)).astype(np.float32)
        for with_residual in (False, True):
            h, r = be.add_rmsnorm(cp.asarray(x), cp.asarray(residual) if with_residual else None, be.convert(weight), 1e-5)
            h_ref, r_ref = ref.add_rmsnorm(x, residual if with_residual else None, weight, 1e-5)
            assert_close(host_float(h, dtype), h_ref, tol, tol, f"add_rmsnorm C={C}")
            assert_close(cp.asnumpy(r), r_ref, 1e-5, 1e-5, f"add_rmsnorm residual C={C}")

    gate_up = rng.normal(size=(N, 2 * 97)).astype(np.float32) * 3
    assert_close(host_float(be.silu_mul(cp.asarray(gate_up)), dtype), ref.silu_mul(gate_up), tol, tol, "silu_mul")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("D", [64, 128])
def test_rope_and_kv_write(dtype, D):
    import cupy as cp

    be, rng = backend(dtype), np.random.default_rng(D)
    H, Hkv, N, NP, P = 6, 2, 37, 20, 3
    qkv = rng.normal(size=(N, (H + 2 * Hkv) * D)).astype(np.float32)
    positions = rng.integers(0, 5000, size=N).astype(np.int32)
    slots = rng.permutation(NP * P)[:N].astype(np.int32)
    slots[[3, 11]] = -1  # padded rows: no write
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, D, 2) / D))
    initial = rng.normal(size=(NP, Hkv, P, D)).astype(np.float32)
    k_cache, v_cache = be.convert(initial), be.convert(-initial)

    class Plan:  # what rope_write_kv reads
        max_position = int(positions.max())
    plan = Plan()
    plan.positions, plan.slots = cp.asarray(positions), cp.asarray(slots)
    q = be.rope_write_kv(cp.asarray(qkv), plan, inv_freq, k_cache, v_cache, H, Hkv, D)
    q_ref, k_ref, v_ref = ref.split_qkv_rope(qkv, positions, inv_freq, H, Hkv, D)
    assert_close(cp.asnumpy(q), q_ref, 1e-5, 1e-5, "rope q")
    k_expected, v_expected = stored(initial, dtype), stored(-initial, dtype)
    ref.write_kv(k_expected, v_expected, stored(k_ref, dtype), stored(v_ref, dtype), slots, P)
    tol = 1e-2 if dtype == "bfloat16" else 1e-5
    assert_close(host_float(k_cache, dtype), k_expected, tol, tol, "rope k in its slots")
    assert_close(host_float(v_cache, dtype), v_expected, tol, tol, "v in its slots")


@pytest.mark.parametrize("implementation", ["own", "cublas"])
@pytest.mark.parametrize("M", [1, 3, 16, 17, 64, 65, 130])
@pytest.mark.parametrize("N,K", [(8, 16), (200, 576), (577, 1536), (64, 4096)])
def test_gemm_bf16_matches_reference(M, N, K, implementation):
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(M * N + K)
    if implementation == "own":
        be.gemm = "own"  # the project's tensor-core kernels at every M
    else:
        assert be.cublas is not None, f"cuBLAS could not be loaded through ctypes: {be.cublas_error}"
        be.gemm = "cublas"  # cuBLAS gemmEx through ctypes, bf16 in, fp32 out
    x = rng.normal(size=(M, K)).astype(np.float32)
    w = rng.normal(size=(N, K)).astype(np.float32) / np.sqrt(K)
    y = cp.asnumpy(be.linear(be.convert(x), be.convert(w)))
    expected = stored(x, "bfloat16").astype(np.float64) @ stored(w, "bfloat16").astype(np.float64).T  # bf16 operands, exact sums
    assert_close(y, expected, 1e-3, 1e-3 * np.abs(expected).max(), f"{implementation} gemm M={M} N={N} K={K}")


@pytest.mark.parametrize("S", [1, 2, 4, 8])
@pytest.mark.parametrize("M", [1, 8, 13, 16, 31, 64, 100])
@pytest.mark.parametrize("K", [1024, 2560])
def test_gemm_stream_every_cluster_size(M, S, K):
    """gemm_stream_r{8..64}_s{1..8}: every staged-row count and cluster size, N off the 128-row tile,
    K / S from 2 stages (fewer than the ring holds) up; y poisoned first, so every element is written."""
    be = backend("bfloat16")
    be.gemm_cluster = S
    check_cluster_gemm(be, be.gemm_stream, M, 333, K, np.random.default_rng(M * 8 + S + K), f"gemm_stream M={M} S={S} K={K}")


def check_cluster_gemm(be, gemm, M, N, K, rng, what):
    """gemm(x, W, y) into a poisoned y against float64 sums of the bf16 operands, then the same bits again."""
    import cupy as cp

    x = rng.normal(size=(M, K)).astype(np.float32)
    w = rng.normal(size=(N, K)).astype(np.float32) / np.sqrt(K)
    y = cp.full((M, N), cp.nan, dtype=cp.float32)
    gemm(be.convert(x), be.convert(w), y)
    expected = stored(x, "bfloat16").astype(np.float64) @ stored(w, "bfloat16").astype(np.float64).T
    assert_close(cp.asnumpy(y), expected, 1e-3, 1e-3 * np.abs(expected).max(), what)
    again = cp.full((M, N), cp.nan, dtype=cp.float32)
    gemm(be.convert(x), be.convert(w), again)
    assert cp.array_equal(y, again), "the cluster's fixed-order sum gives the same bits every time"


@pytest.mark.parametrize("X", [16, 32, 64])
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("S", [1, 2, 4, 8])
@pytest.mark.parametrize("M", [1, 16, 17, 32, 33, 64])
@pytest.mark.parametrize("N,K", [(333, 1024), (1024, 2560), (4096, 4096), (700, 576)])
def test_gemm_wgmma_every_cluster_size(M, S, G, X, N, K):
    """gemm_wgmma_w{1,2}_x{16,32,64}_s{1..8} (Hopper, 1-64 rows): both block heights, every x box height (rows
    past M zero-filled), every cluster size, N off the tile, K / S from 2 stages (fewer than the ring holds) up;
    y poisoned first, so every element is written; the same bits twice."""
    be = backend("bfloat16")
    if not be.hopper:
        pytest.skip("gemm_wgmma needs a Hopper GPU")
    if K % (64 * S):
        pytest.skip(f"K = {K} is not a whole number of 64-wide stages per block at {S} blocks per cluster")
    if M > X or (G, X) not in WGMMA_GEMM_STAGES:
        pytest.skip(f"no gemm_wgmma kernel of {G} warpgroups a block takes {M} rows in {X}-row x boxes")
    be.gemm_cluster, be.gemm_wgmma_groups, be.gemm_wgmma_xrows = S, G, X
    what = f"gemm_wgmma M={M} G={G} X={X} S={S} N={N} K={K}"
    check_cluster_gemm(be, be.gemm_wgmma, M, N, K, np.random.default_rng(M * 8 + S + K + N + G), what)


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("S", [1, 2, 4, 8])
@pytest.mark.parametrize("M", [1, 5, 16, 32, 64])
def test_the_norm_split_across_the_products_around_it(M, S, with_residual):
    """linear_norm on gemm_wgmma (GemmNorm: the product adds the residual, leaves x' = bf16(r w) and each block's
    partial sums of r^2) and the products after it that finish the norm (y = s x' W^T): the new residual has the bits
    of gemm_wgmma plus the residual as add_rmsnorm forms it, x' the bits of bf16(r w), the partials sum to the rows'
    sums of squares; linear and gate_up_silu on it, and each kind of kernel that finishes a norm (gemm_stream,
    gemm_wgmma, gemm_stream_glu, gemm_wgmma_glu of 2 and 4 warpgroups), agree with the same products of add_rmsnorm's
    h within bf16 rounding; materialised, it is add_rmsnorm's h to the bit. Every cluster size, without a residual
    too, up to the 64 rows the _begin / _finish kernels take (gemm_stream's: 16; from 32 rows the norm's values wait
    in shared memory, NormStage, and a cluster's partials are summed on chip); outputs poisoned first."""
    import cupy as cp

    from minispec.backends.cuda_gemm import NormedRows

    be, rng = backend("bfloat16"), np.random.default_rng(M * 16 + S + with_residual)
    if not be.hopper:
        pytest.skip("gemm_wgmma needs a Hopper GPU")
    N, K, I = 1024, 2048, 8448  # hidden, the product before's K, the gated product's columns (2I rows: two warpgroups)
    be.gemm, be.gemm_cluster, be.gemm_norm = "own", S, True
    xs, rs = rng.normal(size=(M, K)).astype(np.float32), rng.normal(size=(M, N)).astype(np.float32) if with_residual else None
    wa, norm_w = (rng.normal(size=(N, K)) / np.sqrt(K)).astype(np.float32), rng.uniform(0.5, 1.5, N).astype(np.float32)
    wb, wgu = (rng.normal(size=(333, N)) / np.sqrt(N)).astype(np.float32), (rng.normal(size=(2 * I, N)) / np.sqrt(N)).astype(np.float32)
    x, w_a, nw, w_b, w_gu = be.convert(xs), be.convert(wa), be.convert(norm_w), be.convert(wb), be.convert(wgu)
    residual = None if rs is None else cp.asarray(rs)
    what = f"norm split M={M} S={S} residual={with_residual}"
    assert be.norm_split(M, N, K), what
    h, r = be.linear_norm(x, w_a, residual, nw, 1e-5)
    assert isinstance(h, NormedRows), what
    y_a = cp.empty((M, N), dtype=cp.float32)
    be.gemm_wgmma(x, w_a, y_a)
    h_ref, r_ref = be.add_rmsnorm(y_a, None if rs is None else cp.asarray(rs), nw, 1e-5)
    assert cp.array_equal(r, r_ref), f"{what}: the new residual"
    if rs is not None:
        assert cp.array_equal(residual, cp.asarray(rs)), f"{what}: the old residual is left as it was"
    r_host, w_host = cp.asnumpy(r), norm_w  # (norm weights are kept in float32)
    assert np.array_equal(cp.asnumpy(h.x).view(BF16), (r_host * w_host).astype(BF16)), f"{what}: x' = bf16(r w)"
    sums = cp.asnumpy(h.partials).astype(np.float64).sum(axis=1)
    assert_close(sums, (r_host.astype(np.float64) ** 2).sum(axis=1), 1e-5, 0, f"{what}: the partial sums of squares")
    assert cp.array_equal(h.materialise(be), h_ref), f"{what}: materialised, add_rmsnorm's h"
    y, y_ref = be.linear(h, w_b), be.linear(h_ref, w_b)
    assert_close(cp.asnumpy(y), cp.asnumpy(y_ref), 1e-2, 1e-2 * float(cp.abs(y_ref).max()), f"{what}: linear after it")
    act, act_ref = be.gate_up_silu(h, w_gu), be.gate_up_silu(h_ref, w_gu)
    expected = host_float(act_ref, "bfloat16")
    assert_close(host_float(act, "bfloat16"), expected, 2e-2, 2e-2 * np.abs(expected).max(), f"{what}: gate_up_silu after it")
    for kernel in ("stream", "wgmma") if M <= 16 else ("wgmma",):  # whichever linear took, each finishing kernel (gemm_stream's: up to 16 rows)
        y = cp.empty((M, 333), dtype=cp.float32)
        (be.gemm_stream if kernel == "stream" else be.gemm_wgmma)(h.x, w_b, y, h.finish())
        assert_close(cp.asnumpy(y), cp.asnumpy(y_ref), 1e-2, 1e-2 * float(cp.abs(y_ref).max()), f"{what}: gemm_{kernel} finishing it")
    for glu in ("stream", 2, 4) if M <= 16 else (2, 4):
        act = cp.empty((M, I), dtype=be.store_dtype)
        if glu == "stream":
            be.launch_stream("gemm_stream_glu", h.x, w_gu, act, I, h.finish())
        else:
            be.launch_wgmma_glu(h.x, w_gu, act, glu, h.finish())
        assert_close(host_float(act, "bfloat16"), expected, 2e-2, 2e-2 * np.abs(expected).max(), f"{what}: gated kernel {glu} finishing it")


def model_of_8b_widths(intermediate: int, seed: int):
    """The bf16 backend and a two-layer random model of Llama-3.1-8B's widths (vocabulary 1000) on it; skips off
    Hopper, where gemm_wgmma (the split norm's kernels) is not built."""
    import cupy as cp

    from minispec.bench_gpu import random_model_on_gpu
    from minispec.config import ModelConfig
    from minispec.model import Model

    be = backend("bfloat16")
    if not be.hopper:
        pytest.skip("gemm_wgmma needs a Hopper GPU")
    cfg = ModelConfig(vocab_size=1000, hidden_size=4096, intermediate_size=intermediate, num_layers=2, num_heads=32,
                      num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                      tie_word_embeddings=False)
    cp.random.seed(seed)
    return be, Model(cfg, random_model_on_gpu(cfg, be), be)


def test_a_model_of_8b_widths_gives_the_same_logits_with_the_norm_split():
    """A two-layer random model of Llama-3.1-8B's widths (O and down stream 512 KB tiles: both take norm_split at one
    row): decode steps from 40 keys, then a tree step of 4 nodes (4 rows: split too), replayed from captured graphs,
    give the logits of the unsplit norm (add_rmsnorm's launches) within bf16 rounding, and the same argmax."""
    from minispec.step import StepItem, build_plan
    from minispec.tree import Tree

    be, model = model_of_8b_widths(4096, 1)
    assert be.norm_split(1, 4096, 4096) and be.norm_split(4, 4096, 4096)
    prompt = np.random.default_rng(0).integers(0, 1000, 40)
    logits = {}
    for split in (None, False):
        be.gemm_norm = split
        cache = model.new_cache(8, 16)
        table = []
        cache.prepare(table, 0, 48)
        prefill = build_plan([StepItem.tree(table, 0, Tree(prompt, list(range(-1, 39))))], 16)
        model.forward(prefill, cache)
        rows = []
        steps = [StepItem.tree(table, position, Tree(np.array([position]), [-1])) for position in range(40, 44)]
        steps.append(StepItem.tree(table, 44, Tree(np.array([7, 8, 9, 10]), [-1, 0, 0, 1])))
        for item in steps:  # each step twice: a graph is captured, then replayed
            plan = build_plan([item], 16)
            model.forward(plan, cache)
            rows.append(model.forward(plan, cache).host())
        logits[split] = np.concatenate(rows)
    be.gemm_norm = None
    split, plain = logits[None], logits[False]
    assert_close(split, plain, 2e-2, 2e-2 * np.abs(plain).max(), "logits with the norm split")
    assert (split.argmax(axis=1) == plain.argmax(axis=1)).all()


@pytest.mark.parametrize("T", [16, 32, 33, 64])
def test_tree_steps_of_8b_widths_give_the_same_logits_with_the_norm_split_forced(T):
    """The split norm on (gemm_norm True; the rule's choice up to 32 rows) at 16-64 rows, where from 17 rows the O
    and down products begin it in 32- or 64-row x boxes (NormStage: their residual slice in shared memory, down's
    clusters of 2 summing their partials on chip) and qkv and the gate/up product finish it: a tree step of T nodes
    on a two-layer random model of Llama-3.1-8B's widths, replayed from its captured graph, gives the logits of the
    unsplit norm within bf16 rounding and the same argmax but at near-ties."""
    from minispec.step import StepItem, build_plan
    from minispec.tree import Tree

    be, model = model_of_8b_widths(14336, 2)
    rng = np.random.default_rng(T)
    tokens, parents = rng.integers(0, 1000, T), [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
    logits = {}
    for split in (True, False):
        be.gemm_norm = split
        assert be.norm_split(T, 4096, 4096) == be.norm_split(T, 4096, 14336) == split
        cache = model.new_cache(12, 16)
        table = []
        cache.prepare(table, 0, 40 + T)
        model.forward(build_plan([StepItem.tree(table, 0, Tree(np.arange(40) % 1000, list(range(-1, 39))))], 16), cache)
        plan = build_plan([StepItem.tree(table, 40, Tree(tokens, parents))], 16)
        model.forward(plan, cache)  # captured, then replayed
        logits[split] = model.forward(plan, cache).host()
    be.gemm_norm = None
    split, plain = logits[True], logits[False]
    assert_close(split, plain, 2e-2, 2e-2 * np.abs(plain).max(), f"T = {T}: logits with the norm split")
    assert_argmax_agrees(split, plain, f"T = {T}: argmax with the norm split")


def assert_argmax_agrees(got, ref, what: str) -> None:
    """got's argmax is ref's in every row but near-ties: where they differ, ref's two candidates lie within the two
    sets of logits' largest difference of each other (bf16 rounding in another order can flip either way there),
    and that happens in at most one row in ten. (Random models have such rows: stop 63, T = 16, one row.)"""
    a, b = got.argmax(axis=1), ref.argmax(axis=1)
    rows = np.flatnonzero(a != b)
    slack = float(np.abs(got - ref).max())
    gaps = ref[rows, b[rows]] - ref[rows, a[rows]]
    assert (gaps <= 2 * slack).all(), f"{what}: rows {rows.tolist()} differ by {gaps.tolist()} (rounding {slack})"
    assert len(rows) <= len(ref) // 10, f"{what}: rows {rows.tolist()} of {len(ref)} differ"


@pytest.mark.parametrize("M", [1, 17, 33, 64])
@pytest.mark.parametrize("N,K", [(333, 1024), (40000, 576), (70001, 1024)])
def test_gemm_wgmma_tiles_equals_a_block_a_tile(M, N, K):
    """gemm_wgmma_tiles_w2_x64 (Hopper; persistent blocks, each over tiles b, b + grid, ..., one ring across them,
    sums stored from the fragments): the bits of gemm_wgmma_w2_x64_s1 (a block a tile), N off the tile, blocks of
    one, two and three tiles (a grid of two blocks an SM), K / 64 stages not a multiple of the ring's 4; y poisoned
    first; close to float64 sums of the bf16 operands."""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(M + N + K)
    if not be.hopper:
        pytest.skip("gemm_wgmma needs a Hopper GPU")
    be.gemm_cluster, be.gemm_wgmma_groups, be.gemm_wgmma_xrows = 1, 2, 64
    xs, ws = rng.normal(size=(M, K)).astype(np.float32), (rng.normal(size=(N, K)) / np.sqrt(K)).astype(np.float32)
    x, w = be.convert(xs), be.convert(ws)
    ys = {}
    for persistent in (True, False):
        be.gemm_wgmma_tiles = persistent
        ys[persistent] = cp.full((M, N), cp.nan, dtype=cp.float32)
        be.gemm_wgmma(x, w, ys[persistent])
    assert cp.array_equal(ys[True], ys[False]), "persistent blocks give the bits of a block a tile"
    expected = stored(xs, "bfloat16").astype(np.float64) @ stored(ws, "bfloat16").astype(np.float64).T
    assert_close(cp.asnumpy(ys[True]), expected, 1e-3, 1e-3 * np.abs(expected).max(), f"gemm_wgmma_tiles M={M} N={N} K={K}")


def check_gated_product(be, rng, M, I, K, launch, product, name):
    """A gated kernel (launch(x, w, act)) on random x [M, K] and a fused [gate; up] weight [2 I, K]: act, poisoned first,
    has the bits of its plain product (product(x, w, y)) followed by silu_mul; gate_up_silu takes a gated kernel of the
    same bits; and act is close to silu(gate) * up from float64 sums of the bf16 operands."""
    import cupy as cp

    xs, ws = rng.normal(size=(M, K)).astype(np.float32), (rng.normal(size=(2 * I, K)) / np.sqrt(K)).astype(np.float32)
    x, w = be.convert(xs), be.convert(ws)
    fused = cp.empty((M, I), dtype=be.store_dtype)  # NaN bits (poisoned_allocations; cp.full(.., nan) cast NaN to 0)
    launch(x, w, fused)
    y = cp.full((M, 2 * I), cp.nan, dtype=cp.float32)
    product(x, w, y)
    assert cp.array_equal(fused, be.silu_mul(y)), f"{name}: the gated epilogue gives the bits of the product then silu_mul"
    assert cp.array_equal(be.gate_up_silu(x, w), fused), f"{name}: gate_up_silu takes a gated kernel of the same bits"
    expected = ref.silu_mul(stored(xs, "bfloat16").astype(np.float64) @ stored(ws, "bfloat16").astype(np.float64).T)
    assert_close(host_float(fused, "bfloat16"), expected, 1e-2, 1e-2 * np.abs(expected).max(), f"{name} M={M} I={I} K={K}")


@pytest.mark.parametrize("G", [2, 4])
@pytest.mark.parametrize("M", [17, 40, 64])
@pytest.mark.parametrize("I,K", [(333, 1024), (2048, 576)])
def test_gemm_wgmma_glu_equals_gemm_then_silu_mul(M, I, K, G):
    """gemm_wgmma_glu_w{G} (Hopper; G warpgroups a block, 32 G gate columns): the bits of gemm_wgmma of two
    warpgroups followed by silu_mul, I off the block's tile (the last block's gate boxes run into up rows, whose
    columns it must not write), act poisoned first; gate_up_silu takes a gated kernel with those bits; and close to
    silu(gate) * up from float64 sums of the bf16 operands."""
    be, rng = backend("bfloat16"), np.random.default_rng(M + I + K + G)
    if not be.hopper:
        pytest.skip("gemm_wgmma needs a Hopper GPU")
    be.gemm, be.gemm_cluster, be.gemm_wgmma_groups = "own", 1, 2  # one pass of two warpgroups, as the gated kernels
    assert be.glu_kernel(M, 2 * I, K) == "wgmma"
    check_gated_product(be, rng, M, I, K, lambda x, w, act: be.launch_wgmma_glu(x, w, act, G), be.gemm_wgmma, f"gemm_wgmma_glu_w{G}")


@pytest.mark.parametrize("S", [1, 2, 4, 8])
@pytest.mark.parametrize("M", [1, 8, 13, 16])
@pytest.mark.parametrize("I,K", [(333, 1024), (2048, 2048)])
def test_gemm_stream_glu_equals_gemm_then_silu_mul(M, S, I, K):
    """gate_up_silu on the gated gemm_stream (up to 16 rows, every cluster size): the bits of gemm_stream followed
    by silu_mul (the same blocks, k order and cluster sums, gate and up rows staged side by side), I off the
    64-column tile (the last block's clamped rows must write nothing), act poisoned first; and close to
    silu(gate) * up from float64 sums of the bf16 operands."""
    be, rng = backend("bfloat16"), np.random.default_rng(M + I + K + S)
    be.gemm, be.gemm_cluster = "own", S
    assert be.glu_kernel(M, 2 * I, K) == "stream"
    check_gated_product(be, rng, M, I, K, lambda x, w, act: be.launch_stream("gemm_stream_glu", x, w, act, I), be.gemm_stream,
                        f"gemm_stream_glu S={S}")


def use_attention_kernel(be, kernel: str) -> None:
    """w4 / w8: the mma.sync kernel with 4 or 8 warps; wgmma: the 8-warp kernel on warpgroup MMA (Hopper)."""
    if kernel == "wgmma" and not be.hopper:
        pytest.skip("wgmma needs a Hopper GPU")
    be.attention_warps = 4 if kernel == "w4" else 8
    be.attention_wgmma = kernel == "wgmma"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("page_size", [1, 3, 16, 64])  # wgmma: cp.async rows only (1, 3), TMA page segments (16, 64)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kernel", ["w4", "w8", "wgmma"])
def test_tree_attention_matches_dense_reference(dtype, page_size, D, kernel):
    import cupy as cp

    if dtype == "float32" and kernel != "w4":
        pytest.skip("fp32 pages take the CUDA-core kernel, which has no warp count")
    be, rng = backend(dtype), np.random.default_rng(page_size * D)
    use_attention_kernel(be, kernel)
    storage = BF16 if dtype == "bfloat16" else np.float32
    q, k_cache, v_cache, plan, expected = make_problem(rng, page_size, problem_specs(page_size), H=8, Hkv=2, D=D, dtype=storage)
    to_device = (lambda a: cp.asarray(a.view(np.uint16))) if dtype == "bfloat16" else cp.asarray
    out = be.attention(cp.asarray(q), to_device(k_cache), to_device(v_cache), be.prepare_plan(plan), 1 / np.sqrt(D))
    out = cp.asarray(host_float(out, dtype))
    reference = ref.attention(q, k_cache.astype(np.float32), v_cache.astype(np.float32), plan, 1 / np.sqrt(D))
    # bf16 pages run on tensor cores: q and the softmax weights are rounded to bf16, which moves peaked
    # scores by ~1% of their size; a wrong mask moves a whole row by O(1), far past the per-row bound
    tolerance = 6e-2 if dtype == "bfloat16" else 2e-4
    assert_close(cp.asnumpy(out), reference, tolerance, tolerance, "tree attention vs NumPy reference")
    assert_close(cp.asnumpy(out), expected, tolerance, tolerance, "tree attention vs dense reference")
    worst_row = np.abs(cp.asnumpy(out) - expected).mean(axis=1).max()
    assert worst_row < (1e-2 if dtype == "bfloat16" else 1e-4), f"worst row mean error {worst_row}"


@pytest.mark.parametrize("splits", [None, 1, 5, 64])
@pytest.mark.parametrize("kernel", ["w4", "w8", "wgmma"])
def test_tree_attention_split_kv_merge(splits, kernel):
    """Long contexts give the same result with one key share, a few, and more shares than key tiles (empty
    shares write m = -inf, l = 0 partials that the merge must skip)."""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(3)
    use_attention_kernel(be, kernel)
    be.attention_splits = splits
    q, k_cache, v_cache, plan, expected = make_problem(rng, 16, [(700, "random", 40), (1500, "single", 1), (300, "chunk", 70)], H=8, Hkv=2, D=128, dtype=BF16)
    out = be.attention(cp.asarray(q), cp.asarray(k_cache.view(np.uint16)), cp.asarray(v_cache.view(np.uint16)), be.prepare_plan(plan), 1 / np.sqrt(128))
    out = cp.asarray(host_float(out, "bfloat16"))
    assert_close(cp.asnumpy(out), expected, 6e-2, 6e-2, f"split-KV attention (splits={splits}, {kernel})")
    assert np.abs(cp.asnumpy(out) - expected).mean(axis=1).max() < 1e-2


@pytest.mark.parametrize("splits", [2, 5, 8, 16, 64])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kernel", ["w4", "w8"])
def test_tree_attention_merges_its_shares_in_a_cluster(splits, D, kernel):
    """The mma.sync kernel's key shares merged inside their cluster (merge_in_cluster; 5 shares run as 4, 16 as 8,
    64 by attention_merge; more shares than some rows' tiles: shares with no key) give the dense reference's values, and
    attention_merge's up to rounding; each into a poisoned output pool."""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(11 * splits + D)
    if not be.hopper:
        pytest.skip("thread block clusters need a Hopper GPU")
    use_attention_kernel(be, kernel)
    be.attention_splits = splits
    assert be.attention_merge_cluster(splits) == {2: 2, 5: 4, 8: 8, 16: 8, 64: 0}[splits]
    q, k_cache, v_cache, plan, expected = make_problem(rng, 16, [(700, "random", 40), (1500, "single", 1), (300, "chunk", 70)], H=8, Hkv=2, D=D, dtype=BF16)
    args = (cp.asarray(q), cp.asarray(k_cache.view(np.uint16)), cp.asarray(v_cache.view(np.uint16)), be.prepare_plan(plan), 1 / np.sqrt(D))
    outs = {}
    for cluster in (False, True):
        be.attention_cluster_merge = cluster
        cp.full(4 << 20, 0xFFFF, dtype=cp.uint16)  # freed at once: the pool's next blocks hold NaN bits
        outs[cluster] = host_float(be.attention(*args), "bfloat16")
    assert_close(outs[True], expected, 6e-2, 6e-2, f"attention merged in clusters (splits={splits}, D={D}, {kernel})")
    assert np.abs(outs[True] - expected).mean(axis=1).max() < 1e-2
    # (5 and 16 shares ran as fewer in the cluster: P's bf16 rounding then follows other running maxima)
    assert_close(outs[True], outs[False], 1e-2, 1e-2, "cluster merge vs attention_merge")


@pytest.mark.parametrize("kernel", ["w4", "w8", "wgmma"])
def test_attention_trigger_first_keeps_the_bits(kernel):
    """Letting the next kernel launch first thing (attention_trigger_first) changes when blocks are placed, not what
    they compute: the split attention and its merge give the same bits either way, each into a poisoned output
    pool, with a merge behind it that reads every share."""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(5)
    use_attention_kernel(be, kernel)
    be.attention_splits = 4
    q, k_cache, v_cache, plan, expected = make_problem(rng, 16, [(700, "random", 40), (300, "chunk", 24)], H=8, Hkv=2, D=128, dtype=BF16)
    args = (cp.asarray(q), cp.asarray(k_cache.view(np.uint16)), cp.asarray(v_cache.view(np.uint16)), be.prepare_plan(plan), 1 / np.sqrt(128))
    outs = []
    for trigger in (False, True):
        be.attention_early_trigger = trigger
        cp.full(4 << 20, 0xFFFF, dtype=cp.uint16)  # freed at once: the pool's next blocks hold NaN bits
        outs.append(be.attention(*args))
    assert cp.array_equal(outs[0], outs[1])
    assert_close(host_float(outs[1], "bfloat16"), expected, 6e-2, 6e-2, f"attention with the early trigger ({kernel})")


@pytest.mark.parametrize("keys", [64, 128])
@pytest.mark.parametrize("D", [64, 128])
def test_wgmma_attention_tree_instances_equal_the_causal_ones_on_trees(D, keys):
    """A step without causal chunks takes the wgmma kernel's _tree instance (the mask rule before stop 59), a step
    with them the instance whose causal rows skip the mask work on the keys before their first token: on tree rows
    the two give the same bits, and on a step of chunks and trees the latter gives the dense reference's values
    (chunks after 0-700 keys: tiles wholly before the chunk, and the chunk's own), each into a poisoned pool."""
    import dataclasses

    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(D + keys)
    use_attention_kernel(be, "wgmma")
    be.attention_keys, be.attention_splits = keys, 3
    names, kernel = [], be.kernel
    be.kernel = lambda file, name, *rest: (file.startswith("attention_wgmma") and names.append((file, name)), kernel(file, name, *rest))[1]
    run = lambda q, k, v, plan: be.attention(cp.asarray(q), cp.asarray(k.view(np.uint16)), cp.asarray(v.view(np.uint16)), plan, 1 / np.sqrt(D))  # noqa: E731
    q, k, v, plan, expected = make_problem(rng, 16, [(700, "random", 40), (1500, "single", 1), (300, "chain", 64), (90, "star", 12)],
                                           H=8, Hkv=2, D=D, dtype=BF16)
    device_plan = be.prepare_plan(plan)
    outs = []
    for has_causal in (False, True):
        cp.full(4 << 20, 0xFFFF, dtype=cp.uint16)  # freed at once: the pool's next blocks hold NaN bits
        outs.append(run(q, k, v, dataclasses.replace(device_plan, has_causal=has_causal)))
    assert names == [("attention_wgmma_tree.cu", f"tree_attention_wgmma_d{D}_k{keys}_tree"), ("attention_wgmma.cu", f"tree_attention_wgmma_d{D}_k{keys}")]
    assert cp.array_equal(outs[0], outs[1]), "the _tree instance and the causal one differ on tree rows"
    assert_close(host_float(outs[0], "bfloat16"), expected, 6e-2, 6e-2, f"wgmma _tree instance (D={D}, keys={keys})")
    q, k, v, plan, expected = make_problem(rng, 16, [(700, "chunk", 40), (900, "random", 30), (0, "chunk", 70), (130, "chunk", 5)],
                                           H=8, Hkv=2, D=D, dtype=BF16)
    cp.full(4 << 20, 0xFFFF, dtype=cp.uint16)
    out = run(q, k, v, be.prepare_plan(plan))
    assert names[-1] == ("attention_wgmma.cu", f"tree_attention_wgmma_d{D}_k{keys}")
    assert_close(host_float(out, "bfloat16"), expected, 6e-2, 6e-2, f"wgmma causal instance (D={D}, keys={keys})")
    assert np.abs(host_float(out, "bfloat16") - expected).mean(axis=1).max() < 1e-2


@pytest.mark.parametrize("keys", [64, 128])
@pytest.mark.parametrize("page_size", [3, 8, 16, 64])  # cp.async rows only; TMA boxes of 8, 16 and 64 rows
@pytest.mark.parametrize("D", [64, 128])
def test_wgmma_attention_producer_counts_agree(page_size, D, keys):
    """The wgmma kernel's tiles (64 or 128 keys) issued by one producer warp or by two land as the same bytes:
    the same bits out, and the dense reference's values, on trees, decode rows and a causal chunk. (128-key
    tiles of 8-row pages at D = 128 are 64 boxes: two producer warps only.)"""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(7 * page_size + D)
    use_attention_kernel(be, "wgmma")
    be.attention_keys = keys
    q, k_cache, v_cache, plan, expected = make_problem(rng, page_size, problem_specs(page_size), H=8, Hkv=2, D=D, dtype=BF16)
    args = (cp.asarray(q), cp.asarray(k_cache.view(np.uint16)), cp.asarray(v_cache.view(np.uint16)), be.prepare_plan(plan), 1 / np.sqrt(D))
    outs = []
    boxed = page_size >= 8 and 64 % page_size == 0  # TMA boxes of a page's rows (else cp.async rows only)
    for producers in (2,) if boxed and keys // page_size * 2 * (D // 64) > 32 else (1, 2):
        be.attention_producers = producers
        outs.append(be.attention(*args))
    assert cp.array_equal(outs[0], outs[-1]), "one producer warp and two give different bits"
    out = host_float(outs[-1], "bfloat16")
    assert_close(out, expected, 6e-2, 6e-2, f"wgmma attention, P={page_size}, D={D}, {keys}-key tiles")
    assert np.abs(out - expected).mean(axis=1).max() < 1e-2


def test_wgmma_attention_tile_keys_rule():
    """128-key tiles only for long shares, and never with more TMA boxes a tile than producer lanes."""
    be = backend("bfloat16")
    assert be.attention_tile_keys(16384, 128, 16, 2) == 128 and be.attention_tile_keys(4096, 128, 16, 2) == 64
    assert be.attention_tile_keys(16384, 64, 16, 2) == 64
    assert be.attention_tile_keys(16384, 128, 8, 1) == 64  # 64 boxes of 8 rows: two producer warps needed
    be.attention_keys = 128
    with pytest.raises(ValueError, match="TMA boxes"):
        be.attention_tile_keys(1024, 128, 8, 1)


@pytest.mark.parametrize("B, D, keys, step", [(1, 128, 9000, 0), (2, 128, 9000, 517), (1, 64, 9000, 0), (16, 64, 1100, 37)])
def test_long_decode_takes_wgmma_and_matches_reference(B, D, keys, step):
    """Decode steps past 8192 keys run on the wgmma kernel (Hopper) by the backend's own choice, and agree with
    the dense reference; a step just below stays on the 4-warp mma.sync kernel unless 32 (sequence, KV head)
    pairs or more share the launch."""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(11 + B + D)
    if not be.hopper:
        pytest.skip("the choice concerns Hopper GPUs")
    H, Hkv = (8, 2) if D == 128 else (9, 3)
    assert be.attention_kernel(1, 8192, 1, Hkv, D) == (4, False)
    assert be.attention_kernel(4, 16384, B, Hkv, D) == (8, True)
    assert be.attention_kernel(1, 8192, 2, 8, 128) == (4, False)  # 16 pairs
    assert be.attention_kernel(1, 2048, 4, 8, 128) == (8, True)  # 32 pairs from the 2k-key bucket
    assert be.attention_kernel(4, 1024, 16, 3, 64) == (4, False)
    assert be.attention_kernel(1, 4096, 16, 3, 64) == (8, True)
    specs = [(keys + step * b, "single", 1) for b in range(B)]
    q, k_cache, v_cache, plan, expected = make_problem(rng, 16, specs, H=H, Hkv=Hkv, D=D, dtype=BF16)
    launched = []
    launch = be.launch
    be.launch = lambda kernel, *a, **kw: launched.append(kernel) or launch(kernel, *a, **kw)
    out = be.attention(cp.asarray(q), cp.asarray(k_cache.view(np.uint16)), cp.asarray(v_cache.view(np.uint16)), be.prepare_plan(plan), 1 / np.sqrt(D))
    be.launch = launch
    # (a decode step has no causal chunk: the _tree instances serve it)
    assert launched[0] in [be.kernel("attention_wgmma_tree.cu", f"tree_attention_wgmma_d{D}_k{tile}_tree", D) for tile in (64, 128)]
    out = host_float(out, "bfloat16")
    assert_close(out, expected, 6e-2, 6e-2, f"long decode on wgmma (B={B}, D={D})")
    assert np.abs(out - expected).mean(axis=1).max() < 1e-2


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kv_commit_with_overlapping_moves(dtype):
    from minispec.backends.numpy_backend import NumpyBackend

    be, rng = backend(dtype), np.random.default_rng(5)
    NP, Hkv, P, D = 7, 3, 3, 64
    initial = rng.normal(size=(NP, Hkv, P, D)).astype(np.float32)
    k_cache, v_cache = be.convert(initial), be.convert(-initial)
    k_ref, v_ref = stored(initial, dtype), stored(-initial, dtype)
    k2, v2 = be.convert(2 * initial), be.convert(3 * initial)  # a second layer: one launch covers both
    k2_ref, v2_ref = stored(2 * initial, dtype), stored(3 * initial, dtype)
    # accept nodes 0, 2, 3 after rejecting 1 (L = 5): slots 7 -> 6 and 8 -> 7; a second sequence's 13, 14 -> 12, 13
    source, destination = np.array([7, 8, 13, 14]), np.array([6, 7, 12, 13])
    be.move_slots([k_cache, k2], [v_cache, v2], source, destination)
    NumpyBackend().move_slots([k_ref, k2_ref], [v_ref, v2_ref], source, destination)
    for got, want, name in ((k_cache, k_ref, "k"), (v_cache, v_ref, "v"), (k2, k2_ref, "k layer 2"), (v2, v2_ref, "v layer 2")):
        assert_close(host_float(got, dtype), want, 0, 0, f"commit {name}")
    be.copy_page([k_cache, k2], [v_cache, v2], 1, 5)  # copy-on-write of a whole page
    NumpyBackend().copy_page([k_ref, k2_ref], [v_ref, v2_ref], 1, 5)
    assert_close(host_float(k2, dtype), k2_ref, 0, 0, "page copy")


@pytest.mark.parametrize("R, V", [(33, 49157), (1, 128256), (64, 128256), (3, 5)])
def test_argmax_rows_first_index_on_ties(R, V):
    """Each row's share scans and the merge of shares must keep numpy's order: NaN first, then value, then index."""
    import cupy as cp

    be, rng = backend("bfloat16"), np.random.default_rng(9 + R)
    logits = rng.normal(size=(R, V)).astype(np.float32)
    logits[0, [V - 1, 1, V // 2]] = 50.0  # ties across shares: the first index wins, as in numpy
    if R > 8:
        logits[5, [V - 3, 300 % V, V // 3]] = np.nan  # NaN is the max, the first one wins (a NaN step still gives a valid id)
        logits[6] = np.nan
        logits[7] = -np.inf  # no value beats -inf: index 0
        logits[8, V - 1] = np.inf
    assert (be.to_host(be.argmax_device(cp.asarray(logits))) == np.argmax(logits, axis=-1)).all()


@pytest.mark.parametrize("R,V,k", [(1, 49152, 4), (5, 1000, 1), (16, 49152, 8), (3, 128256, 4), (7, 4099, 9), (2, 37, 8)])
def test_top_logprobs_match_reference(R, V, k):
    """top_share / top_merge: each row's k best ids exactly as the reference ranks them (ties across shares by
    index, NaN first) and their log-probabilities to fp32 accuracy; past TOP_K_MAX the host reference serves. A
    second call on the same buffer replays the kept launches on its new values; rows picks some of them."""
    import cupy as cp

    from minispec.sampling import top_logprobs

    be, rng = backend("bfloat16"), np.random.default_rng(R * V + k)
    logits = (rng.normal(size=(R, V)) * 3).astype(np.float32)
    logits[0, [V - 1, V // 2, 1 % V]] = 40.0  # a tie across shares: lower index first
    if R > 4:
        logits[1, [V - 3, V // 3]] = np.nan  # NaN above every number, as argmax has it
        logits[2, : V // 2] = -np.inf  # masked tokens count for nothing
        logits[3] = np.round(logits[3])  # many ties
    device = cp.asarray(logits)
    for again in range(2):  # the second call on the same buffer, new values in it: the kept launch reads them
        if again:
            logits = np.flip(logits, axis=1).copy()
            device[...] = cp.asarray(logits)
        ids, logprobs = be.top_logprobs(device, k)
        want_ids, want_logprobs = top_logprobs(logits, k)
        assert np.array_equal(ids, want_ids)
        finite = ~np.isnan(want_logprobs)
        assert np.array_equal(np.isnan(logprobs), ~finite)
        np.testing.assert_allclose(logprobs[finite], want_logprobs[finite], rtol=2e-6, atol=2e-5)
    rows = [R - 1, 0][: R]  # some rows, in another order (a draft level ranks its growing nodes' rows alone)
    some_ids, some_logprobs = be.top_logprobs(device, k, rows)
    assert np.array_equal(some_ids, ids[rows]) and np.array_equal(some_logprobs, logprobs[rows])


def test_to_host_soon_copies_in_stream_order_and_waits_for_nothing_later():
    """decode_ahead reads step k's tokens with to_host_soon while step k + 1 runs: the copy must see the values
    queued before it (not a later overwrite), and waiting for it must not wait for work queued after it."""
    import cupy as cp

    be = backend("bfloat16")
    spin = cp.RawKernel(
        r"""extern "C" __global__ void spin(long long cycles, int* x) {
            long long start = clock64();
            while (clock64() - start < cycles) {}
            x[0] = 7;
        }""",
        "spin",
    )
    ids = be.put(np.arange(5, 10), np.int32)
    read = be.to_host_soon(ids)
    later = cp.cuda.Event()
    spin((1,), (1,), (np.int64(2_000_000_000), ids))  # about a second at 1.7 GHz, then overwrites ids[0]
    later.record(be.stream)
    assert list(read()) == [5, 6, 7, 8, 9]
    assert not later.done, "waiting for the copy waited for the work queued after it"
    later.synchronize()
    assert be.to_host(ids)[0] == 7


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=20), dict(temperature=1.2, top_p=0.8), dict(temperature=0.9, min_p=0.05), dict(temperature=1.0, top_k=50, top_p=0.9, min_p=0.01)])
@pytest.mark.parametrize("R, V", [(64, 4099), (6, 128256), (5, 7)])  # 7: some slices of the row are empty
def test_sample_rows_matches_reference(settings, R, V):
    import cupy as cp

    from minispec import SamplingParams
    from minispec.sampling import target_distribution

    be, rng = backend("bfloat16"), np.random.default_rng(21)
    logits = (rng.normal(size=(R, V)) * 3).astype(np.float32)
    params = [SamplingParams(**settings)] * R
    uniforms = rng.random(R)
    rows = rng.permutation(R)
    tokens = be.sample_rows(cp.asarray(logits), rows, params, uniforms)
    for token, row, u in zip(tokens, rows, uniforms):
        p = target_distribution(logits[row], params[0])
        assert p[token] > 0, "sampled a filtered-out token"
        before, through = p[:token].sum(), p[: token + 1].sum()
        assert before - 1e-4 <= u <= through + 1e-4, f"u={u} outside the token's CDF interval [{before}, {through}]"


@pytest.mark.parametrize("V", [4099, 49152, 128256])
@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_k=20), dict(temperature=1.2, top_p=0.8), dict(temperature=0.9, min_p=0.05),
                                      dict(temperature=1.0, top_k=3000, top_p=0.95), dict(temperature=2.0, top_p=0.999),
                                      # top-k up to 256 with top-p: top-p's threshold from the top-k candidates, above
                                      # tau_k (1-4 tokens kept; 150-196 of the 256 at V = 4099 with the second) or below
                                      # it (0.999, and the second at the larger V); 257: the radix select again
                                      dict(temperature=0.5, top_k=256, top_p=0.3), dict(temperature=3.0, top_k=256, top_p=0.2),
                                      dict(temperature=1.0, top_k=50, top_p=0.999),
                                      dict(temperature=0.6, top_k=257, top_p=0.5)])
def test_kept_set_is_the_reference_s(settings, V):
    """The filters' thresholds (radix select or the top-k candidates on the kernel's side, a sort on the reference's)
    keep the same tokens, with the same relative probabilities: the kept p the kernel samples from (its `probs` output)."""
    import cupy as cp

    from minispec import SamplingParams
    from minispec.sampling import target_distribution

    be, rng = backend("bfloat16"), np.random.default_rng(V)
    R = 3
    logits = (rng.normal(size=(R, V)) * rng.uniform(1, 6, size=(R, 1))).astype(np.float32)
    params = SamplingParams(**settings)
    probs = cp.full((R, V), np.nan, dtype=cp.float32)
    be.sample_rows_device(cp.asarray(logits), list(range(R)), [params] * R, rng.random(R), probs)
    kept = cp.asnumpy(probs)
    for r in range(R):
        p = target_distribution(logits[r], params)
        assert np.array_equal(kept[r] > 0, p > 0), f"row {r}: kept {int((kept[r] > 0).sum())} tokens, the reference {int((p > 0).sum())}"
        np.testing.assert_allclose(kept[r] / kept[r].sum(), p, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("V", [4099, 49152, 128256])
def test_draw_rows_is_the_numpy_reference_s(V):
    """backend.draw_rows (a sampled draft chain's level, ModelDrafter.propose_chains) against NumpyBackend.draw_rows:
    rows picked out of order, each with its own settings, each uniform in the middle of a token's interval of the
    reference CDF (so fp32 against fp64 cannot move the draw): the same tokens, and the q kept beside them, once
    normalised, the reference's p (0 where filtered; the output is poisoned before the kernel writes it)."""
    import cupy as cp

    from minispec import SamplingParams
    from minispec.backends.numpy_backend import NumpyBackend

    be, rng = backend("bfloat16"), np.random.default_rng(V + 7)
    logits = (rng.normal(size=(9, V)) * rng.uniform(1, 5, size=(9, 1))).astype(np.float32)
    rows = [7, 2, 5, 0, 8]
    params = [SamplingParams(temperature=0.7), SamplingParams(temperature=1.0, top_k=40),
              SamplingParams(temperature=0.9, top_p=0.8), SamplingParams(temperature=1.3, min_p=0.02),
              SamplingParams(temperature=0.6, top_k=300, top_p=0.95)]
    _, p = NumpyBackend().draw_rows(logits, rows, params, [0.5] * len(rows))
    wanted, uniforms = [], []
    for row in p:  # a token with a wide interval, and u at its middle
        token = int(rng.choice(np.flatnonzero(row >= min(1e-3, row.max()))))
        wanted.append(token)
        uniforms.append(float(row[:token].sum() + row[token] / 2))
    ref_tokens, ref_q = NumpyBackend().draw_rows(logits, rows, params, uniforms)
    assert ref_tokens.tolist() == wanted
    tokens, q = be.draw_rows(cp.asarray(logits), rows, params, uniforms)
    assert cp.asnumpy(tokens).tolist() == wanted
    q = cp.asnumpy(q).astype(np.float64)
    assert np.isfinite(q).all() and q.shape == ref_q.shape
    assert np.array_equal(q > 0, ref_q > 0)
    np.testing.assert_allclose(q / q.sum(axis=1, keepdims=True), ref_q, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("V", [4099, 49152, 128256])
def test_specinfer_rows_is_the_numpy_reference_s(V):
    """backend.specinfer_rows (SpecInfer's tests at a sampled chain's nodes, verify.fetch_draws) against
    NumpyBackend.specinfer_rows: q the kept rows of draw_rows (e units, as the chains keep them), nodes accepted,
    refused (the residual's draw) and last (p's draw), rows out of order, each with its own settings. Each uniform
    sits well inside its outcome (u1 at half the acceptance ratio or halfway above it; u2 and a last node's u in
    the middle of a token's interval of the reference CDF), so fp32 against fp64 cannot move it: the same ints."""
    import cupy as cp

    from minispec import SamplingParams
    from minispec.backends.numpy_backend import NumpyBackend
    from minispec.sampling import target_distribution

    be, ref_be, rng = backend("bfloat16"), NumpyBackend(), np.random.default_rng(V + 11)
    settings = [SamplingParams(temperature=0.8), SamplingParams(temperature=1.0, top_k=50),
                SamplingParams(temperature=1.2, top_p=0.9), SamplingParams(temperature=0.9, min_p=0.01)]
    draft = (rng.normal(size=(6, V)) * 3).astype(np.float32)
    q_params = [settings[j % 4] for j in range(6)]
    _, q = be.draw_rows(cp.asarray(draft), list(range(6)), q_params, [0.5] * 6)
    q_host = cp.asnumpy(q).astype(np.float64)
    rows = [3, 0, 7, 1, 5, 2, 9, 4, 6, 8]
    q_rows = [0, 1, 2, 3, 4, 5, -1, -1, 0, 1]
    target = rng.normal(size=(10, V)).astype(np.float32) * 3  # a tested row: its draft's logits, moved a little
    for r, j in zip(rows, q_rows):
        target[r] = draft[j] + rng.normal(size=V).astype(np.float32) * 0.7 if j >= 0 else target[r]
    wanted_outcome = ["accept", "refuse", "accept", "refuse", "refuse", "accept", "last", "last", "refuse", "accept"]
    params, children, uniforms, residual_uniforms = [], [], [], []

    def middle_of(row):  # a token with a wide interval of row's CDF, and the u at its middle
        token = int(rng.choice(np.flatnonzero(row >= min(1e-3, row.max()))))
        return float((row[:token].sum() + row[token] / 2) / row.sum())

    for r, j, outcome in zip(rows, q_rows, wanted_outcome):
        settings_r = q_params[j] if j >= 0 else settings[r % 4]
        params.append(settings_r)
        p = target_distribution(target[r], settings_r)
        if j < 0:
            children.append(0)
            uniforms.append(middle_of(p))
            residual_uniforms.append(0.5)
            continue
        q_node = q_host[j] / q_host[j].sum()
        ratio = np.where(q_node > 0, p / np.where(q_node > 0, q_node, 1), 0)
        pick = (q_node > 1e-4) & ((ratio > 0.05) if outcome == "accept" else (ratio < 0.9))
        child = int(rng.choice(np.flatnonzero(pick)))
        children.append(child)
        a = min(1.0, ratio[child])
        uniforms.append(a / 2 if outcome == "accept" else (a + 1) / 2)
        residual_uniforms.append(middle_of(np.maximum(p - q_node, 0.0)))
    expected = ref_be.specinfer_rows(target, rows, params, uniforms, q_host, q_rows, children, residual_uniforms)
    assert [("accept" if t == -1 else "refuse") if j >= 0 else "last" for t, j in zip(expected, q_rows)] == wanted_outcome
    got = be.specinfer_rows(cp.asarray(target), rows, params, uniforms, q, q_rows, children, residual_uniforms)
    assert cp.asnumpy(got).tolist() == expected.tolist()


def test_sampling_a_degenerate_row_gives_a_valid_token():
    """A step whose logits went NaN (or all -inf) must still hand the next step a token id in [0, V): decoding
    one step ahead feeds it to the embedding before the host sees it (an invalid id read far out of bounds)."""
    import cupy as cp

    from minispec import SamplingParams

    be, V = backend("bfloat16"), 128256
    logits = np.random.default_rng(3).normal(size=(3, V)).astype(np.float32)
    logits[0] = np.nan
    logits[1] = -np.inf
    logits[2, :100] = np.nan
    params = [SamplingParams(temperature=0.8, top_k=50, top_p=0.9)] * 3
    tokens = be.sample_rows(cp.asarray(logits), [0, 1, 2], params, [0.3, 0.6, 0.9])
    assert ((tokens >= 0) & (tokens < V)).all(), tokens


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=30, top_p=0.9)])
def test_sample_rows_draws_at_the_positions_it_is_given(settings):
    """Given positions and a key (the device drafter's sampled steps, CudaBackend.ngram_draws), the kernel draws
    row r at u(key, positions[r]) of sampling.position_uniforms: the same 53 bits, so each token lies in its
    CDF interval at the host's u (up to fp32 vs fp64 at a boundary); the settings' own u (0.5 here) is not read."""
    import cupy as cp

    from minispec import SamplingParams
    from minispec.backends.cuda_sampling import SAMPLE_CLUSTER, SAMPLE_THREADS
    from minispec.sampling import position_uniforms, target_distribution

    be, rng = backend("bfloat16"), np.random.default_rng(4)
    params, R, V = SamplingParams(**settings), 64, 4099
    for trial in range(4):
        logits = (rng.normal(size=(R, V)) * 2).astype(np.float32)
        key = int(rng.integers(0, 2**63)) * 2 + trial % 2  # (the top bit set in half the trials)
        positions = rng.integers(0, 2**31 - 1, R).astype(np.int32)
        settings_rows = be.put([(r, params.temperature, params.top_k, params.top_p, params.min_p, 0.5) for r in range(R)], np.float64)
        tokens = cp.full(R, -1, dtype=cp.int32)
        kernel, shared = be.sampling_kernel("sample_rows", V)
        be.launch(kernel, (SAMPLE_CLUSTER, R), (SAMPLE_THREADS,), (cp.asarray(logits), settings_rows, tokens, np.uint64(0),
                  np.int32(V), cp.asarray(positions), np.uint64(key)), shared)
        uniforms = position_uniforms(key, positions)
        for r, (token, u) in enumerate(zip(cp.asnumpy(tokens), uniforms)):
            p = target_distribution(logits[r], params)
            assert p[token] > 0, "drew a filtered-out token"
            assert p[:token].sum() - 1e-4 <= u <= p[: token + 1].sum() + 1e-4, f"row {r}: u={u} outside the token's CDF interval"
