"""Speculative decoding: every drafter and tree shape gives plain greedy's tokens; pages always come back."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from minispec import LLM, MinispecError, SamplingParams
from minispec.drafters import NoDrafter
from minispec.tree import Tree

PROMPTS = [
    "Summarise: The committee met on Tuesday to discuss the new budget. The committee agreed that the budget for "
    "parks should rise, and the committee asked the mayor to publish the budget for parks by Friday.",
    "Write a short poem about rain.",
    "Extract the names from this list: Alice Smith, Bob Jones, Carol White, Dan Brown. Names:",
]


class OracleTreeDrafter(NoDrafter):
    """Random tree shapes whose nodes follow the known greedy continuation with probability 0.6."""

    def __init__(self, expected: list[list[int]], vocab: int, seed: int = 0):
        self.expected, self.vocab, self.rng = expected, vocab, np.random.default_rng(seed)

    def propose(self, seqs, budgets):
        trees = []
        for seq, budget in zip(seqs, budgets):
            truth = self.expected[seq.index]
            T = int(self.rng.integers(1, min(24, budget) + 1))
            tokens, parents, on_path = [seq.tokens[seq.L]], [-1], [True]
            for i in range(1, T):
                parent = int(self.rng.integers(0, i))
                depth = 0
                node = parent
                while node > 0:
                    node, depth = parents[node], depth + 1
                position = seq.L + depth + 1
                correct = on_path[parent] and position < len(truth) and self.rng.random() < 0.6
                tokens.append(truth[position] if correct else int(self.rng.integers(0, self.vocab)))
                parents.append(parent)
                on_path.append(bool(correct))
            trees.append(Tree(tokens, parents))
        return trees


@pytest.fixture(scope="module")
def prompt_ids(default_llm):
    return [default_llm.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS]


@pytest.fixture(scope="module")
def plain_outputs(default_llm, prompt_ids):
    default_llm.use_drafter(None)
    return [r.token_ids for r in default_llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))]


GREEDY = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "draft,tree",
    [("ngram", (1, 1, 1)), ("ngram", (8, 7, 1)), ("ngram", (16, 6, 4)), ("ngram", (24, 2, 12)), ("ngram", (32, 24, 2)), ("self:6", (12, 4, 3)), ("self:10", (6, 5, 1))],
    ids=["single-node", "chain", "tree", "wide", "deep", "self-tree", "self-chain"],
)
def test_speculative_greedy_equals_plain_greedy(default_llm, prompt_ids, plain_outputs, draft, tree):
    default_llm.use_drafter(draft, tree)
    try:
        results = default_llm.generate(prompt_ids, GREEDY)
    finally:
        default_llm.use_drafter(None)
    for result, expected in zip(results, plain_outputs):
        assert len(result.token_ids) == 64
        assert result.token_ids == expected
    assert default_llm.cache.free_pages == default_llm.cache.num_pages
    if draft == "ngram" and tree[0] > 1:
        # the summary prompt repeats itself (the greedy gate leaves it fewer trees: 1.17 tokens a step at the default)
        assert results[0].stats.tokens_per_step > 1.1 and max(results[0].stats.accepted_lengths) >= 3


@pytest.mark.slow
def test_random_trees_with_partial_matches(default_llm, prompt_ids, plain_outputs):
    expected = [p + o for p, o in zip(prompt_ids, plain_outputs)]
    default_llm.engine.drafter = OracleTreeDrafter(expected, default_llm.model.config.vocab_size)
    try:
        results = default_llm.generate(prompt_ids, GREEDY)
    finally:
        default_llm.use_drafter(None)
    assert [r.token_ids for r in results] == plain_outputs
    assert max(max(r.stats.accepted_lengths) for r in results) >= 3
    assert default_llm.cache.free_pages == default_llm.cache.num_pages


@pytest.mark.slow
def test_tree_steps_give_plain_decodings_text(default_llm, prompt_ids, plain_outputs):
    """A tree step's text is decoded after the next step is launched (Engine.take_tokens, emit_text): the streamed
    pieces and the final text are plain decoding's; with a stop string the text decides as each token comes, and the
    tokens and text are plain decoding's too."""
    ids = prompt_ids[0]
    plain = default_llm.generate(ids, GREEDY)
    stop = plain.text[len(plain.text) // 2 : len(plain.text) // 2 + 4]
    stopping = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True, stop=[stop])
    plain_stopped = default_llm.generate(ids, stopping)
    default_llm.engine.drafter = OracleTreeDrafter([ids + plain_outputs[0]], default_llm.model.config.vocab_size)
    try:
        pieces = list(default_llm.stream(ids, GREEDY))
        tree = default_llm.generate(ids, GREEDY)
        tree_stopped = default_llm.generate(ids, stopping)
    finally:
        default_llm.use_drafter(None)
    assert tree.token_ids == plain.token_ids and max(tree.stats.accepted_lengths) >= 3
    assert "".join(pieces) == tree.text == plain.text
    assert plain_stopped.finish_reason == "stop" and len(plain_stopped.text) < len(plain.text)
    assert (tree_stopped.text, tree_stopped.token_ids, tree_stopped.finish_reason) == (
        plain_stopped.text, plain_stopped.token_ids, plain_stopped.finish_reason)


@pytest.mark.parametrize("cycle", [0, 7], ids=["random", "looping"])
@pytest.mark.parametrize("draft", [None, "ngram", "self:1"])
def test_tiny_model_speculation_and_page_sizes(tmp_path, draft, cycle):
    """Speculative greedy decoding equals plain decoding at page sizes 1, 3 and 16; the looping model's n-gram
    trees are accepted whole or in part, so accepted paths cross page boundaries (conftest: make_tiny_checkpoint)."""
    from .conftest import make_tiny_checkpoint

    directory = make_tiny_checkpoint(tmp_path / "m", layers=3, cycle=cycle)
    outputs = []
    for page_size in (1, 3, 16):
        llm = LLM(model=str(directory), device="cpu", page_size=page_size, draft=draft, tree=(10, 4, 3))
        prompts = ["abcabcabcabc", "x", "the quick brown fox jumps over the lazy dog " * 3]
        results = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        outputs.append([r.token_ids for r in results])
        assert llm.cache.free_pages == llm.cache.num_pages
        if cycle and draft == "ngram":  # paths of several tokens accepted in every prompt
            assert all(max(r.stats.accepted_lengths) >= 3 for r in results), [r.stats.accepted_lengths for r in results]
    plain = LLM(model=str(directory), device="cpu")
    expected = [r.token_ids for r in plain.generate(prompts, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))]
    assert all(o == expected for o in outputs)


@pytest.mark.parametrize("draft", [None, "ngram", "self:1"])
def test_a_stream_never_shows_part_of_a_stop_string(looping_model, draft):
    """Streamed pieces hold back a tail of the text that may begin a stop string (Engine.emit_text): they join into
    generate's text, which ends before the stop string; a tail that turns out to begin none (the stop string's last
    character never comes) follows later, or at the length limit."""
    llm = LLM(model=str(looping_model), device="cpu", draft=draft, page_size=3)
    prompt = "abcabcabc"
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)).samples[0].text
    absent = next(c for c in "#%&@~^`|" if c not in full)
    cases = 0
    for a in range(0, len(full) - 3, 4):
        for stop in (full[a : a + 3], full[a : a + 2] + absent):  # a stop string the text reaches, one it never does
            params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop])
            result = llm.generate(prompt, params).samples[0]
            pieces = list(llm.stream(prompt, params))
            expected = full[: full.index(stop)] if stop in full else full
            assert "".join(pieces) == result.text == expected, (stop, pieces)
            assert result.finish_reason == ("stop" if stop in full else "length")
            cases += 1
    assert cases >= 10


@pytest.mark.parametrize("draft", [None, "ngram"])
def test_the_text_is_the_decoded_output_when_a_limit_cuts_a_character(tiny_model, draft):
    """The tiny model's byte-level tokens make characters of several tokens, which the stream decoder holds back
    until they are whole: where max_tokens or a stop token ends the output inside one, the text still ends as the
    tokenizer's decode of the output does (U+FFFD for the incomplete bytes), streamed or not."""
    llm = LLM(model=str(tiny_model), device="cpu", draft=draft)
    cut = 0
    for max_tokens in range(1, 30, 2):
        params = SamplingParams(n=2, temperature=1.0, seed=max_tokens, max_tokens=max_tokens)
        result = llm.generate("abc", params)
        for sample in result.samples:
            assert sample.text == llm.tokenizer.decode(sample.token_ids), (max_tokens, sample.token_ids)
            cut += sample.text.endswith("\ufffd")
        assert "".join(llm.stream("abc", params)) == result.samples[0].text
    assert cut >= 3  # outputs that end inside a character


def test_separate_draft_checkpoint(tmp_path):
    """A smaller checkpoint with the same tokenizer drafts for the target: greedy output unchanged."""
    from .conftest import make_tiny_checkpoint

    target = make_tiny_checkpoint(tmp_path / "target", layers=3, seed=1)
    draft = make_tiny_checkpoint(tmp_path / "draft", layers=1, hidden=32, heads=2, kv_heads=1, intermediate=48, seed=2)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    prompts = ["abcabcabc", "hello hello hello world"]
    expected = [r.token_ids for r in LLM(model=str(target), device="cpu").generate(prompts, params)]
    llm = LLM(model=str(target), device="cpu", draft=str(draft), tree=(8, 3, 3))
    assert [r.token_ids for r in llm.generate(prompts, params)] == expected
    assert llm.cache.free_pages == llm.cache.num_pages
    assert llm.engine.drafter.cache.free_pages == llm.engine.drafter.cache.num_pages


def test_parallel_samples_share_the_prompt_and_reproduce_per_seed(tiny_model):
    llm = LLM(model=str(tiny_model), device="cpu", draft="ngram", tree=(8, 4, 2))
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=25, ignore_eos=True)
    prompt = "shared prompt " * 6  # 84 tokens: 5 full pages + a partial one
    first = llm.generate(prompt, params)
    assert len(first.samples) == 4
    assert len({tuple(s.token_ids) for s in first.samples}) > 1  # samples differ from each other
    again = llm.generate(prompt, params)
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in first.samples]
    assert llm.cache.free_pages == llm.cache.num_pages
    # sampled speculation is lossless in distribution, not draw for draw: plain decoding has its own draws
    plain = LLM(model=str(tiny_model), device="cpu")
    assert [s.token_ids for s in plain.generate(prompt, params).samples] == [s.token_ids for s in plain.generate(prompt, params).samples]


@pytest.mark.parametrize("draft", [None, "ngram"])
def test_stream_batch_streams_every_sample_of_every_prompt(looping_model, draft):
    """LLM.stream_batch: a batch of greedy (with a stop string), sampled (2 samples) and length-cut prompts streams
    (prompt, sample, piece) events whose pieces, joined, are generate's texts of the same batch, for every sample of
    every prompt; the prompts' pieces interleave (one batch, not one prompt after another)."""
    llm = LLM(model=str(looping_model), device="cpu", draft=draft)
    prompts = ["abcabc", [5, 9, 14, 5, 9, 14, 5], "stream me"]
    greedy = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)).text
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]  # a stop string its text meets midway
    params = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]),
              SamplingParams(temperature=0.9, seed=3, n=2, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=7, ignore_eos=True)]
    expected = {(i, j): sample.text for i, result in enumerate(llm.generate(prompts, params)) for j, sample in enumerate(result.samples)}
    events = list(llm.stream_batch(prompts, params))
    streamed = {}
    for prompt, sample, piece in events:
        streamed[prompt, sample] = streamed.get((prompt, sample), "") + piece
    assert streamed == expected and len(expected) == 4 and len(expected[0, 0]) < len(greedy)  # (the stop string cut it)
    order = [prompt for prompt, _, _ in events]
    assert order != sorted(order)
    assert llm.cache.free_pages == llm.cache.num_pages


def test_prefill_pages_are_shared_between_samples(tiny_model):
    llm = LLM(model=str(tiny_model), device="cpu")
    prompt = list(range(3, 3 + 64))  # exactly 4 pages
    events = llm.engine.run([prompt], [SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=2, ignore_eos=True)])
    seq, _ = next(events)
    shared = [p for p in seq.table[:4] if llm.cache.refcount[p] == 3]
    assert len(shared) == 4
    events.close()
    assert llm.cache.free_pages == llm.cache.num_pages


def test_bad_speculation_settings_are_clear_errors(tiny_model, tmp_path):
    from .conftest import make_tiny_checkpoint

    with pytest.raises(MinispecError, match="K must be in 1..1"):
        LLM(model=str(tiny_model), device="cpu", draft="self:2")
    with pytest.raises(MinispecError, match="T must be in 1..64"):
        LLM(model=str(tiny_model), device="cpu", draft="ngram", tree=(65, 8, 4))
    with pytest.raises(MinispecError, match="n must be"):
        SamplingParams(n=0)
    other = make_tiny_checkpoint(tmp_path / "other")
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace('"a"', '"A_"', 1))
    with pytest.raises(MinispecError, match="different tokenizer"):
        LLM(model=str(tiny_model), device="cpu", draft=str(other))
    with pytest.raises(MinispecError, match="'n-gram' is not 'ngram', 'self:K' or a usable draft model: model 'n-gram' not found"):
        LLM(model=str(tiny_model), device="cpu", draft="n-gram")


def test_running_out_of_pages_is_an_error_and_frees_everything(tiny_model):
    llm = LLM(model=str(tiny_model), device="cpu", kv_cache_tokens=64, page_size=16, draft="ngram")
    with pytest.raises(MinispecError, match="KV cache is full"):
        llm.generate(["a" * 30, "b" * 30], SamplingParams(temperature=0, max_tokens=60, ignore_eos=True))
    assert llm.cache.free_pages == llm.cache.num_pages
    result = llm.generate("c" * 10, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    assert len(result.token_ids) == 20
    # streamed, every step a tree that copies the greedy continuation: every token the sequence took before the
    # error has its text out (a tree step's text goes out after the next launch, or before the error that stops it)
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    prompt = llm._encode("a" * 30)
    truth = prompt + LLM(model=str(tiny_model), device="cpu", page_size=16).generate(prompt, params).token_ids

    class Copy(NoDrafter):  # three-node chains of the greedy continuation, no step decoded ahead
        host_only = False

        def propose(self, seqs, budgets):
            return [Tree(truth[seq.L : seq.L + 3], [-1, 0, 1]) for seq in seqs]

    llm.engine.drafter = Copy()
    pieces, seq = [], None
    with pytest.raises(MinispecError, match="KV cache is full"):
        for seq, piece in llm.engine.run([prompt], [params]):
            pieces.append(piece)
    decoder = llm.tokenizer.stream_decoder()
    assert max(seq.stats.accepted_lengths) == 3 and len(seq.output) > 10
    assert "".join(pieces) == "".join(decoder.step(t) or "" for t in seq.output)
    assert llm.cache.free_pages == llm.cache.num_pages


def test_a_pool_too_small_for_one_sequence_streams_every_token_before_the_error(tiny_model):
    """A drafter that keeps to its budgets (Engine.tree_budgets) on a pool too small for the one request: the full
    pool shows in the loop's scheduling, before any step's prepare, and the text of every token taken so far (the
    last tree step's included) is out before the error; every page comes back."""
    llm = LLM(model=str(tiny_model), device="cpu", kv_cache_tokens=64, page_size=16)
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    prompt = llm._encode("a" * 30)
    truth = prompt + LLM(model=str(tiny_model), device="cpu", page_size=16).generate(prompt, params).token_ids

    class Copy(NoDrafter):  # chains of the greedy continuation, cut to the budget; no step decoded ahead
        host_only = False

        def propose(self, seqs, budgets):
            return [Tree(truth[seq.L : seq.L + min(3, b)], [-1, 0, 1][: min(3, b)]) for seq, b in zip(seqs, budgets)]

    llm.engine.drafter = Copy()
    texted, emit_text = [], llm.engine.emit_text  # every token whose text went out (or is held back for the next)

    def spy(due):
        texted.extend(t for _, tokens in due for t in tokens)
        return emit_text(due)

    llm.engine.emit_text = spy
    pieces, seq = [], None
    with pytest.raises(MinispecError, match="one sequence needs more pages than the pool holds"):
        for seq, piece in llm.engine.run([prompt], [params]):
            pieces.append(piece)
    decoder = llm.tokenizer.stream_decoder()
    assert len(seq.output) > 10 and texted == seq.output
    assert "".join(pieces) == "".join(decoder.step(t) or "" for t in seq.output)
    assert llm.cache.free_pages == llm.cache.num_pages


def stopping_requests(sampled: bool, seed: int, budget: int, stop: str) -> list[SamplingParams]:
    """Three requests that end three ways: a token budget, a stop string, the context limit (two samples
    sharing pages); greedy or seeded sampling."""
    mode = dict(temperature=0.9, top_k=40, top_p=0.95, seed=seed) if sampled else dict(temperature=0)
    return [
        SamplingParams(max_tokens=budget, ignore_eos=True, **mode),
        SamplingParams(max_tokens=budget // 3, stop=[stop], **mode),
        SamplingParams(max_tokens=500, ignore_eos=True, n=2, **mode),  # runs into max_model_len
    ]


def spy_on_steps(llm, kinds: list) -> None:
    """Record each target forward: "ahead" (its tokens come from the previous step on the backend), "tree"
    (more rows than sequences), "one", or "device" (a step drafted on the device, Engine.speculate_on_device)."""
    forward, replay = llm.model.forward, llm.model.backend.replay_packed

    def spy(plan, cache, tokens=None):
        kinds.append("ahead" if tokens is not None else ("tree" if plan.num_tokens > plan.batch_size else "one"))
        return forward(plan, cache, tokens)

    def spy_replay(*args):
        kinds.append("device")
        return replay(*args)

    llm.model.forward, llm.model.backend.replay_packed = spy, spy_replay


def rerun_step_by_step(llm, prompts, params, kinds: list, ahead):
    """The same requests again with decoding ahead off: no step decodes ahead, the outputs are `ahead`'s, and every
    page is given back after each run. Returns the step-by-step results."""
    assert llm.cache.free_pages == llm.cache.num_pages
    llm.engine.decode_ahead_enabled = False
    kinds.clear()
    step = llm.generate(prompts, params)
    assert "ahead" not in kinds
    assert_same_outputs(ahead, step)
    assert llm.cache.free_pages == llm.cache.num_pages
    return step


def assert_same_outputs(results, others) -> None:
    for a, b in zip(results, others):
        assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
        assert [(s.finish_reason, s.text) for s in a.samples] == [(s.finish_reason, s.text) for s in b.samples]
        assert a.stats.emitted == b.stats.emitted
    assert [s.finish_reason for s in results[2].samples] == ["length", "length"]
    assert len(results[2].samples[0].token_ids) < 500  # stopped by the context limit, not by max_tokens


@pytest.mark.parametrize("sampled", [False, True])
def test_decode_ahead_equals_step_by_step(tiny_model, sampled):
    """Decoding without a drafter runs one step ahead of the host: each step takes the previous step's argmax
    (or its seeded draw) as a backend array. It must emit what step-by-step decoding emits, stop where that
    stops (token budget, stop string, context limit, with samples sharing pages) and give every page back."""
    llm = LLM(model=str(tiny_model), device="cpu", max_model_len=100)
    prompts = ["shared prompt " * 6, "a b c", "x" * 30]
    params, kinds = stopping_requests(sampled, seed=7, budget=30, stop="a"), []
    spy_on_steps(llm, kinds)
    ahead = llm.generate(prompts, params)
    assert kinds.count("ahead") > 50  # steps did take their tokens from the previous step's argmax
    assert "one" not in kinds  # the first step too: its roots were the prefill's tokens, left on the backend
    step = rerun_step_by_step(llm, prompts, params, kinds, ahead)
    assert [r.stats.steps for r in ahead] == [r.stats.steps for r in step]


@pytest.mark.parametrize("sampled", [False, True])
def test_one_sequence_decodes_ahead_from_the_prefill(tiny_model, sampled):
    """A sequence's first step is launched behind the prefill, its root the first token still on the backend
    (Engine.decode_ahead's `first`; batches: test_decode_ahead_equals_step_by_step). The tokens, texts, stops and step counts of step-by-step decoding at every edge:
    a budget of one token (the step ahead runs past the end) or two, a stop string, and the context limit reached by
    the first token itself or by the one after it."""
    llm = LLM(model=str(tiny_model), device="cpu", max_model_len=40)
    mode = dict(temperature=0.9, top_k=40, seed=5) if sampled else dict(temperature=0)
    text = llm.tokenizer.encode("shared prompt " * 10)
    prompt = text[:12]
    free = llm.generate(prompt, SamplingParams(max_tokens=20, ignore_eos=True, **mode)).text
    cases = [(prompt, SamplingParams(max_tokens=1, **mode)), (prompt, SamplingParams(max_tokens=2, ignore_eos=True, **mode)),
             (prompt, SamplingParams(max_tokens=20, stop=[free[3:6]], **mode)),
             (prompt, SamplingParams(max_tokens=100, ignore_eos=True, **mode)),
             (text[:39], SamplingParams(max_tokens=100, ignore_eos=True, **mode)),  # the first token fills the context
             (text[:38], SamplingParams(max_tokens=100, ignore_eos=True, **mode))]
    kinds = []
    spy_on_steps(llm, kinds)
    for ids, params in cases:
        llm.engine.decode_ahead_enabled = True
        kinds.clear()
        ahead = llm.generate(ids, params)
        assert "one" not in kinds[1:]  # after the prefill, every step took its root from the backend
        llm.engine.decode_ahead_enabled = False
        step = llm.generate(ids, params)
        assert ahead.token_ids == step.token_ids and ahead.text == step.text, params
        assert ahead.samples[0].finish_reason == step.samples[0].finish_reason
        assert (ahead.stats.steps, ahead.stats.emitted) == (step.stats.steps, step.stats.emitted)
        assert llm.cache.free_pages == llm.cache.num_pages
    assert len(ahead.token_ids) == 2 and ahead.samples[0].finish_reason == "length"


@pytest.mark.parametrize("looping", [False, True], ids=["random", "looping"])
@pytest.mark.parametrize("gate", [True, False], ids=["gate", "no gate"])
@pytest.mark.parametrize("sampled", [False, True])
def test_ngram_decodes_ahead_between_drafts(tiny_model, looping_model, sampled, gate, looping):
    """With the n-gram drafter, stretches where it finds no match run one step ahead of the host, and the
    drafter is asked after each token: the tokens, stops and texts of step-by-step speculation, greedy or sampled
    (each token drawn at its position, whatever step drew it: verify.py). With the gate (NGRAM_PAYS,
    NGRAM_PAYS_SAMPLED) and without it: the tiny random model's drafts mostly fail, so the gate leaves few trees;
    the looping model's are accepted whole or in part, greedy and sampled."""
    model = looping_model if looping else tiny_model
    llm = LLM(model=str(model), device="cpu", draft="ngram", tree=(8, 4, 2), max_model_len=120)
    if not gate:
        llm.engine.drafter.pays_rate = llm.engine.drafter.pays_sampled = 0.0  # every sequence's tree steps "pay"
    prompts = ["abcabcabc " * 3 + "q", "zyx", "the cat sat on the mat, the cat sat on the"]
    params, kinds = stopping_requests(sampled, seed=3, budget=40, stop="b"), []
    spy_on_steps(llm, kinds)
    ahead = llm.generate(prompts, params)
    # both kinds ran (the looping model's trees leave few steps to decode ahead)
    trees = kinds.count("tree") + kinds.count("device")
    assert kinds.count("ahead") > (2 if looping else 10) and trees > 1
    if looping:  # drafts accepted: paths of several tokens
        assert max(max(s.stats.accepted_lengths) for r in ahead for s in r.samples) >= 4
    rerun_step_by_step(llm, prompts, params, kinds, ahead)


def test_decode_ahead_needs_no_page_that_step_by_step_does_not(tiny_model):
    """A stop string ends a sequence at a token whose step-ahead would open a new page; with a pool that holds
    exactly what step-by-step decoding needs, decoding ahead must not fail for want of that page."""
    llm = LLM(model=str(tiny_model), device="cpu")
    llm.engine.decode_ahead_enabled = False
    prompt = llm.tokenizer.encode("shared prompt " * 2)
    P, L = 16, len(prompt)
    output = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)).token_ids
    k = next(k for k in range(1, 40) if (L + k) % P == 0)  # token k is read while the step at L + k runs ahead
    decoder = llm.tokenizer.stream_decoder()
    stop = "".join(decoder.step(t) or "" for t in output[: k + 1])  # the text through token k: it stops there
    params = SamplingParams(temperature=0, max_tokens=40, stop=[stop])
    results = []
    for ahead in (False, True):
        small = LLM(model=str(tiny_model), device="cpu", kv_cache_tokens=L + k, page_size=P)
        small.engine.decode_ahead_enabled = ahead
        results.append(small.generate(prompt, params))
        assert small.cache.free_pages == small.cache.num_pages
    assert results[0].samples[0].finish_reason == results[1].samples[0].finish_reason == "stop"
    assert results[0].token_ids == results[1].token_ids == output[: k + 1]  # the stop trims the text, not the tokens


@pytest.mark.parametrize("device", [True, False], ids=["device drafting", "host loop"])
def test_sampled_ngram_speculation_emits_plain_samplings_tokens(looping_model, device):
    """Sampled verification of deterministic candidates draws each node's token at its position (verify.py), so
    n-gram speculation emits plain sampled decoding's tokens, seed for seed and sample for sample: in the host's
    loop (n = 4: a batch) and in stretches drafted on the device (n = 1; here the NumPy backend's reference of
    its kernels). The prompt ends in two turns of the looping model's cycle, so its trees draft the cycle; at
    temperature 2 and top-k 3 they are accepted whole, in part or refused."""
    plain = LLM(model=str(looping_model), device="cpu")
    spec = LLM(model=str(looping_model), device="cpu", draft="ngram", tree=(8, 4, 2))
    spec.engine.drafter.pays_sampled = 0.0  # every tree step "pays": trees wherever the drafter matches
    spec.engine.device_drafting_enabled = device
    kinds, accepted = [], Counter()
    spy_on_steps(spec, kinds)
    start = plain.tokenizer.encode("ab")
    prompt = start + plain.generate(start, SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)).token_ids
    for seed in range(4):
        params = SamplingParams(n=1 if device else 4, temperature=2.0, top_k=3, seed=seed, max_tokens=24, ignore_eos=True)
        expected = plain.generate(prompt, params)
        got = spec.generate(prompt, params)
        assert [s.token_ids for s in got.samples] == [s.token_ids for s in expected.samples]
        accepted.update(got.stats.accepted_lengths)
    assert kinds.count("device" if device else "tree") > 10
    assert accepted[1] > 5 and sum(v for k, v in accepted.items() if k >= 3) > 3, accepted  # drafts taken and refused


@pytest.mark.parametrize("tree", [(8, 4, 2), (4, 3, 1)], ids=["tree", "chain"])
def test_sampled_draft_model_speculation_draws_from_plain_samplings_distribution(looping_model, monkeypatch, tree):
    """End to end, lossless: the first three tokens of 1,500 samples with a draft model's trees verified follow
    the distribution of plain sampling (conftest.sampled_speculation_chi2). The prompt ends in two turns of the
    looping model's cycle, so its trees draft the cycle; at temperature 5 and top-k 3 they are accepted whole,
    in part or refused. The draft model's candidates (the target's first layer) are drawn from its q (the
    SpecInfer rule, verify.verify_sampled, which these trees reach); a residual not reduced by q after a refusal
    took the statistic from ~6 to 245. (n-gram trees: the tokens themselves, the test above.) A chain's nodes are
    drawn by backend.draw_rows with q kept beside them (ModelDrafter.propose_chains), and tested on the backend
    (backend.specinfer_rows, read by verify.verify_tested)."""
    from minispec import verify as verification

    from .conftest import sampled_speculation_chi2

    specinfer = []  # whether each tree the rule saw was drawn from q
    rule = "verify_tested" if tree[2] == 1 else "verify_sampled"
    checked = getattr(verification, rule)
    monkeypatch.setattr(verification, rule, lambda tree, *args: specinfer.append(tree.sampled) or checked(tree, *args))
    plain = LLM(model=str(looping_model), device="cpu", kv_cache_tokens=1 << 15)
    spec = LLM(model=str(looping_model), device="cpu", draft="self:1", tree=tree, kv_cache_tokens=1 << 15)
    chi2, df, accepted = sampled_speculation_chi2(plain, spec)
    assert sum(specinfer) > 100 and all(specinfer)
    assert accepted[1] > 100 and sum(v for k, v in accepted.items() if k >= 3) > 50, accepted  # drafts taken and refused
    assert chi2 < df + 5 * np.sqrt(2 * df), (chi2, df)  # ~4 standard deviations over the mean of chi2(df)


@pytest.mark.parametrize("page_size", [1, 16])
def test_draft_model_chains_wait_once_a_proposal(looping_model, monkeypatch, page_size):
    """A width-1 budget of greedy sequences proposes its chains with one wait (ModelDrafter.propose_chains): the
    levels' ids stay on the backend as the next level's tokens and come to the host once. The chains are the
    level-by-level proposal's (the first proposals of a batch, compared exactly), the outputs plain greedy's, and
    the nodes a chain's levels fed are not fed again: after the first proposal a level 0 feeds at most the last
    accepted node and the bonus token. Budgets near the context limit cut the chains short."""
    from minispec import drafters

    prompts = [[3, 9, 4, 1, 7], [11, 2, 8, 2, 8, 2, 30, 5, 6]]
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)  # (both run to the context limit)
    llm = LLM(model=str(looping_model), device="cpu", page_size=page_size, max_model_len=50, draft="self:1", tree=(6, 5, 1))
    drafter = llm.engine.drafter
    proposals, feeds, waits, caps = [], [], [], []  # per proposal: the trees, level 0's tokens per sequence, host reads
    propose, forward, to_host = drafters.ModelDrafter.propose, drafter.model.forward, llm.backend.to_host

    def spy_propose(self, seqs, budgets):
        feeds.append(None), waits.append(0), caps.append([min(6, b) for b in budgets])
        trees = propose(self, seqs, budgets)
        proposals.append([(t.token_list, t.parents.tolist()) for t in trees])
        return trees

    def spy_forward(plan, cache, tokens=None):
        if cache is drafter.cache and feeds[-1] is None:
            feeds[-1] = np.diff(plan.cu_q).tolist()
        return forward(plan, cache, tokens)

    def spy_host(array):
        waits[-1] += 1
        return to_host(array)

    monkeypatch.setattr(drafters.ModelDrafter, "propose", spy_propose)
    monkeypatch.setattr(drafter.model, "forward", spy_forward)
    monkeypatch.setattr(llm.backend, "to_host", spy_host)
    chained = llm.generate(prompts, params)
    chain_runs = (list(proposals), list(feeds), list(waits), list(caps))
    proposals.clear(), feeds.clear(), waits.clear()
    drafter.device_chains = False
    by_level = llm.generate(prompts, params)
    llm.use_drafter(None)
    plain = llm.generate(prompts, params)
    for run in (chained, by_level):
        assert [r.token_ids for r in run] == [r.token_ids for r in plain]
    trees, fed, waited, capped = chain_runs
    assert trees[0] == proposals[0]
    assert [[len(t[0]) for t in step] for step in trees] == capped and min(map(min, capped)) < 6  # full chains, or cut
    assert all(t[1] == list(range(-1, len(t[0]) - 1)) for step in trees for t in step)
    assert waited == [1] * len(trees)
    assert all(n <= 2 for step in fed[1:] for n in step) and max(n for step in feeds[1:] for n in step) > 2
    assert max(max(r.stats.accepted_lengths) for r in chained) >= 4
    assert llm.cache.free_pages == llm.cache.num_pages and drafter.cache.free_pages == drafter.cache.num_pages


def test_sampled_draft_chains_draw_what_the_level_by_level_proposal_draws(looping_model, monkeypatch):
    """Sampled chains proposed with one wait (ModelDrafter.propose_chains) draw each node from q at the uniform the
    level-by-level proposal takes from the sequence's generator, with q kept for SpecInfer's rule
    (backend.draw_rows) on the backend, where the target tests them (Tree.q_backend): the same trees, tokens and q,
    so the same samples; a seed repeats them."""
    from minispec import drafters

    llm = LLM(model=str(looping_model), device="cpu", draft="self:1", tree=(4, 3, 1))
    params = SamplingParams(n=3, temperature=1.5, top_k=5, seed=7, max_tokens=30, ignore_eos=True)
    trees, propose = [], drafters.ModelDrafter.propose

    def spy(self, seqs, budgets):
        proposed = propose(self, seqs, budgets)
        trees.append(proposed)
        return proposed

    monkeypatch.setattr(drafters.ModelDrafter, "propose", spy)
    runs = []
    for chains in (True, False, True):
        llm.engine.drafter.device_chains = chains
        trees.clear()
        runs.append(([s.token_ids for s in llm.generate("abcabc", params).samples], list(trees)))
    (chained, chain_trees), (by_level, level_trees), (again, _) = runs
    assert chained == by_level == again and len({tuple(s) for s in chained}) > 1
    assert len(chain_trees) == len(level_trees)
    # (after the first step the chain keeps the K/V its levels wrote where the level-by-level proposal feeds the
    # accepted tokens again as a chunk: the draft's float32 rows then differ in the last places)
    for step, (step_a, step_b) in enumerate(zip(chain_trees, level_trees)):
        for a, b in zip(step_a, step_b):
            assert a.sampled and b.sampled and a.token_list == b.token_list and a.parents.tolist() == b.parents.tolist()
            assert a.q is None and b.q[-1] is None
            Q, rows = a.q_backend  # (node k's q: Q[rows[k]], on the backend: the target tests it there)
            assert len(rows) == len(a) - 1
            for j, y in zip(rows, b.q[:-1]):
                assert np.allclose(Q[j] / Q[j].sum(), y, rtol=1e-12 if step == 0 else 1e-4, atol=0)
    assert max(len(t) for step in chain_trees for t in step) == 4
    assert llm.cache.free_pages == llm.cache.num_pages


def test_sampled_draft_chains_cut_by_the_context_limit(looping_model):
    """Sampled chains of two sequences whose budgets the context limit cuts, the first one's sooner (the longer
    prompt first): a level after the first sequence's chain ended draws from the rows of the sequences it fed,
    the same samples as the level-by-level proposal's, and every page comes back."""
    llm = LLM(model=str(looping_model), device="cpu", max_model_len=40, draft="self:1", tree=(6, 5, 1))
    prompts = [[11, 2, 8, 2, 8, 2, 30, 5, 6, 7, 9], [3, 9, 4]]
    params = SamplingParams(temperature=1.2, top_k=6, seed=2, max_tokens=60, ignore_eos=True)
    runs = []
    for chains in (True, False):
        llm.engine.drafter.device_chains = chains
        runs.append([r.token_ids for r in llm.generate(prompts, params)])
    assert runs[0] == runs[1] and [len(t) for t in runs[0]] == [40 - 11, 40 - 3]
    drafter = llm.engine.drafter
    assert llm.cache.free_pages == llm.cache.num_pages and drafter.cache.free_pages == drafter.cache.num_pages


def test_draft_model_chains_for_a_batch_of_greedy_and_sampled_sequences(looping_model, monkeypatch):
    """A chain budget with greedy and sampled sequences in one batch: each kind's chains are proposed apart
    (propose_chains, a wait each), not level by level. The greedy sequence gives plain greedy's tokens, the sampled
    one the level-by-level proposal's (the same draws from its generator) and repeats itself; both pools get every
    page back."""
    from minispec import drafters

    llm = LLM(model=str(looping_model), device="cpu", draft="self:1", tree=(4, 3, 1))
    prompts = ["abcabc", "abcab"]
    params = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
              SamplingParams(temperature=1.5, top_k=5, seed=3, max_tokens=30, ignore_eos=True)]
    groups, chains = [], drafters.ModelDrafter.propose_chains

    def spy(self, seqs, caps):
        groups.append(tuple(s.params.greedy for s in seqs))
        return chains(self, seqs, caps)

    monkeypatch.setattr(drafters.ModelDrafter, "propose_chains", spy)
    chained = [r.token_ids for r in llm.generate(prompts, params)]
    assert (True,) in groups and (False,) in groups and all(len(g) == 1 for g in groups)
    again = [r.token_ids for r in llm.generate(prompts, params)]
    groups.clear()
    llm.engine.drafter.device_chains = False
    by_level = [r.token_ids for r in llm.generate(prompts, params)]
    assert not groups
    drafter = llm.engine.drafter
    assert drafter.cache.free_pages == drafter.cache.num_pages
    llm.use_drafter(None)
    plain = llm.generate(prompts[0], params[0]).token_ids
    assert chained == again == by_level and chained[0] == plain
    assert llm.cache.free_pages == llm.cache.num_pages


def test_draft_models_default_budget_is_the_chain(tiny_model, monkeypatch):
    """A draft model without --tree proposes the chain DRAFT_BUDGET on either backend (its levels need no host
    round trip; on the CPU too it ran 2.6-3.1x the tree 16,12,4: drafters.py); a budget given is kept."""
    from minispec import drafters

    llm = LLM(model=str(tiny_model), device="cpu")
    args = (llm.model, llm.tokenizer)
    for name, tree, expected in [("cpu", None, drafters.DRAFT_BUDGET), ("cuda", None, drafters.DRAFT_BUDGET),
                                 ("cuda", "8,4,2", drafters.TreeBudget(8, 4, 2)), ("cpu", "16,12,4", drafters.TreeBudget(16, 12, 4))]:
        monkeypatch.setattr(llm.backend, "name", name)
        assert drafters.make_drafter("self:1", tree, *args, llm.backend, 64, 16).budget == expected
    assert drafters.DRAFT_BUDGET == drafters.TreeBudget(4, 3, 1)


def test_draft_model_batch_of_greedy_and_sampled_sequences(tiny_model):
    """A draft model's level with greedy and sampled sequences together: the rows come to the host, the greedy
    ones ranked by sampling.top_logprobs, the sampled ones kept as q. The greedy sequence gives plain greedy's
    tokens, the sampled one repeats itself per seed, and a level of greedy sequences alone (the backend's
    top_logprobs) gives the same greedy tokens."""
    from minispec import drafters

    llm = LLM(model=str(tiny_model), device="cpu", draft="self:1", tree=(8, 4, 3))
    prompts = ["the cat sat on the", "abcabc abc"]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    sampled = SamplingParams(temperature=0.9, top_p=0.9, seed=5, max_tokens=24, ignore_eos=True)
    ranked, trees = [], []  # which path each level took (True: the backend ranked every row); the first trees
    forward, propose = drafters.ModelDrafter.forward, drafters.ModelDrafter.propose

    def spy(self, items, counts, greedy_rows, grows):
        ranked.append(all(greedy_rows))
        return forward(self, items, counts, greedy_rows, grows)

    def first_trees(self, seqs, budgets):
        proposed = propose(self, seqs, budgets)
        trees.append([(t.token_list, list(t.parents)) for t in proposed])
        return proposed

    drafters.ModelDrafter.forward, drafters.ModelDrafter.propose = spy, first_trees
    try:
        mixed = llm.generate(prompts, [greedy, sampled])
        assert False in ranked  # (a level where only the greedy sequence grows ranks on the backend)
        mixed_tree = trees[0][0]
        again = llm.generate(prompts, [greedy, sampled])
        ranked.clear(), trees.clear()
        alone = llm.generate(prompts[0], greedy)
        assert ranked and all(ranked)
        assert trees[0][0] == mixed_tree and len(mixed_tree[0]) > 1  # the greedy rows ranked alike on both paths
    finally:
        drafters.ModelDrafter.forward, drafters.ModelDrafter.propose = forward, propose
    llm.use_drafter(None)
    plain = llm.generate(prompts[0], greedy)
    assert mixed[0].token_ids == alone.token_ids == plain.token_ids
    assert mixed[1].token_ids == again[1].token_ids
    assert llm.cache.free_pages == llm.cache.num_pages


@pytest.fixture(scope="module")
def fuzz_models(tmp_path_factory):
    from .conftest import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("fuzz")
    return [make_tiny_checkpoint(root / "tiny"), make_tiny_checkpoint(root / "looping", cycle=7)]


@pytest.mark.parametrize("seed", range(24))
def test_random_mixed_batches_keep_greedy_outputs_and_pages(fuzz_models, seed):
    """Random batches mixing greedy and sampled requests (n of 1-2, top-k / top-p, max_tokens, EOS or not) under a
    random drafter (none, n-gram, self:1; default or random budgets), page size, pool size and prefix caching, on the
    tiny and the looping model: each greedy sample is the request's own plain decoding (alone, no drafter), no sample
    passes max_tokens, the same batch run again gives the same samples, sampled ones too (without prefix caching,
    whose kept pages change the second run's prefill shapes), and every page comes back (with prefix caching: as
    many pages free or reclaimable as before). A request alone and in a batch may part where a sampled draw lies
    within fp32's last bits of a CDF boundary (a one-row product rounds unlike a several-row one), so sampled
    samples are compared only with themselves."""
    rng = np.random.default_rng(seed)
    model = fuzz_models[seed % 2]
    draft = [None, "ngram", "ngram", "self:1", "self:1"][int(rng.integers(0, 5))]
    tree = (int(rng.integers(1, 20)), int(rng.integers(1, 8)), int(rng.integers(1, 5))) if draft and rng.random() < 0.5 else None
    prefix_caching = bool(rng.random() < 0.4)
    prompts = [[int(t) for t in rng.integers(3, 259, int(rng.integers(1, 40)))] for _ in range(int(rng.integers(2, 5)))]
    params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=float(rng.choice([0.0, 0.5, 1.0])), top_k=int(rng.choice([0, 5])),
                             top_p=float(rng.choice([1.0, 0.9])), seed=int(rng.integers(0, 100)), max_tokens=int(rng.integers(1, 50)),
                             ignore_eos=bool(rng.random() < 0.7)) for _ in prompts]
    llm = LLM(model=str(model), device="cpu", page_size=int(rng.choice([1, 3, 16])), max_model_len=160,
              kv_cache_tokens=int(rng.choice([400, 2000])), prefix_caching=prefix_caching)
    alone = [llm.generate(p, q) for p, q in zip(prompts, params)]
    llm.use_drafter(draft, tree)
    free = llm.cache.free_pages
    runs = [llm.generate(prompts, params) for _ in range(2)]
    what = f"draft={draft} tree={tree} prefix_caching={prefix_caching} params={params}"
    for results in runs:
        for result, single, q in zip(results, alone, params):
            assert all(len(s.token_ids) <= q.max_tokens for s in result.samples), what
            if q.greedy:
                assert [s.token_ids for s in result.samples] == [s.token_ids for s in single.samples], what
    if not prefix_caching:
        assert [[s.token_ids for s in r.samples] for r in runs[0]] == [[s.token_ids for s in r.samples] for r in runs[1]], what
        assert llm.cache.free_pages == llm.cache.num_pages
    assert llm.cache.free_pages == free, what


@pytest.mark.parametrize("seed", range(12))
def test_a_pool_that_fits_plain_decoding_fits_speculation(fuzz_models, seed):
    """A KV pool sized for plain decoding (100-130% of the prompts' and outputs' tokens, n samples sharing their
    prompt's pages, and the part-filled pages) serves the same greedy requests under the n-gram drafter and self:1 with plain decoding's tokens:
    trees shrink to the pages left (Engine.tree_budgets), a draft model drafts only where its own pool, which holds
    every sample's prompt, has room (ModelDrafter.fit), and a finished sequence's pages go back at once
    (Engine.retire) rather than when the whole batch ends; every page comes back."""
    rng = np.random.default_rng(100 + seed)
    model, page_size = fuzz_models[seed % 2], int(rng.choice([1, 3, 8, 16]))
    prompts = [[int(t) for t in rng.integers(3, 259, int(rng.integers(1, 60)))] for _ in range(int(rng.integers(1, 4)))]
    params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=0, max_tokens=int(rng.integers(1, 60)), ignore_eos=True) for _ in prompts]
    tokens = sum(len(p) + q.max_tokens * q.n for p, q in zip(prompts, params))
    kv = int(tokens * rng.uniform(1.0, 1.3)) + sum(2 * q.n for q in params) * page_size  # (pages part-filled)
    outputs = {}
    for draft in (None, "ngram", "self:1"):
        llm = LLM(model=str(model), device="cpu", page_size=page_size, draft=draft, kv_cache_tokens=kv, max_model_len=400)
        try:
            outputs[draft] = [[s.token_ids for s in r.samples] for r in llm.generate(prompts, params)]
        except MinispecError as error:
            outputs[draft] = str(error)
        assert llm.cache.free_pages == llm.cache.num_pages, draft
    if isinstance(outputs[None], str):
        pytest.skip(f"the pool is too small for plain decoding too: {outputs[None]}")
    assert outputs["ngram"] == outputs[None] and outputs["self:1"] == outputs[None], (page_size, kv, tokens)


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("draft", [None, "ngram"])
def test_a_finished_sequence_gives_its_pages_to_the_batch(tiny_model, sampled, draft):
    """Two prompts of 30 tokens, one stopping after 2 new tokens and one after 60, on 7 pages of 16: together they
    hold 2 + 6 pages, so the long one finishes only on the short one's pages, which come back once it is done (decoding
    one step ahead: once the step in flight is read; tree steps: at once); the tokens are those of each alone on a
    large pool, and every page comes back."""
    mode = dict(temperature=0.8, seed=3) if sampled else dict(temperature=0)
    prompts = [[int(t) for t in np.random.default_rng(i).integers(3, 259, 30)] for i in range(2)]
    params = [SamplingParams(max_tokens=2, ignore_eos=True, **mode), SamplingParams(max_tokens=60, ignore_eos=True, **mode)]
    alone = LLM(model=str(tiny_model), device="cpu")
    expected = [alone.generate(p, q).token_ids for p, q in zip(prompts, params)]
    llm = LLM(model=str(tiny_model), device="cpu", draft=draft, kv_cache_tokens=7 * 16)
    results = llm.generate(prompts, params)
    assert [len(r.token_ids) for r in results] == [2, 60]
    if not sampled or draft is None:  # (a sampled n-gram tree step rounds unlike a one-row step: README)
        assert [r.token_ids for r in results] == expected
    assert llm.cache.free_pages == llm.cache.num_pages


@pytest.mark.parametrize("sampled", [False, True])
def test_a_sequence_the_pool_cannot_give_a_page_waits_for_one_that_finishes(tiny_model, sampled):
    """Two prompts of one page (16 tokens), 20 and 40 new tokens: 3 and 4 pages, on a pool of 5. Decoding one step
    ahead, both reach position 32 together, where each needs a third page and one is free: step by step, the first
    takes it and finishes there, and the other waits for the pages the first gives back (retire); each request gets
    its own tokens, and every page comes back. (Sequences that all hold their pages and all need one more are still a
    full pool's error: nothing is preempted, test_running_out_of_pages_is_an_error_and_frees_everything.)"""
    mode = dict(temperature=0.8, seed=5) if sampled else dict(temperature=0)
    prompts = [[int(t) for t in np.random.default_rng(10 + i).integers(3, 259, 16)] for i in range(2)]
    params = [SamplingParams(max_tokens=20, ignore_eos=True, **mode), SamplingParams(max_tokens=40, ignore_eos=True, **mode)]
    alone = LLM(model=str(tiny_model), device="cpu")
    expected = [alone.generate(p, q).token_ids for p, q in zip(prompts, params)]
    llm = LLM(model=str(tiny_model), device="cpu", kv_cache_tokens=5 * 16)
    assert [r.token_ids for r in llm.generate(prompts, params)] == expected
    assert llm.cache.free_pages == llm.cache.num_pages


@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("draft", [None, "ngram", "self:1"])
@pytest.mark.parametrize("sampled", [False, True])
def test_sequences_that_all_need_a_page_preempt_the_last_and_recompute_it(tiny_model, sampled, draft, prefix_caching):
    """Three prompts of one page (16 tokens), 40 new tokens each (4 pages), the second as 2 samples sharing its
    prompt's page, on a pool of 9 pages: together they need 16, and at position 48 every sequence holds 3 and needs a
    fourth. The last ones' pages go back to the pool (Engine.preempt) and their tokens are prefilled again once the
    others finish (resume), instead of the batch failing: every sample gets its tokens alone on a large pool (greedy;
    sampled ones draw at their positions, so the same draws; but a sampled draft model's, whose trees the short pool
    cuts, so whose residual draws differ), at least one was preempted, and every page comes back (with prefix caching:
    as many pages free or reclaimable as before)."""
    mode = dict(temperature=0.8, seed=7) if sampled else dict(temperature=0)
    prompts = [[int(t) for t in np.random.default_rng(20 + i).integers(3, 259, 16)] for i in range(3)]
    params = [SamplingParams(max_tokens=40, ignore_eos=True, n=2 if i == 1 else 1, **mode) for i in range(3)]
    alone = LLM(model=str(tiny_model), device="cpu")
    expected = [[s.token_ids for s in alone.generate(p, q).samples] for p, q in zip(prompts, params)]
    llm = LLM(model=str(tiny_model), device="cpu", draft=draft, kv_cache_tokens=9 * 16, prefix_caching=prefix_caching)
    free = llm.cache.free_pages
    results = llm.generate(prompts, params)
    outputs = [[s.token_ids for s in r.samples] for r in results]
    if sampled and draft == "self:1":
        assert [[len(o) for o in samples] for samples in outputs] == [[40], [40, 40], [40]]
    else:
        assert outputs == expected
    assert sum(s.stats.preemptions for r in results for s in r.samples) > 0
    assert llm.cache.free_pages == free == llm.cache.num_pages


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("draft", [None, "ngram"])
@pytest.mark.parametrize("sampled", [False, True])
def test_prompts_the_pool_cannot_hold_together_wait_their_turn(tiny_model, sampled, draft, ahead):
    """Six prompts of two pages (32 tokens), 20 new tokens each (4 pages alone), the third as 2 samples, on a pool of
    6 pages: the prompts alone need 12. The first ones are prefilled and decode while the rest wait (Engine.admit), each
    prefilled as pages come back, first come first; every sample gets its tokens alone on a large pool, and every page
    comes back. (Before, the batch's prefill failed with a full pool.)"""
    mode = dict(temperature=0.8, seed=11) if sampled else dict(temperature=0)
    prompts = [[int(t) for t in np.random.default_rng(40 + i).integers(3, 259, 32)] for i in range(6)]
    params = [SamplingParams(max_tokens=20, ignore_eos=True, n=2 if i == 2 else 1, **mode) for i in range(6)]
    alone = LLM(model=str(tiny_model), device="cpu")
    expected = [[s.token_ids for s in alone.generate(p, q).samples] for p, q in zip(prompts, params)]
    llm = LLM(model=str(tiny_model), device="cpu", draft=draft, kv_cache_tokens=6 * 16)
    llm.engine.decode_ahead_enabled = ahead
    assert [[s.token_ids for s in r.samples] for r in llm.generate(prompts, params)] == expected
    assert llm.cache.free_pages == llm.cache.num_pages


@pytest.mark.parametrize("pages", [5, 6])
def test_a_sequence_done_in_a_device_stretch_gives_its_pages_to_those_waiting(looping_model, pages):
    """Two prompts of 20 tokens, 30 and 50 new tokens (2 and 5 pages of 16 alone) with the n-gram drafter on the
    looping model, on a pool of 5 or 6 pages: one sequence goes on alone (the other waits or is preempted), so its
    tree steps are drafted on the device (Engine.speculate_on_device), and where it finishes there its pages must come
    back before the other resumes (before, they came back only at the batch's end, and the resume found a full
    pool). The tokens are plain decoding's on a large pool; every page comes back."""
    prompts = [[int(t) for t in np.random.default_rng(50 + i).integers(3, 259, 20)] for i in range(2)]
    params = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0) for n in (30, 50)]
    expected = [r.token_ids for r in LLM(model=str(looping_model), device="cpu").generate(prompts, params)]
    llm = LLM(model=str(looping_model), device="cpu", draft="ngram", kv_cache_tokens=pages * 16)
    assert [r.token_ids for r in llm.generate(prompts, params)] == expected
    assert llm.cache.free_pages == llm.cache.num_pages


@pytest.mark.parametrize("draft", [None, "ngram"])
def test_a_sequence_done_at_its_first_token_gives_its_pages_to_those_waiting(tiny_model, draft):
    """Two prompts of 32 tokens (2 pages) on a pool of 4 pages, the first asking for one token: it alone is admitted
    (its prompt's pages and a page for its first token), finishes at its first token (start_sequences), and its pages
    must come back before the second is prefilled (Engine.schedule), which then needs a third page for its own tokens:
    where they stayed, it failed alone on a full pool. The tokens are each prompt's alone; every page comes back."""
    prompts = [[int(t) for t in np.random.default_rng(60 + i).integers(3, 259, 32)] for i in range(2)]
    params = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0) for n in (1, 12)]
    alone = LLM(model=str(tiny_model), device="cpu")
    expected = [alone.generate(p, q).token_ids for p, q in zip(prompts, params)]
    llm = LLM(model=str(tiny_model), device="cpu", draft=draft, kv_cache_tokens=4 * 16)
    llm.engine.decode_ahead_enabled = False  # (decoding ahead gives a sequence's pages back in its own stretch)
    assert [r.token_ids for r in llm.generate(prompts, params)] == expected
    assert llm.cache.free_pages == llm.cache.num_pages


def test_a_preempted_sequence_streams_its_text_once(tiny_model):
    """A stream through preemption: each sequence's pieces join into its generate text, nothing repeated or lost
    (a resumed sequence's prefill emits nothing: its tokens and text are already out)."""
    prompts = [[int(t) for t in np.random.default_rng(30 + i).integers(3, 259, 16)] for i in range(3)]
    params = [SamplingParams(max_tokens=40, ignore_eos=True, temperature=0)] * 3
    llm = LLM(model=str(tiny_model), device="cpu", kv_cache_tokens=8 * 16)
    pieces = {}
    events = llm.engine.run(prompts, params)
    try:
        while True:
            seq, piece = next(events)
            pieces[seq.index] = pieces.get(seq.index, "") + piece
    except StopIteration as finished:
        seqs = finished.value
    assert sum(s.stats.preemptions for s in seqs) > 0
    assert {s.index: s.text for s in seqs} == pieces
    assert [len(s.output) for s in seqs] == [40] * 3


def test_tree_budgets_share_the_pages_left_and_make_the_rest_wait():
    """Engine.tree_budgets on a pool of 6 pages of 4: the context limit and 64 nodes cap every budget; the pages past
    each sequence's next token go to the sequences in turn (a page shared with another sample is copied: it counts);
    where the pool cannot give every sequence its next token's page, those it cannot get 0 (they wait a step); where
    it can give none, all get 0 (Engine.run then preempts)."""
    from types import SimpleNamespace

    from minispec.backends.numpy_backend import NumpyBackend
    from minispec.engine import Engine
    from minispec.kv_cache import KVCache

    cache = KVCache(NumpyBackend(), num_layers=1, num_pages=6, num_kv_heads=1, page_size=4, head_dim=2)
    engine = SimpleNamespace(cache=cache, max_model_len=100)
    seq = lambda L: SimpleNamespace(table=[], L=L)  # noqa: E731
    a, b = seq(8), seq(5)
    cache.prepare(a.table, 0, 8)  # 2 pages, full: its next token needs a third
    cache.prepare(b.table, 0, 5)  # 2 pages, room for 3 more tokens in the second
    budgets = lambda seqs: Engine.tree_budgets(engine, seqs)  # noqa: E731
    assert budgets([a, b]) == [8, 3]  # 2 free: a needs one for its token, the other gives it 4 more; b has 3 in hand
    assert budgets([b, a]) == [7, 4]  # in turn: b takes the spare page first
    assert Engine.tree_budgets(SimpleNamespace(cache=cache, max_model_len=10), [a]) == [2]  # the context limit
    assert budgets([seq(0)]) == [8]  # a new sequence: the 2 free pages
    c = SimpleNamespace(table=cache.fork(b.table), L=5)  # shares b's pages: writing position 5 copies the second
    assert budgets([c]) == [7]  # the copy and one new page: 3 + 4 positions
    assert budgets([b]) == [7]  # b's page is shared too now: b would copy it as well
    cache.release(c.table)
    d = seq(8)
    cache.prepare(d.table, 0, 4)
    cache.prepare(d.table, 4, 4)  # 2 pages, full; the pool now has none free
    assert cache.free_pages == 0
    assert budgets([a, b]) == [0, 3]  # a waits; b goes on in its own page
    assert budgets([a, d]) == [0, 0]  # none can step: run preempts
