"""Verification: greedy follows the argmax; sampled verification is lossless (statistical tests)."""

from __future__ import annotations

import numpy as np
import pytest

from minispec import SamplingParams
from minispec.sampling import target_distribution
from minispec.tree import Tree
from minispec.backends.numpy_backend import NumpyBackend
from minispec.model import StepLogits
from minispec.verify import verify as verify_rows
from minispec.verify import verify_greedy


def verify(tree, logits, params, rng):
    return verify_rows(tree, StepLogits(NumpyBackend(), np.asarray(logits, dtype=np.float32)), params, rng)

V = 6


def test_greedy_follows_matching_children_and_returns_bonus():
    # root -> a(1), b(2); a -> c(3); c -> d(4)
    tree = Tree(tokens=[0, 1, 2, 3, 4], parents=[-1, 0, 0, 1, 3])
    logits = np.full((5, V), -5.0)
    logits[0, 2] = 5  # root's argmax is token 2 -> node 2 (a leaf)
    logits[2, 5] = 5  # after node 2: bonus 5
    assert verify_greedy(tree, np.argmax(logits, -1)) == ([0, 2], 5)
    logits[0] = -5
    logits[0, 1] = 5
    logits[1, 3] = 5
    logits[3, 4] = 5
    logits[4, 0] = 5
    assert verify_greedy(tree, np.argmax(logits, -1)) == ([0, 1, 3, 4], 0)


def total_variation(counts, p):
    return 0.5 * np.abs(counts / counts.sum() - p).sum()


def first_emitted(tree, logits, params, rng):
    path, bonus = verify(tree, logits, params, rng)
    return int(tree.tokens[path[1]]) if len(path) > 1 else bonus


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4), SamplingParams(temperature=1.3, top_p=0.85)])
def test_deterministic_candidates_are_lossless(params):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, V)) * 1.5
    p = target_distribution(logits[0], params)
    # root with three deterministic children (tokens 0, 3, 5), one of them with a child
    tree = Tree(tokens=[9, 0, 3, 5], parents=[-1, 0, 0, 0])
    draws = 100_000
    counts = np.bincount([first_emitted(tree, logits, params, rng) for _ in range(draws)], minlength=V)
    assert total_variation(counts, p) < 0.01
    # second position: given the first accepted token was 0 (node 1), the next follows p at node 1
    tree2 = Tree(tokens=[9, 0, 2, 4], parents=[-1, 0, 1, 1])
    logits2 = logits.copy()
    logits2[0] = -30
    logits2[0, 0] = 30  # node 1 always accepted
    p1 = target_distribution(logits2[1], params)
    counts2 = np.bincount([first_second(tree2, logits2, params, rng) for _ in range(20_000)], minlength=V)
    assert total_variation(counts2, p1) < 0.02


def first_second(tree, logits, params, rng):
    path, bonus = verify(tree, logits, params, rng)
    return int(tree.tokens[path[2]]) if len(path) > 2 else bonus


def test_candidates_sampled_from_q_are_lossless():
    """SpecInfer rule: k children drawn i.i.d. from q; the emitted token must follow p."""
    rng = np.random.default_rng(8)
    params = SamplingParams(temperature=1.0)
    logits = rng.normal(size=(4, V)) * 1.5
    p = target_distribution(logits[0], params)
    q = rng.dirichlet(np.ones(V))
    q_rows = np.tile(q, (4, 1))
    draws = 100_000
    counts = np.zeros(V)
    for _ in range(draws):
        children = rng.choice(V, size=3, p=q)
        tree = Tree(tokens=[0, *children], parents=[-1, 0, 0, 0], q=q_rows, sampled=True)
        counts[first_emitted(tree, logits, params, rng)] += 1
    assert total_variation(counts, p) < 0.01
