"""Verification: greedy follows the argmax; sampled verification is lossless (statistical tests)."""

from __future__ import annotations

import numpy as np
import pytest

from minispec import SamplingParams
from minispec.sampling import sample_from, target_distribution
from minispec.tree import Tree
from minispec.verify import node_uniforms, verify_chosen, verify_sampled


def verify(tree, logits, params, rng, L=7):
    """SpecInfer's rule (a tree of candidates sampled from q) at a fresh key."""
    return verify_sampled(tree, np.asarray(logits, dtype=np.float32), params, int(rng.integers(0, 2**63)), L)


V = 6


def test_greedy_follows_matching_children_and_returns_bonus():
    # root -> a(1), b(2); a -> c(3); c -> d(4)
    tree = Tree(tokens=[0, 1, 2, 3, 4], parents=[-1, 0, 0, 1, 3])
    logits = np.full((5, V), -5.0)
    logits[0, 2] = 5  # root's argmax is token 2 -> node 2 (a leaf)
    logits[2, 5] = 5  # after node 2: bonus 5
    assert verify_chosen(tree, np.argmax(logits, -1)) == ([0, 2], 5)
    logits[0] = -5
    logits[0, 1] = 5
    logits[1, 3] = 5
    logits[3, 4] = 5
    logits[4, 0] = 5
    assert verify_chosen(tree, np.argmax(logits, -1)) == ([0, 1, 3, 4], 0)


def total_variation(counts, p):
    return 0.5 * np.abs(counts / counts.sum() - p).sum()


def first_emitted(tree, logits, params, rng):
    path, bonus = verify(tree, logits, params, rng)
    return int(tree.tokens[path[1]]) if len(path) > 1 else bonus


def walks(tree, logits, params, rng, trials: int, L: int = 7) -> list[tuple[list[int], int]]:
    """verify() at `trials` fresh keys, the draws of each row made at once (sample_from takes an array of u)."""
    rows = [target_distribution(row, params) for row in np.asarray(logits, dtype=np.float32)]
    uniforms = np.stack([node_uniforms(int(k), tree, L) for k in rng.integers(0, 2**63, trials)])  # [trials, T]
    draws = np.stack([sample_from(rows[n], uniforms[:, n]) for n in range(len(tree))], axis=1)
    return [verify_chosen(tree, d) for d in draws]


def emitted(tree, path, bonus, at: int) -> int:
    """The token the walk emits at path step `at` (1: the first)."""
    return int(tree.tokens[path[at]]) if len(path) > at else bonus


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4), SamplingParams(temperature=1.3, top_p=0.85)])
def test_deterministic_candidates_are_lossless(params):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, V)) * 1.5
    p = target_distribution(logits[0], params)
    # root with three deterministic children (tokens 0, 3, 5), one of them with a child
    tree = Tree(tokens=[9, 0, 3, 5], parents=[-1, 0, 0, 0])
    counts = np.bincount([emitted(tree, *walk, 1) for walk in walks(tree, logits, params, rng, 100_000)], minlength=V)
    assert total_variation(counts, p) < 0.01
    # second position: given the first accepted token was 0 (node 1), the next follows p at node 1
    tree2 = Tree(tokens=[9, 0, 2, 4], parents=[-1, 0, 1, 1])
    logits2 = logits.copy()
    logits2[0] = -30
    logits2[0, 0] = 30  # node 1 always accepted
    p1 = target_distribution(logits2[1], params)
    counts2 = np.bincount([emitted(tree2, *walk, 2) for walk in walks(tree2, logits2, params, rng, 20_000)], minlength=V)
    assert total_variation(counts2, p1) < 0.02


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


def test_a_chain_tested_on_the_backend_walks_as_verify_sampled():
    """A chain drawn on the backend (Tree.q_backend) is tested there, every node at once (backend.specinfer_rows,
    queued by fetch_draws, read by verify via verify_tested): the path and bonus of verify_sampled's walk on the
    host rows with the same q, for random chains, settings, keys and positions, several sequences in one step.
    Chains accepted whole, in part and refused at the first node (the residual's draw), and roots alone, all occur."""
    from types import SimpleNamespace

    from minispec.backends.numpy_backend import NumpyBackend
    from minispec.model import StepLogits
    from minispec.verify import fetch_draws, verify as verify_step

    rng, V, outcomes = np.random.default_rng(5), 40, set()
    settings = [SamplingParams(temperature=0.9), SamplingParams(temperature=1.3, top_k=12), SamplingParams(temperature=0.7, top_p=0.9)]
    for trial in range(150):
        seqs, trees, host_trees, q_all = [], [], [], []
        for b in range(int(rng.integers(1, 4))):
            params = settings[int(rng.integers(len(settings)))]
            depth = int(rng.integers(0, 5))
            # q: a random draft row (V = 40 and top-k 12: children are still taken often enough)
            q = [target_distribution(rng.normal(size=V) * 2, params) for _ in range(depth)]
            chain = [int(rng.integers(V))] + [int(rng.choice(V, p=row)) for row in q]
            scale = rng.uniform(0.5, 3) if q else 1.0
            rows = [len(q_all) + k for k in range(depth)]
            q_all += [row * scale for row in q]  # (un-normalised on the backend)
            seqs.append(SimpleNamespace(params=params, key=int(rng.integers(0, 2**63)), L=int(rng.integers(5, 500))))
            trees.append((chain, rows))
            host_trees.append(Tree(chain, list(range(-1, depth)), q=[*q, None], sampled=True))
        Q = np.array(q_all) if q_all else np.zeros((0, V))
        trees = [Tree(chain, list(range(-1, len(chain) - 1)), sampled=True, q_backend=(Q, rows)) for chain, rows in trees]
        logits = rng.normal(size=(sum(map(len, trees)), V)).astype(np.float32)
        step = StepLogits(NumpyBackend(), logits)
        fetch_draws(seqs, trees, step)
        offset = 0
        for seq, tree, host_tree in zip(seqs, trees, host_trees):
            rows = slice(offset, offset + len(tree))
            path, bonus = verify_step(tree, step, seq.params, seq.key, seq.L, rows)
            assert (path, bonus) == verify_sampled(host_tree, logits[rows], seq.params, seq.key, seq.L)
            outcomes.add("root" if len(tree) == 1 else "whole" if len(path) == len(tree) else "taken" if len(path) > 1 else "refused")
            offset += len(tree)
    assert outcomes == {"root", "whole", "taken", "refused"}
