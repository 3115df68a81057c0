"""Paged tree attention (NumPy reference) against a dense per-query reference."""

from __future__ import annotations

import numpy as np
import pytest

from minispec.backends import numpy_backend

from .attention_cases import make_problem, problem_specs


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_paged_attention_matches_dense(page_size):
    rng = np.random.default_rng(page_size)
    specs = problem_specs(page_size)
    q, k_cache, v_cache, plan, expected = make_problem(rng, page_size, specs)
    out = numpy_backend.attention(q, k_cache, v_cache, plan, scale=1 / np.sqrt(q.shape[-1]))
    assert np.isfinite(out).all(), "read a poisoned (foreign) page"
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_batch_mixes_prefill_decode_and_trees_in_one_plan():
    rng = np.random.default_rng(7)
    q, k_cache, v_cache, plan, expected = make_problem(rng, 16, [(0, "chunk", 33), (17, "single", 1), (40, "random", 20), (15, "chain", 5)])
    assert list(plan.causal) == [1, 0, 0, 0]
    out = numpy_backend.attention(q, k_cache, v_cache, plan, scale=1 / np.sqrt(q.shape[-1]))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_kv_write_goes_to_slots_only():
    rng = np.random.default_rng(3)
    P, Hkv, D = 4, 2, 8
    k_cache = np.full((6, Hkv, P, D), np.nan, dtype=np.float32)
    v_cache = k_cache.copy()
    slots = np.array([5, 0, 23, -1, 9])
    k = rng.normal(size=(5, Hkv, D)).astype(np.float32)
    v = rng.normal(size=(5, Hkv, D)).astype(np.float32)
    numpy_backend.write_kv(k_cache, v_cache, k, v, slots, P)
    for n, slot in enumerate(slots):
        if slot >= 0:
            np.testing.assert_array_equal(k_cache[slot // P, :, slot % P], k[n])
            np.testing.assert_array_equal(v_cache[slot // P, :, slot % P], v[n])
    assert np.isnan(k_cache).sum() == k_cache.size - 4 * Hkv * D
