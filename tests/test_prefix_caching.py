"""Prefix caching (LLM(prefix_caching=True), minispec chat): a request that starts with the tokens of an earlier
one's K/V reuses its full pages and prefills the rest alone, with the tokens of a run without the cache (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from minispec import LLM, SamplingParams
from minispec.engine import Engine

P = 4  # small pages: the tiny prompts span several


def prefill_starts(monkeypatch) -> list[list[int]]:
    """Each Engine.prefill call's sequences' L on entry (where their prefill began)."""
    starts, prefill = [], Engine.prefill

    def spy(self, seqs):
        starts.append([s.L for s in seqs])
        return prefill(self, seqs)

    monkeypatch.setattr(Engine, "prefill", spy)
    return starts


@pytest.mark.parametrize("draft", [None, "ngram"])
def test_a_turn_reuses_the_last_turns_pages_and_gives_the_same_tokens(tiny_model, monkeypatch, draft):
    starts = prefill_starts(monkeypatch)
    cached = LLM(model=str(tiny_model), device="cpu", page_size=P, prefix_caching=True, draft=draft)
    fresh = LLM(model=str(tiny_model), device="cpu", page_size=P, draft=draft)
    params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, 200, 13).tolist()
    first = cached.generate(prompt, params)
    assert first.token_ids == fresh.generate(prompt, params).token_ids and starts[0] == [0]
    # the next turn: the conversation so far and a new message
    turn = prompt + first.token_ids + rng.integers(3, 200, 6).tolist()
    starts.clear()
    second = cached.generate(turn, params)
    written = len(prompt) + len(first.token_ids) - 1  # the first run wrote K/V for all but its last token
    assert starts[0] == [written // P * P]
    assert second.token_ids == fresh.generate(turn, params).token_ids
    # the same turn again: every whole page of it but the last token's is kept now
    starts.clear()
    again = cached.generate(turn, params)
    assert starts[0] == [(len(turn) - 1) // P * P] and again.token_ids == second.token_ids
    assert cached.cache.free_pages == cached.cache.num_pages  # kept pages count as free: the pool takes them back


def test_reused_pages_hold_the_fresh_prefills_kv(tiny_model):
    """The K/V of a kept page (written by decode steps) against a prefill of the same tokens: float32 agreement
    up to summation order."""
    llm = LLM(model=str(tiny_model), device="cpu", page_size=P, prefix_caching=True)
    prompt = list(range(10, 21))
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    tokens = prompt + out.token_ids
    pages = llm.cache.reuse_prefix(tokens, len(tokens))
    assert len(pages) == (len(tokens) - 1) // P
    table = []
    llm.cache.prepare(table, 0, len(tokens))
    from minispec.step import StepItem, build_plan

    llm.model.forward(build_plan([StepItem.chunk(table, 0, np.asarray(tokens))], P), llm.cache)
    for layer in range(llm.model.num_layers):
        for pool in (llm.cache.k[layer], llm.cache.v[layer]):
            np.testing.assert_allclose(pool[pages], pool[table[: len(pages)]], rtol=1e-5, atol=1e-5)
    llm.cache.release(table)
    llm.cache.release(pages)


def test_kept_pages_give_way_to_new_requests(tiny_model):
    """A pool that holds little more than one request: unrelated prompts take the kept pages back one by one, and
    parallel samples sharing a reused prefix leave every reference accounted for."""
    llm = LLM(model=str(tiny_model), device="cpu", page_size=P, prefix_caching=True, kv_cache_tokens=12 * P)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    for seed in range(4):
        prompt = np.random.default_rng(seed).integers(3, 200, 20).tolist()
        assert len(llm.generate(prompt, params).token_ids) == 20
    assert llm.cache.kept and llm.cache.free_pages == llm.cache.num_pages
    sampled = llm.generate(prompt + [5], SamplingParams(n=2, temperature=1.0, seed=0, max_tokens=4, ignore_eos=True))
    assert [len(s.token_ids) for s in sampled.samples] == [4, 4]
    assert llm.cache.free_pages == llm.cache.num_pages
    kept = np.fromiter(llm.cache.kept.values(), dtype=np.int64)
    assert (llm.cache.refcount[kept] == 1).all() and not np.delete(llm.cache.refcount, kept).any()


def test_many_requests_over_shared_prefixes(tiny_model, monkeypatch):
    """Random requests that share prefixes to various depths, in a pool too small to keep them all, greedy and
    sampled, with and without the n-gram drafter: the same tokens as a run without the cache, and after each
    request every page is free or kept with the cache's reference alone."""
    starts = prefill_starts(monkeypatch)
    rng = np.random.default_rng(7)
    kw = dict(model=str(tiny_model), device="cpu", page_size=P, kv_cache_tokens=40 * P)
    cached, fresh = LLM(prefix_caching=True, **kw), LLM(**kw)
    stems = [rng.integers(3, 200, 24).tolist() for _ in range(3)]
    for i in range(24):
        stem = stems[rng.integers(3)]
        prompt = stem[: rng.integers(1, 25)] + rng.integers(3, 200, rng.integers(1, 9)).tolist()
        params = SamplingParams(temperature=float(rng.choice([0.0, 0.8])), seed=i, n=int(rng.integers(1, 3)),
                                max_tokens=int(rng.integers(1, 16)), ignore_eos=True)
        draft = [None, "ngram"][i % 2]
        for llm in (cached, fresh):
            llm.use_drafter(draft)
        got = [s.token_ids for s in cached.generate(prompt, params).samples]
        assert got == [s.token_ids for s in fresh.generate(prompt, params).samples], i
        cache = cached.cache
        kept = np.fromiter(cache.kept.values(), dtype=np.int64, count=len(cache.kept))
        assert (cache.refcount[kept] == 1).all() and not np.delete(cache.refcount, kept).any()
        assert cache.free_pages == cache.num_pages and len(set(kept.tolist())) == len(kept)
    cached_starts = starts[0::2]  # (the fresh LLM's prefills in between)
    assert sum(s[0] > 0 for s in cached_starts) >= 6 and not any(s[0] for s in starts[1::2])


def test_a_draft_model_keeps_its_own_pages(tiny_model):
    """With a draft model (here the target's first layer) the draft's cache keeps its pages too: the next turn
    feeds the draft only what they lack, and both pools account for every page afterwards."""
    from minispec.drafters import ModelDrafter

    llm = LLM(model=str(tiny_model), device="cpu", page_size=P, prefix_caching=True, draft="self:1", tree=(6, 3, 2))
    drafter = llm.engine.drafter
    fed, forward = [], ModelDrafter.forward

    def spy(self, items, *args):
        fed.append(items[0].tree_start if len(items[0].tokens) > 1 else None)  # a first proposal's catch-up chunk
        return forward(self, items, *args)

    ModelDrafter.forward = spy
    try:
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        prompt = list(range(20, 35))
        first = llm.generate(prompt, params)
        turn = prompt + first.token_ids + [7, 8, 9]
        fed.clear()
        second = llm.generate(turn, params)
    finally:
        ModelDrafter.forward = forward
    # the first run's draft K/V reach its last committed root at least: the prompt's whole pages and more
    assert fed[0] % P == 0 and fed[0] > len(prompt) // P * P, fed
    plain = LLM(model=str(tiny_model), device="cpu", page_size=P).generate(turn, params)
    assert second.token_ids == plain.token_ids
    for cache in (llm.cache, drafter.cache):
        assert cache.kept and cache.free_pages == cache.num_pages


def test_a_batch_prefills_its_shared_pages_once(tiny_model, monkeypatch):
    """Prompts of one request that begin with the same whole pages: the first is prefilled, the others start from
    its pages in a second round, and every sample gives the tokens of a run without the cache."""
    starts = prefill_starts(monkeypatch)
    kw = dict(model=str(tiny_model), device="cpu", page_size=P)
    cached, fresh = LLM(prefix_caching=True, **kw), LLM(**kw)
    rng = np.random.default_rng(3)
    shared = rng.integers(3, 200, 10).tolist()  # two whole pages and a half
    prompts = [shared + rng.integers(3, 200, k).tolist() for k in (3, 5)] + [rng.integers(3, 200, 7).tolist(), shared[:9]]
    params = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)
    got = [r.token_ids for r in cached.generate(prompts, params)]
    assert starts == [[0, 0], [8, 8]]  # the first and the unrelated prompt, then the two that share 2 pages with it
    assert got == [r.token_ids for r in fresh.generate(prompts, params)]
    sampled = SamplingParams(n=2, temperature=1.0, seed=5, max_tokens=6, ignore_eos=True)
    assert [[s.token_ids for s in r.samples] for r in cached.generate(prompts, sampled)] == \
        [[s.token_ids for s in r.samples] for r in fresh.generate(prompts, sampled)]
    assert cached.cache.free_pages == cached.cache.num_pages
