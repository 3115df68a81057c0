"""N-gram speculation drafted on the device (minispec/ngram_device.py, kernels/ngram_step.cu): the NumPy reference
step against the host drafter's own loop, the kernel against the reference, and the engine both ways."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from minispec import LLM, SamplingParams
from minispec.backends.numpy_backend import NumpyBackend
from minispec.drafters import NGRAM_BUDGET, NgramDrafter, TreeBudget
from minispec.kv_cache import KVCache
from minispec.ngram_device import OUT_TOKENS, NgramParams, state_row, tree_rows
from minispec.step import StepItem, build_plan_one, pack_plan, packed_offsets, pow2_bucket
from minispec.verify import verify_chosen


class Seq:
    def __init__(self, tokens):
        self.tokens, self.params = list(tokens), SamplingParams(temperature=0)


def random_ids(rng, tree, N: int, vocab: int) -> np.ndarray:
    """A step's argmax ids that accept a random path of the tree (each child taken with probability 0.75)."""
    ids = rng.integers(0, vocab, N).astype(np.int32)
    node = 0
    while True:
        tokens = {tree.token_list[c]: c for c in tree.children(node)}
        if tokens and (rng.random() < 0.75 or len(tokens) == vocab):  # (children of every token: one is taken)
            ids[node] = rng.choice(list(tokens))
            node = tokens[int(ids[node])]
            continue
        while int(ids[node]) in tokens:  # the bonus is no child's token
            ids[node] = rng.integers(0, vocab)
        return ids


def host_caches(rng, layers: int, pages: int, Hkv: int, P: int, D: int) -> KVCache:
    cache = KVCache(NumpyBackend(), layers, pages, Hkv, P, D)
    for array in (*cache.k, *cache.v):
        array[:] = rng.standard_normal(array.shape).astype(np.float32)
    return cache


LOOSE_GATE = dict(pays=2.0, strong=6, common=3)  # drafts more often on random text than the defaults; the kernel takes either


class Owner:  # the model the buffers are kept for (a weak key on the CUDA backend; the reference needs none)
    pass


def run_host_and_device(rng, tokens, budget: TreeBudget, vocab: int, steps: int, max_len: int, P: int = 4, device=None,
                        stop_ids=(), gate=None):
    """The host's loop (NgramDrafter.propose, verify_chosen, KVCache.commit, NgramDrafter.commit) and the NumPy
    reference's advance from the same first tree, step by step, compared after each; `device` (a CudaBackend) runs
    the kernel on the same ids and a copy of the same pages, and is compared with the reference. gate: the drafter's
    settings (pays, strong, common) where not the defaults. Returns the set of (a draft was accepted, the next tree has
    drafts) seen."""
    backend, owner = NumpyBackend(), Owner()
    drafter = NgramDrafter(budget, **(gate or {}))
    seq = Seq(tokens)
    L = len(tokens) - 1
    N = pow2_bucket(budget.nodes)
    cache = host_caches(rng, 2, 4 * max_len // P, 2, P, 8)
    if device is not None and device.bf16:  # values the device's pages hold exactly
        for array in (*cache.k, *cache.v):
            array[:] = device.to_host(device.convert(array)).view(ml_dtypes.bfloat16).astype(np.float32)
    mirror = KVCache(backend, 2, cache.num_pages, 2, P, 8)  # the host loop's copy of the pages
    for a, b in zip((*mirror.k, *mirror.v), (*cache.k, *cache.v)):
        a[:] = b
    table = []
    W = cache.pages_for(max_len + 4 * N) + 1
    # (the engine stops drafting on the device 3 N before the context limit; here the trees run into it)
    params = dataclasses.replace(NgramParams.of(drafter, max_len), stop_len=max_len + 4 * N, stop_ids=tuple(stop_ids))
    tree = drafter.propose([seq], [max_len - L])[0]
    history = drafter.history[id(seq)]
    buffers = backend.ngram_buffers(owner, cache, N, W, max_len + 4 * N)
    cache.prepare(table, L, 3 * N)
    mirror_table = list(table)
    mirror.free = [page for page in mirror.free if page not in table]
    mirror.refcount[table] = 1
    first = (seq.tokens, state_row(L, len(tree), history.accepted, history.tries, 0, 0), tree_rows(tree),
             build_plan_one(StepItem.tree(table, L, tree), P))
    backend.ngram_load(buffers, *first)
    if device is not None:
        device_cache = KVCache(device, 2, cache.num_pages, 2, P, 8)
        device_cache.k, device_cache.v = [device.convert(a) for a in cache.k], [device.convert(a) for a in cache.v]
        device_buffers = device.ngram_buffers(owner, device_cache, N, W, max_len + 4 * N)
        for array in (device_buffers.hist, device_buffers.state, device_buffers.tree, device_buffers.packed):
            array.fill(-7)  # poisoned: the load and the kernel write what is compared
        device_buffers.out[:] = -7
        device.ngram_load(device_buffers, *first)
    seen = set()
    for step in range(steps):
        ids = random_ids(rng, tree, N, vocab)
        backend.ngram_advance(cache, buffers, ids, step % 2, params)
        if device is not None:
            device.ngram_advance(device_cache, device_buffers, device.put(ids, np.int32), step % 2, params)
        # the host's loop
        path, bonus = verify_chosen(tree, ids[: len(tree)])
        accepted = [tree.token_list[n] for n in path[1:]] + [int(bonus)]
        mirror.commit(mirror_table, L, path)
        drafter.commit(seq, path, accepted)
        seq.tokens += accepted
        L += len(path)
        record = backend.ngram_read(buffers, step % 2)
        if set(accepted) & set(stop_ids):  # the sequence ends: an empty plan, and the advance after it does nothing
            assert record[0] == len(path) and record[1] == 0 and record[2] == L
            assert record[OUT_TOKENS : OUT_TOKENS + len(path)].tolist() == accepted
            o = packed_offsets(1, N, W)
            assert buffers.packed[o[5] : o[9]].tolist() == [0, 0, L, L, 0] and (buffers.packed[o[3] : o[4]] == -1).all()
            backend.ngram_advance(cache, buffers, ids, (step + 1) % 2, params)
            assert backend.ngram_read(buffers, (step + 1) % 2)[:2].tolist() == [0, 0]
            if device is not None:
                check_device(device, device_buffers, device_cache, buffers, cache, step, L)
                device.ngram_advance(device_cache, device_buffers, device.put(ids, np.int32), (step + 1) % 2, params)
                assert device.ngram_read(device_buffers, (step + 1) % 2)[:2].tolist() == [0, 0]
                np.testing.assert_array_equal(device.to_host(device_buffers.packed), buffers.packed)
            seen.add("stopped")
            break
        tree = drafter.propose([seq], [max_len - L])[0]
        seen.add((len(path) > 1, len(tree) > 1))
        assert record[0] == len(path) and record[1] == (len(tree) if len(tree) > 1 else 0) and record[2] == L, step
        assert record[OUT_TOKENS : OUT_TOKENS + len(path)].tolist() == accepted
        assert record[3:7].tolist() == [history.accepted, history.tries, history.tree_tokens, history.tree_steps]
        assert buffers.hist[: L + 1].tolist() == seq.tokens
        expected = np.zeros_like(buffers.packed)
        pack_plan(build_plan_one(StepItem.tree(table, L, tree), P), expected, N, W)
        empty = len(tree) == 1  # no draft: an empty plan, no tree rows
        if empty:
            o = packed_offsets(1, N, W)
            expected[: o[4]] = 0
            expected[o[3] : o[4]] = -1
            expected[o[5] : o[9]] = [0, 0, L, L, 0]
            assert buffers.state[1] == 0 and (buffers.tree[0] == 0).all() and (buffers.tree[1] == -1).all()
        else:
            assert buffers.tree[0, : len(tree)].tolist() == tree.token_list and buffers.tree[1, : len(tree)].tolist() == tree.parents.tolist()
        np.testing.assert_array_equal(buffers.packed, expected)
        kept = np.array(table)[np.arange(L) // P], np.arange(L) % P  # the committed positions' rows
        for a, b in zip((*mirror.k, *mirror.v), (*cache.k, *cache.v)):  # the accepted K/V moved as commit moves it
            np.testing.assert_array_equal(a[kept[0], :, kept[1]], b[kept[0], :, kept[1]])
        if device is not None:
            check_device(device, device_buffers, device_cache, buffers, cache, step, L)
        if L + 2 > max_len:  # (the engine stops drafting on the device 3 N before the limit; the kernel need not)
            break
        pages = len(table)
        cache.prepare(table, L, 3 * N)
        mirror_table += table[len(mirror_table) :]
        mirror.free = [page for page in mirror.free if page not in table]
        mirror.refcount[table] = 1
        if empty:  # the device's next advance would do nothing: the root alone is loaded, as a stretch would load it
            first = (seq.tokens, state_row(L, 1, history.accepted, history.tries, history.tree_tokens, history.tree_steps),
                     tree_rows(tree), build_plan_one(StepItem.tree(table, L, tree), P))
            backend.ngram_load(buffers, *first)
            if device is not None:
                device.ngram_load(device_buffers, *first)
        elif len(table) != pages:
            backend.ngram_table(buffers, table)
            if device is not None:
                device.ngram_table(device_buffers, table)
    return seen


def check_device(device, buffers, cache, reference, reference_cache, step, L):
    record = device.ngram_read(buffers, step % 2)
    expected = reference.out[step % 2]
    n = OUT_TOKENS + int(expected[0])
    np.testing.assert_array_equal(record[:n], expected[:n], err_msg=f"step {step}")
    np.testing.assert_array_equal(device.to_host(buffers.hist)[: L + 1], reference.hist[: L + 1])
    np.testing.assert_array_equal(device.to_host(buffers.state)[:6], reference.state[:6])
    np.testing.assert_array_equal(device.to_host(buffers.tree), reference.tree)
    np.testing.assert_array_equal(device.to_host(buffers.packed), reference.packed)
    for a, b in zip((*cache.k, *cache.v), (*reference_cache.k, *reference_cache.v)):
        host = device.to_host(a)
        host = host.view(ml_dtypes.bfloat16).astype(np.float32) if device.bf16 else host
        np.testing.assert_array_equal(host, b, err_msg=f"step {step}")


@pytest.mark.parametrize("budget", [(16, 15, 4), (8, 7, 1), (24, 3, 8), (64, 40, 4)])
def test_reference_step_equals_the_host_drafters_loop(budget):
    """Random text over small vocabularies (many overlapping matches, common tokens, trees that pay and do not)."""
    rng = np.random.default_rng(budget[0] + budget[2])
    seen = set()
    for trial in range(4):
        vocab = 3 + 2 * trial
        seen |= run_host_and_device(rng, rng.integers(0, vocab, 30 + 20 * trial).tolist(), TreeBudget(*budget), vocab, 25, 600,
                                    gate=LOOSE_GATE if trial % 2 else None)
    assert (True, True) in seen and (False, True) in seen  # trees accepted and rejected, drafting on
    assert {(True, False), (False, False)} & seen  # and no draft: an empty plan


def test_reference_step_ends_at_a_stop_token():
    rng = np.random.default_rng(11)
    seen = set()
    for trial in range(6):
        seen |= run_host_and_device(rng, rng.integers(0, 6, 60).tolist(), NGRAM_BUDGET, 6, 40, 600, stop_ids=(5,))
    assert "stopped" in seen


def test_reference_step_near_the_context_limit():
    """Trees shrink to the room left (max_len - L), as the engine's budgets make the host drafter's."""
    rng = np.random.default_rng(7)
    sizes = []
    drafter_propose = NgramDrafter.propose
    NgramDrafter.propose = lambda self, seqs, budgets: (sizes.append(budgets[0]), drafter_propose(self, seqs, budgets))[1]
    try:
        run_host_and_device(rng, [1, 2, 3, 4] * 20, NGRAM_BUDGET, 5, 40, 130)
    finally:
        NgramDrafter.propose = drafter_propose
    assert min(sizes) < NGRAM_BUDGET.nodes  # steps ran where the room left caps the tree


def tiny_llm(model_dir, device="cpu", **kwargs):
    return LLM(model=str(model_dir), device=device, **kwargs)


def generate_both_ways(llm, prompt, params):
    """(tokens, stats) with the device's drafting, then with the host's; the number of device steps run."""
    backend, runs = llm.backend, []
    advance, calls = backend.ngram_advance, []
    backend.ngram_advance = lambda *a: (calls.append(1), advance(*a))[1]
    try:
        for on in (True, False):
            llm.engine.device_drafting_enabled = on
            result = llm.generate([prompt], params)[0]
            runs.append((result.token_ids, result.stats.steps, dict(result.stats.accepted_lengths), result.finish_reason))
            assert llm.cache.free_pages == llm.cache.num_pages
    finally:
        backend.ngram_advance = advance
        llm.engine.device_drafting_enabled = True
    return runs, len(calls)


@pytest.mark.parametrize("looping", [True, False], ids=["looping model", "random model"])
@pytest.mark.parametrize("max_tokens,ignore_eos,ahead", [(120, True, True), (37, True, True), (200, False, True), (120, True, False)])
def test_engine_drafting_on_the_device_gives_the_host_loops_tokens_and_steps(tiny_model, looping_model, max_tokens, ignore_eos, ahead, looping):
    """The same tokens, steps and accepted lengths with the drafting on the device (NumPy reference) as on the
    host, and every page back. With decoding ahead (the default) decode_ahead hands its step in flight over to
    the device's stretch; without, the host's loop starts each stretch from its own tree. The looping model's
    trees are accepted whole, in part or not at all, so stretches run many tree steps and end where its output
    leaves a cycle; the random model's drafts mostly fail, so its stretches are short and the gate closes."""
    llm = tiny_llm(looping_model if looping else tiny_model)
    llm.use_drafter("ngram")
    llm.engine.decode_ahead_enabled = ahead
    prompt = llm.tokenizer.encode("abcabcabd abcab")
    (device, host), calls = generate_both_ways(llm, prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos))
    assert device == host and calls > 0  # (calls: the device's steps ran)
    if looping:  # long paths accepted, short ones, and none
        assert max(device[2]) >= min(8, max_tokens // 4) and 1 in device[2] and len(device[2]) >= 3, device[2]


@pytest.mark.parametrize("looping", [True, False], ids=["looping model", "random model"])
@pytest.mark.parametrize("ahead", [True, False])
def test_sampled_drafting_on_the_device_gives_the_host_loops_tokens_and_steps(tiny_model, looping_model, ahead, looping):
    """Sampled, the device's steps draw each node at its position (ngram_draws) and walk the draws: the host loop's
    tokens, steps and accepted lengths (the gate at NGRAM_PAYS_SAMPLED on both), and plain sampling's tokens."""
    llm = tiny_llm(looping_model if looping else tiny_model)
    llm.use_drafter("ngram")
    llm.engine.decode_ahead_enabled = ahead
    prompt = llm.tokenizer.encode("abcabcabd abcab")
    params = SamplingParams(temperature=1.0, top_k=3, seed=3, max_tokens=120, ignore_eos=True)
    (device, host), calls = generate_both_ways(llm, prompt, params)
    assert device == host and calls > 0
    llm.use_drafter(None)
    assert llm.generate([prompt], params)[0].token_ids == device[0]
    if looping:  # paths accepted and refused
        assert max(device[2]) >= 4 and 1 in device[2], device[2]


def test_a_stretch_that_drafts_nothing_launches_the_plain_step_before_its_last_record(looping_model):
    """Where the device drafts nothing, the host launches the plain step (launch_plain) as soon as it reads the record
    that says so, before the empty step's record, and decode_ahead goes on from it: the host loop's tokens and steps."""
    llm = tiny_llm(looping_model)
    llm.use_drafter("ngram")
    backend, engine, cache, events = llm.backend, llm.engine, llm.cache, []
    spied = {"ngram_load": backend, "ngram_read": backend, "ngram_advance": backend}
    for name, owner in spied.items():
        setattr(owner, name, lambda *a, name=name, call=getattr(owner, name), **k: (events.append((name,)), call(*a, **k))[1])
    launch, truncate = engine.launch_plain, cache.truncate
    engine.launch_plain = lambda rows, *a: (events.append(("launch_plain", rows[0].L)), launch(rows, *a))[1]
    cache.truncate = lambda table, length: (events.append(("truncate", length)), truncate(table, length))[1]
    try:
        prompt = llm.tokenizer.encode("abcabcabd abcab")
        (device, host), calls = generate_both_ways(llm, prompt, SamplingParams(temperature=0, max_tokens=160, ignore_eos=True))
    finally:
        for name, owner in list(spied.items()) + [("launch_plain", engine), ("truncate", cache)]:
            delattr(owner, name)
    assert device == host and calls > 0
    # a plain launch followed by a stretch's record with no advance between: only a stretch's end does that (every
    # stretch but the last, which may end at the length limit); the stretch then keeps the page the step writes (at L)
    ends = [i for i in range(len(events) - 1) if events[i][0] == "launch_plain" and events[i + 1][0] == "ngram_read"]
    assert len(ends) >= max(2, [e[0] for e in events].count("ngram_load") - 1), (ends, events)
    for i in ends:
        length = next(e[1] for e in events[i:] if e[0] == "truncate")
        assert length > events[i][1], (events[i], length)


@pytest.mark.gpu
@pytest.mark.parametrize("store", ["bfloat16", "float32"])
def test_ngram_advance_kernel_equals_the_reference(store):
    """Long random histories (scans of several blocks of ends), pages of 16, poisoned buffers: every output equal."""
    from minispec.backends.cuda_backend import CudaBackend

    cuda = CudaBackend(dtype=store)
    rng = np.random.default_rng(3)
    seen = set()
    cases = [(40, 3, (16, 15, 4)), (700, 5, (16, 15, 4)), (2500, 4, (64, 40, 4)), (1200, 9, (8, 7, 1)), (300, 40, (16, 15, 4))]
    for i, (length, vocab, budget) in enumerate(cases):
        tokens = rng.integers(0, vocab, length).tolist()
        gate = LOOSE_GATE if i % 2 else None  # the kernel takes the drafter's gate settings
        seen |= run_host_and_device(rng, tokens, TreeBudget(*budget), vocab, 20, length + 500, 16, cuda, gate=gate)
    assert (True, True) in seen and (False, True) in seen and {(True, False), (False, False)} & seen
    for trial in range(3):  # a stop token ends the drafting: an empty plan, then a step that does nothing
        seen |= run_host_and_device(rng, rng.integers(0, 6, 300).tolist(), NGRAM_BUDGET, 6, 40, 900, 16, cuda, stop_ids=(2, 5))
    assert "stopped" in seen


@pytest.mark.gpu
def test_engine_drafting_on_the_device_on_gpu(default_model):
    """The default model on the GPU (bf16, graphs): the device's drafting gives the host loop's tokens and steps on
    prompts that copy from their text."""
    llm = LLM(model=str(default_model), device="cuda")
    llm.use_drafter("ngram")
    for text in ["Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog.",
                 "Extract the names from this list: Alice Smith, Bob Jones, Carol White, Dan Brown. Names:"]:
        prompt = llm.chat_prompt([{"role": "user", "content": text}])
        (device, host), calls = generate_both_ways(llm, prompt, SamplingParams(temperature=0, max_tokens=96))
        assert device == host and calls > 0


@pytest.mark.gpu
def test_looping_model_on_gpu_drafts_on_the_device_and_samples_losslessly(tmp_path):
    """A looping tiny model in bf16 on the GPU (head dim 64, as the kernels take it): greedy, the device's drafting
    (ngram_advance, the packed graphs) gives the host loop's tokens and steps over stretches of long accepted
    paths, and sampled the same (each node drawn at its position, ngram_draws); sampled in batches (the host's
    loop), n-gram speculation draws from plain sampling's distribution (conftest.sampled_speculation_chi2)."""
    from .conftest import make_tiny_checkpoint, sampled_speculation_chi2

    model = make_tiny_checkpoint(tmp_path / "looping", hidden=192, layers=3, heads=4, kv_heads=2, head_dim=64,
                                 intermediate=384, dtype=ml_dtypes.bfloat16, cycle=7)
    llm = tiny_llm(model, "cuda", kv_cache_tokens=1 << 15)
    llm.use_drafter("ngram")
    prompt = llm.tokenizer.encode("abcabcabd abcab")
    (device, host), calls = generate_both_ways(llm, prompt, SamplingParams(temperature=0, max_tokens=160, ignore_eos=True))
    assert device == host and calls > 0 and max(device[2]) >= 8, device[2]
    params = SamplingParams(temperature=1.0, top_k=3, seed=3, max_tokens=160, ignore_eos=True)
    (device, host), calls = generate_both_ways(llm, prompt, params)
    assert device == host and calls > 0 and max(device[2]) >= 4, device[2]
    plain = tiny_llm(model, "cuda", kv_cache_tokens=1 << 15)
    llm.use_drafter("ngram", (8, 4, 2))
    chi2, df, accepted = sampled_speculation_chi2(plain, llm)
    assert sum(v for k, v in accepted.items() if k >= 3) > 50, accepted
    assert chi2 < df + 5 * np.sqrt(2 * df), (chi2, df, accepted)


@pytest.mark.gpu
def test_long_context_stretches_replay_layer_by_layer_graphs(tmp_path):
    """Past 1,024 keys a 16-row tree leaves the fused kernel (cuda_fused.FUSED_TREE_KEY_ROWS): the device's stretches
    then replay layer-by-layer graphs, the empty plans at their ends included, and give the host loop's tokens and
    steps."""
    from .conftest import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "looping", hidden=192, layers=3, heads=4, kv_heads=2, head_dim=64,
                                 intermediate=384, dtype=ml_dtypes.bfloat16, cycle=7, max_positions=2048)
    llm = tiny_llm(model, "cuda", kv_cache_tokens=1 << 14)
    llm.use_drafter("ngram")
    backend, seen = llm.backend, []
    fused_rows = backend.fused_rows

    def spied(model, plan):  # each step's (rows, keys, fused rows)
        rows = fused_rows(model, plan)
        seen.append((plan.num_tokens, plan.max_kv_len, rows))
        return rows

    backend.fused_rows = spied
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefghij "), 1100)) + "abcabcabd abcab"
    try:
        (device, host), calls = generate_both_ways(llm, llm.tokenizer.encode(text), SamplingParams(temperature=0, max_tokens=120, ignore_eos=True))
    finally:
        del backend.fused_rows
    assert device == host and calls > 0 and max(device[2]) >= 8, device[2]
    assert any(N > 8 and keys > 1024 and rows == 0 for N, keys, rows in seen), seen[-5:]  # layered tree steps ran


@pytest.mark.gpu
# the fused kernel's CUDA-core instance (intermediate 328: up to 4 rows; on Hopper cluster_decode.cu's 4-row instance
# takes a 3-node step) and its tensor-core one (384: up to 16); and the layer-by-layer graph (fused_max_rows 0), which
# long-context trees take
@pytest.mark.parametrize("intermediate,T,fused", [(328, 3, True), (384, 13, True), (384, 13, False)])
def test_a_device_written_empty_plan_leaves_the_cache_untouched(tmp_path, intermediate, T, fused):
    """A step launched past its sequence's end replays its graph on an empty plan (cu_q[1] = 0 and slot -1 a row, as
    ngram_advance writes it), so no page of any layer changes: the fused kernel returns at once and cluster_decode.cu
    runs its rows as padding that writes no K/V, both whatever the slots say (the check leaves the captured plan's);
    the layer-by-layer graph's K/V write skips slot -1 (its kernels read cu_q only to zero padded rows' outputs). The
    same graph on the plan it was captured for writes its rows' K/V (the check sees writes)."""
    import cupy as cp

    from minispec.backends.cuda_backend import CudaBackend
    from minispec.model import Model

    from .attention_cases import random_tree
    from .test_cuda_fused import tiny_bf16_model

    rng = np.random.default_rng(intermediate)
    be = CudaBackend("bfloat16")
    if not fused:
        be.fused_max_rows = 0
    model = Model.load(tiny_bf16_model(tmp_path / "model", 64, intermediate), be)
    P, num_pages, L = 16, 12, 50
    N = pow2_bucket(T)
    cache = model.new_cache(num_pages, P)
    table = [int(p) for p in rng.permutation(num_pages)[: -(-(L + T) // P)]]
    plan = build_plan_one(StepItem.tree(table, L, random_tree(rng, T, "random")), P)
    assert bool(be.fused_rows(model, be.prepare_plan(plan))) == fused  # the step runs on the fused kernel, or not
    pages = [c for pair in zip(cache.k, cache.v) for c in pair]
    start = [rng.normal(size=c.shape).astype(ml_dtypes.bfloat16).view(np.uint16) for c in pages]
    buffers = be.ngram_buffers(model, cache, N, num_pages, 256)
    packed = np.zeros(buffers.packed.size, np.int32)
    pack_plan(plan, packed, N, num_pages)
    offsets = packed_offsets(1, N, num_pages)
    cu_q, slots = offsets[5], slice(offsets[3], offsets[4])
    captured_slots = packed[slots].copy()
    for empty in (False, True, False, True):  # the graph is captured on the first, then replayed
        for c, values in zip(pages, start):
            c[...] = cp.asarray(values)
        packed[cu_q + 1] = 0 if empty else T
        packed[slots] = -1 if empty and not fused else captured_slots
        buffers.packed[...] = cp.asarray(packed)
        be.replay_packed(model, cache, buffers, L + N)
        cp.cuda.Device().synchronize()
        changed = [not np.array_equal(cp.asnumpy(c), values) for c, values in zip(pages, start)]
        assert not any(changed) if empty else all(changed), (empty, changed)


def test_a_pool_without_room_for_a_stretch_leaves_the_steps_to_the_host(tiny_model):
    """A stretch holds pages for 3 N positions past what is read; where the pool has fewer, the host's loop runs the
    tree steps (asking only for what each needs): the same tokens, and every page back."""
    llm = tiny_llm(tiny_model, kv_cache_tokens=64, page_size=16)
    llm.use_drafter("ngram")
    (device, host), calls = generate_both_ways(llm, llm.tokenizer.encode("abcabcabd abcab"), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert device == host and calls == 0 and max(device[2]) > 1  # trees ran, on the host
