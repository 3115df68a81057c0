"""Sampling settings: validation, the filters' allowed sets and frequencies, seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from minispec import MinispecError, SamplingParams
from minispec.backends.numpy_backend import NumpyBackend
from minispec.model import StepLogits
from minispec.sampling import position_uniform, position_uniforms, sequence_key, target_distribution, top_indices, top_logprobs


def choose_token(logits, params, rng):
    """The engine's path: one row chosen through StepLogits (greedy argmax or the backend's sampler), at a random
    key and position."""
    return StepLogits(NumpyBackend(), logits[None]).choose(0, params, int(rng.integers(0, 2**63)), int(rng.integers(0, 10**6)))


def splitmix_uniform(key: int, position: int, stream: int) -> float:
    """position_uniforms written again with Python integers: splitmix64's published finaliser, masked to 64 bits."""
    mask = (1 << 64) - 1

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    counter = ((position & mask) | (stream << 32)) & mask
    return (mix(key ^ mix((counter + 0x9E3779B97F4A7C15) & mask)) >> 11) / 2.0**53


def test_position_uniforms_match_the_hash_and_look_uniform():
    rng = np.random.default_rng(3)
    for _ in range(20):
        key, stream = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)), int(rng.integers(0, 4))
        positions = rng.integers(0, 2**31, 7)
        got = position_uniforms(key, positions, stream)
        assert got.tolist() == [splitmix_uniform(key, int(p), stream) for p in positions]
        assert got.tolist() == [position_uniform(key, int(p), stream) for p in positions]  # the host's one-position form
    u = position_uniforms(sequence_key(7, 0), np.arange(200_000))
    assert 0 <= u.min() and u.max() < 1
    # ten equal bins: chi-square with 9 degrees of freedom, far below its 0.1% point (27.9) for a fair generator
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert ((counts - 20_000) ** 2 / 20_000).sum() < 27.9
    # neighbouring positions, streams and samples are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    other_stream = position_uniforms(sequence_key(7, 0), np.arange(200_000), stream=1)
    other_sample = position_uniforms(sequence_key(7, 1), np.arange(200_000))
    assert abs(np.corrcoef(u, other_stream)[0, 1]) < 0.01 and abs(np.corrcoef(u, other_sample)[0, 1]) < 0.01
    assert sequence_key(7, 0) == sequence_key(7, 0) != sequence_key(8, 0)
    assert sequence_key(None, 0) != sequence_key(None, 0)  # unseeded: fresh from the OS


@pytest.mark.parametrize(
    "bad",
    [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(min_p=1.2), dict(max_tokens=0), dict(n=0), dict(seed=-3), dict(stop=[""])],
)
def test_invalid_values_are_rejected(bad):
    with pytest.raises(MinispecError, match="invalid sampling parameter"):
        SamplingParams(**bad)


def reference_allowed(p, top_k, top_p, min_p):
    """Allowed set written directly from the definitions (ties do not occur: p is distinct)."""
    order = list(np.argsort(-p))
    allowed = set(order[:top_k]) if top_k else set(order)
    if top_p < 1:
        mass, nucleus = 0.0, set()
        for token in order:
            nucleus.add(token)
            mass += p[token]
            if mass >= top_p:
                break
        allowed &= nucleus
    if min_p:
        allowed &= {t for t in range(len(p)) if p[t] >= min_p * p.max()}
    return allowed


@pytest.mark.parametrize("filters", [dict(top_k=3), dict(top_p=0.7), dict(min_p=0.2), dict(top_k=5, top_p=0.8, min_p=0.05), dict()])
def test_filters_sample_only_the_allowed_set_with_the_right_frequencies(filters):
    rng = np.random.default_rng(11)
    V = 12
    logits = rng.normal(size=V).astype(np.float32) * 2
    params = SamplingParams(temperature=0.8, **filters)
    tempered = np.exp(logits.astype(np.float64) / 0.8)
    tempered /= tempered.sum()
    allowed = reference_allowed(tempered, filters.get("top_k", 0), filters.get("top_p", 1.0), filters.get("min_p", 0.0))
    expected = np.zeros(V)
    expected[list(allowed)] = tempered[list(allowed)]
    expected /= expected.sum()
    np.testing.assert_allclose(target_distribution(logits, params), expected, rtol=1e-12, atol=1e-15)
    draws = 60_000
    counts = np.bincount([choose_token(logits, params, rng) for _ in range(draws)], minlength=V)
    assert set(np.nonzero(counts)[0]) <= allowed
    # total variation within a bound far beyond sampling noise (~sqrt(V / draws))
    assert 0.5 * np.abs(counts / draws - expected).sum() < 0.015


@pytest.mark.parametrize("scale,top_k,top_p", [(4.0, 0, 0.9), (3.0, 0, 0.9), (1.5, 0, 0.9), (0.05, 0, 0.99), (0.05, 3000, 0.99), (0.6, 700, 1.0)])
def test_filters_of_a_large_vocabulary(scale, top_k, top_p):
    """target_distribution sorts only a prefix of the order (the top k; for top-p alone 64 tokens, then 64 times more,
    then the whole row): nuclei of 25, 575, 6,906 and 19,769 tokens of a 20,000-token row (found in the first,
    second and last sorted prefix), with top-k, and top-k alone, against the definitions."""
    rng = np.random.default_rng(int(scale * 100) + top_k)
    V = 20_000
    logits = rng.normal(size=V) * scale
    tempered = np.exp(logits / 0.9 - (logits / 0.9).max())
    tempered /= tempered.sum()
    allowed = reference_allowed(tempered, top_k, top_p, 0.0)
    expected = np.zeros(V)
    expected[list(allowed)] = tempered[list(allowed)]
    expected /= expected.sum()
    np.testing.assert_allclose(target_distribution(logits, SamplingParams(temperature=0.9, top_k=top_k, top_p=top_p)), expected, rtol=1e-9, atol=1e-15)


def test_top_indices_is_the_stable_sorts_prefix():
    """top_indices(x, k) == np.argsort(-x, kind="stable")[:k], ties (by index) included, for every k."""
    rng = np.random.default_rng(5)
    for trial in range(300):
        x = np.round(rng.normal(size=int(rng.integers(1, 400))) * 3, int(trial % 3))  # rounding makes ties
        for k in (0, 1, 2, int(rng.integers(1, len(x) + 1)), len(x), len(x) + 3):
            assert np.array_equal(top_indices(x, k), np.argsort(-x, kind="stable")[:k]), (trial, k)


def test_top_logprobs_ranks_as_a_full_sort_and_normalises_in_float64():
    """top_logprobs: a stable sort of each row (NaN first, then value, then index) and log softmax in float64, from
    a reference that sorts the whole row and sums with math.fsum."""
    import math

    rng = np.random.default_rng(11)
    for trial in range(60):
        R, V = int(rng.integers(1, 5)), int(rng.integers(1, 300))
        logits = (np.round(rng.normal(size=(R, V)) * 4, trial % 3) * rng.uniform(0.5, 20)).astype(np.float32)  # ties
        if trial % 7 == 3:
            logits[0, rng.integers(0, V, size=2)] = np.nan
        k = int(rng.integers(1, 10))
        ids, logprobs = top_logprobs(logits, k)
        assert ids.shape == logprobs.shape == (R, min(k, V)) and ids.dtype == np.int32
        for r in range(R):
            row = logits[r].astype(np.float64)
            nan = np.isnan(row)
            order = sorted(range(V), key=lambda v: (not nan[v], -row[v] if not nan[v] else 0.0, v))[:k]
            assert ids[r].tolist() == order, (trial, r)
            if nan.any():
                assert np.isnan(logprobs[r]).all()
                continue
            peak = row.max()
            log_total = peak + math.log(math.fsum(math.exp(x - peak) for x in row))
            np.testing.assert_allclose(logprobs[r], row[order] - log_total, rtol=1e-12, atol=1e-12)


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -1.0, 2.9], dtype=np.float32)
    assert choose_token(logits, SamplingParams(temperature=0), np.random.default_rng()) == 1


def test_same_seed_same_output(tiny_model):
    from minispec import LLM

    llm = LLM(model=str(tiny_model), device="cpu")
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=30, ignore_eos=True)
    first = llm.generate("hello there", params).token_ids
    assert llm.generate("hello there", params).token_ids == first
    other = llm.generate("hello there", SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=30, ignore_eos=True)).token_ids
    assert other != first
