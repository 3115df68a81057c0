"""The engine on the GPU against the NumPy reference, end to end (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from minispec import LLM, SamplingParams

pytestmark = pytest.mark.gpu

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Rewrite in the past tense: I walk to the shop and I buy bread, then I walk home."]


@pytest.fixture(scope="module")
def prompt_ids(default_llm):
    return [default_llm.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS]


@pytest.fixture(scope="module")
def reference_outputs(default_llm, prompt_ids):
    return [r.token_ids for r in default_llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))]


@pytest.fixture(scope="module")
def gpu_fp32(default_model):
    return LLM(model=str(default_model), device="cuda", dtype="float32")


@pytest.fixture(scope="module")
def gpu_bf16(default_model):
    return LLM(model=str(default_model), device="cuda", dtype="bfloat16")


def test_fp32_logits_and_greedy_match_reference(default_llm, gpu_fp32, prompt_ids, reference_outputs):
    for ids in prompt_ids:
        expected = default_llm.logits(ids)
        got = gpu_fp32.logits(ids)
        assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4
    results = gpu_fp32.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
    assert [r.token_ids for r in results] == reference_outputs


def test_bf16_logits_close_and_greedy_starts_identical(default_llm, gpu_bf16, prompt_ids, reference_outputs):
    ids = prompt_ids[0]
    expected, got = default_llm.logits(ids), gpu_bf16.logits(ids)
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 3e-2
    results = gpu_bf16.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
    for result, expected_ids in zip(results, reference_outputs):
        assert result.token_ids[:16] == expected_ids[:16]
    assert "Paris" in gpu_bf16.chat([{"role": "user", "content": PROMPTS[0]}], SamplingParams(temperature=0, max_tokens=20)).text


SHAPES = [("ngram", (1, 1, 1)), ("ngram", (8, 7, 1)), ("ngram", (16, 6, 4)), ("ngram", (64, 8, 8)), ("self:6", (12, 4, 3)),
          ("self:6", (4, 3, 1))]  # (the last: the GPU's default draft chain, proposed with one wait: ModelDrafter.propose_chains)


def speculative_and_plain(llm, prompt_ids, draft, tree):
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    llm.use_drafter(None)
    plain = [r.token_ids for r in llm.generate(prompt_ids, params)]
    llm.use_drafter(draft, tree)
    try:
        spec = [r.token_ids for r in llm.generate(prompt_ids, params)]
    finally:
        llm.use_drafter(None)
    assert llm.cache.free_pages == llm.cache.num_pages
    return spec, plain


@pytest.mark.parametrize("draft,tree", SHAPES)
def test_speculative_equals_plain_on_gpu_fp32(gpu_fp32, prompt_ids, draft, tree):
    """Exact token equality: the float32 mode computes every visible key in position order, like decoding."""
    spec, plain = speculative_and_plain(gpu_fp32, prompt_ids, draft, tree)
    assert spec == plain


@pytest.mark.parametrize("draft,tree", SHAPES)
def test_speculative_agrees_with_plain_on_gpu_bf16(gpu_bf16, prompt_ids, draft, tree):
    """bf16: a tree step rounds differently from a one-token step (GEMM shapes, split counts, key tiling),
    so a near-tied argmax may flip late in a long output; the start must agree token for token."""
    spec, plain = speculative_and_plain(gpu_bf16, prompt_ids, draft, tree)
    for s, p in zip(spec, plain):
        assert s[:16] == p[:16]


def test_sampled_chains_tested_on_the_device_give_the_host_tests_samples(gpu_fp32):
    """A sampled draft chain's SpecInfer tests on the device (backend.specinfer_rows: p made in the kernel, q kept on
    the device) give the samples of the same chains tested on the host (q and the target's rows copied,
    verify.verify_sampled in float64), fp32, n = 3: the two differ only where a uniform falls within float32's
    rounding of an acceptance ratio or a CDF boundary."""
    gpu_fp32.use_drafter("self:6", (4, 3, 1))
    prompt = "Repeat after me: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    params = SamplingParams(n=3, temperature=0.9, top_p=0.95, seed=5, max_tokens=48)
    try:
        runs = []
        for device_tests in (True, False):
            gpu_fp32.engine.drafter.device_tests = device_tests
            runs.append([s.token_ids for s in gpu_fp32.generate(prompt, params).samples])
        assert runs[0] == runs[1] and len({tuple(r) for r in runs[0]}) > 1
    finally:
        gpu_fp32.use_drafter(None)


@pytest.mark.parametrize("draft,tree", [(None, None), ("ngram", (16, 8, 4)), ("self:6", (16, 8, 4)), ("self:6", (4, 3, 1))])
def test_parallel_samples_reproducible_on_gpu(gpu_bf16, draft, tree):
    """n > 1 sampling repeats per seed: n-gram trees verified by each node's draw at its position, the draft model's trees
    and chains drawn from its q (a chain's on the device, backend.draw_rows) and verified by the SpecInfer rule (a
    tree's on the host, a chain's on the device: backend.specinfer_rows)."""
    gpu_bf16.use_drafter(draft, tree)
    prompt = "Repeat after me: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    params = SamplingParams(n=3, temperature=0.9, top_p=0.95, seed=11, max_tokens=32)
    try:
        first = [s.token_ids for s in gpu_bf16.generate(prompt, params).samples]
        assert first == [s.token_ids for s in gpu_bf16.generate(prompt, params).samples]
        assert len({tuple(f) for f in first}) > 1
    finally:
        gpu_bf16.use_drafter(None)
    assert gpu_bf16.cache.free_pages == gpu_bf16.cache.num_pages


def test_model_too_large_is_a_clear_error(default_model, monkeypatch):
    import cupy as cp

    from minispec import MinispecError

    monkeypatch.setattr(cp.cuda.runtime, "memGetInfo", lambda: (100 << 20, 80 << 30))
    with pytest.raises(MinispecError, match="GiB of GPU memory"):
        LLM(model=str(default_model), device="cuda")


def test_graph_replay_equals_eager_launches(default_model):
    """Decode and tree steps replayed from captured graphs give the eager launches' logits and tokens."""
    graphs = LLM(model=str(default_model), device="cuda")
    eager = LLM(model=str(default_model), device="cuda")
    eager.backend.use_graphs = False
    prompts = ["Rewrite in the past tense: I walk to the shop and I buy bread.", "Name three colours."]
    ids = [graphs.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    for llm in (graphs, eager):
        llm.use_drafter("ngram", (16, 12, 4))
    assert [r.token_ids for r in graphs.generate(ids, params)] == [r.token_ids for r in eager.generate(ids, params)]
    assert graphs.backend.graphs, "no step was captured"
    # a fresh batch of another size reuses nothing stale
    assert graphs.generate(ids[0], params).token_ids == eager.generate(ids[0], params).token_ids


def prefill_logits(llm, prompts):
    """float32 [B, V]: the logits of each prompt's last token, from the engine's prefill (pages released)."""
    engine = llm.engine
    seqs = [engine.new_sequence(i, 0, p, SamplingParams()) for i, p in enumerate(prompts)]
    try:
        return np.stack([logits.host()[row] for logits, row in engine.prefill(seqs)])
    finally:
        for seq in seqs:
            llm.cache.release(seq.table)


def test_prefill_replays_a_graph_up_to_its_row_limit(default_model):
    """Prefill steps of up to prefill_graph_rows rows replay a captured graph (rows padded to a power of two,
    each chunk's last row's logits): on the default model, whose layers are small, the engine's whole chunk of
    512; longer ones run eagerly (here with the limit of large models, 128). Both give the eager launches'
    logits, in a batch of prompts of several lengths too, and the graph of a bucket serves a second batch of
    other lengths."""
    from minispec.backends.cuda_backend import PREFILL_GRAPH_ROWS, SMALL_PREFILL_GRAPH_ROWS

    graphs = LLM(model=str(default_model), device="cuda")
    eager = LLM(model=str(default_model), device="cuda")
    eager.backend.use_graphs = False
    assert graphs.backend.prefill_graph_rows(graphs.model) == SMALL_PREFILL_GRAPH_ROWS
    rng = np.random.default_rng(11)
    prompt = lambda n: rng.integers(0, graphs.model.config.vocab_size, size=n).tolist()  # noqa: E731
    prefill_keys = lambda: {key[:2] for (_, key) in graphs.backend.graphs.entries if key[3]}  # noqa: E731

    def check(batch):
        expected, got = prefill_logits(eager, batch), prefill_logits(graphs, batch)
        assert np.isfinite(got).all()
        assert np.abs(got - expected).max() / np.abs(expected).max() <= 2e-2, [len(p) for p in batch]

    for batch in [[prompt(37)], [prompt(5), prompt(50)], [prompt(20), prompt(41)], [prompt(300)]]:
        check(batch)
    assert prefill_keys() == {(1, 64), (2, 64), (1, 512)}  # the third batch replayed the second's graph
    # two steps of one prefill on one graph (A + B's start, then B's rest + C: two chunks of 512 rows each):
    # the first step's last-row logits (A's) must survive the second step's replay
    check([prompt(400), prompt(400), prompt(300)])
    assert (2, 512) in prefill_keys()
    graphs.backend.prefill_graph_limit = PREFILL_GRAPH_ROWS
    check([prompt(PREFILL_GRAPH_ROWS + 70)])  # over the limit: eager
    check([prompt(100)])
    assert prefill_keys() == {(1, 64), (2, 64), (1, 512), (2, 512), (1, 128)}


@pytest.mark.parametrize("gemm", ["own", "cublas"])
def test_each_gemm_through_the_engine(default_model, prompt_ids, reference_outputs, gemm):
    """The project's own tensor-core GEMM in every layer, prefill included (or cuBLAS in every layer),
    still gives the reference tokens."""
    llm = LLM(model=str(default_model), device="cuda")
    llm.backend.gemm = gemm
    results = llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
    for result, expected_ids in zip(results, reference_outputs):
        assert result.token_ids[:16] == expected_ids[:16]


def test_fused_decode_agrees_with_layer_by_layer(default_model, prompt_ids, reference_outputs):
    """Batch-1 decode runs every layer in one persistent launch; the layer-by-layer path gives the same start."""
    fused = LLM(model=str(default_model), device="cuda")
    layered = LLM(model=str(default_model), device="cuda")
    layered.backend.fused_max_rows = 0
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    for ids, expected in zip(prompt_ids, reference_outputs):  # one prompt at a time: decode steps have one row
        a, b = fused.generate(ids, params).token_ids, layered.generate(ids, params).token_ids
        assert a[:16] == b[:16] == expected[:16]
    assert fused.backend.fused_rows(fused.model, fused.backend.prepare_plan(single_decode_plan(fused))) == 1


def single_decode_plan(llm):
    from minispec.step import StepItem, build_plan
    from minispec.tree import Tree

    table = []
    llm.cache.prepare(table, 0, 8)
    try:
        return build_plan([StepItem.tree(table, 7, Tree([5], [-1]))], llm.cache.page_size)
    finally:
        llm.cache.release(table)


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("use_graphs,fused", [(True, True), (False, True), (True, False)], ids=["graphs", "eager", "layered graphs"])
def test_decode_ahead_equals_step_by_step_on_gpu(gpu_bf16, prompt_ids, use_graphs, fused, sampled):
    """Decoding one step ahead (the next step reads the previous step's argmax, or seeded draw, on the device,
    copied into the graph's token input) gives step-by-step decoding's tokens bit for bit: same kernels, same
    inputs, the same uniforms in the same order; with the fused decode (the default model's) and layer by layer
    (large models' path)."""
    mode = dict(temperature=0.8, top_p=0.9, seed=11) if sampled else dict(temperature=0)
    params = [SamplingParams(max_tokens=40, ignore_eos=True, **mode), SamplingParams(max_tokens=25, n=2, **mode)]
    gpu_bf16.backend.use_graphs = use_graphs
    gpu_bf16.backend.fused_max_rows = None if fused else 0
    try:
        ahead = [[s.token_ids for s in r.samples] for r in gpu_bf16.generate(prompt_ids[:2], params)]
        gpu_bf16.engine.decode_ahead_enabled = False
        step = [[s.token_ids for s in r.samples] for r in gpu_bf16.generate(prompt_ids[:2], params)]
    finally:
        gpu_bf16.engine.decode_ahead_enabled = True
        gpu_bf16.backend.use_graphs = True
        gpu_bf16.backend.fused_max_rows = None
    assert ahead == step
    assert gpu_bf16.cache.free_pages == gpu_bf16.cache.num_pages


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prefix_caching_on_gpu(default_model, gpu_fp32, gpu_bf16, dtype, monkeypatch):
    """A chat's second turn starts from the first turn's kept pages (its prefill begins past them) and agrees with
    a run without the cache: the kept K/V were written by other launch shapes (decode steps, another prefill
    bucket), so a near-tied argmax may flip late; the start must agree token for token."""
    from minispec.engine import Engine

    starts, prefill = [], Engine.prefill
    monkeypatch.setattr(Engine, "prefill", lambda self, seqs: (starts.append(seqs[0].L), prefill(self, seqs))[1])
    fresh = gpu_fp32 if dtype == "float32" else gpu_bf16
    cached = LLM(model=str(default_model), device="cuda", dtype=dtype, prefix_caching=True)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    messages = [{"role": "user", "content": "Name three colours."}]
    first = cached.chat(messages, params)
    assert first.token_ids == fresh.chat(messages, params).token_ids and starts[0] == 0
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And three more?"}]
    ids = cached.chat_prompt(messages)
    starts.clear()
    second = cached.generate(ids, params).token_ids
    assert starts[0] >= 16 * 2, starts  # the conversation's first pages were not prefilled again
    assert second[:16] == fresh.generate(ids, params).token_ids[:16]
    assert cached.cache.free_pages == cached.cache.num_pages


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("draft", [None, "ngram"])
@pytest.mark.parametrize("pages", [14, 9])
def test_a_pool_smaller_than_the_batch_on_gpu(default_model, gpu_fp32, gpu_bf16, prompt_ids, draft, pages, dtype):
    """The three prompts, 64 new tokens each, on 14 pages of 16 (the prompts fit together, the whole batch does not:
    sequences are preempted and recomputed) and on 9 (the prompts wait to be prefilled too): the batch goes through
    with the tokens of a large pool, and every page comes back; in fp32 and in bf16 (the recomputed K/V are a prefill's
    products, the first ones the decode steps': on these prompts they give the same tokens in both)."""
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    expected = [r.token_ids for r in (gpu_fp32 if dtype == "float32" else gpu_bf16).generate(prompt_ids, params)]
    small = LLM(model=str(default_model), device="cuda", dtype=dtype, kv_cache_tokens=pages * 16, draft=draft)
    results = small.generate(prompt_ids, params)
    assert [r.token_ids for r in results] == expected
    assert sum(r.stats.preemptions for r in results) > 0 or pages == 9
    assert small.cache.free_pages == small.cache.num_pages


@pytest.mark.parametrize("draft", [None, "ngram"])
def test_stream_batch_on_gpu(gpu_bf16, prompt_ids, draft):
    """LLM.stream_batch on the GPU: the three prompts decoded one step ahead on the device (no drafter), and bench's
    rewrite prompt alone with the n-gram drafter (tree steps drafted on the device; 3.9 tokens a step on the CPU): each
    sample's pieces, joined, are generate's text."""
    from minispec.bench import SPEC_PROMPTS

    rewrite = gpu_bf16.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["rewrite"]}])
    prompts = prompt_ids if draft is None else rewrite
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    gpu_bf16.use_drafter(draft)
    try:
        results = gpu_bf16.generate(prompts, params)
        expected = {(i, 0): r.text for i, r in enumerate(results if draft is None else [results])}
        streamed = {}
        for prompt, sample, piece in gpu_bf16.stream_batch(prompts, params):
            streamed[prompt, sample] = streamed.get((prompt, sample), "") + piece
        assert streamed == expected
        assert draft is None or results.stats.tokens_per_step > 1.5  # (the drafter's tree steps ran)
    finally:
        gpu_bf16.use_drafter(None)
    assert gpu_bf16.cache.free_pages == gpu_bf16.cache.num_pages
