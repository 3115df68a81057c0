"""Verification: which drafted tree nodes the target accepts, and the bonus token after them.

`p` is the target distribution (after temperature / top-k / top-p / min-p),
`q` the draft distribution the candidates were sampled from.

- Greedy: from the root follow the child whose token is the target argmax;
  the argmax where no child matches is the bonus. Equals plain greedy decoding.
- Deterministic candidates (n-gram, top-k trees), sampled: try children in
  order, accept child c with probability r(c) / sum(r), where r starts at p and
  loses each rejected sibling's token; if all are rejected, sample the bonus
  from r. Each emitted token follows p exactly.
- Candidates sampled from q (SpecInfer multi-step rule): accept child c with
  min(1, r(c) / q(c)); on rejection r <- max(r - q, 0), renormalised.
"""

from __future__ import annotations

import numpy as np

from .sampling import SamplingParams, sample_from, target_distribution
from .tree import Tree


def verify_greedy(tree: Tree, targets: np.ndarray) -> tuple[list[int], int]:
    """targets: [T] target argmax after each node -> (accepted path of node ids from the root, bonus token)."""
    targets, tokens, node, path = targets.tolist(), tree.token_list, 0, [0]
    while True:
        target = targets[node]
        match = next((c for c in tree.children(node) if tokens[c] == target), None)
        if match is None:
            return path, target
        path.append(match)
        node = match


def verify_sampled(tree: Tree, logits: np.ndarray, params: SamplingParams, uniforms: np.ndarray) -> tuple[list[int], int]:
    """logits: [T, V] host rows; uniforms: T + 1 draws in [0, 1), used in order (the verify_tree kernel's contract)."""
    draws = iter(uniforms)
    node, path = 0, [0]
    while True:
        residual = target_distribution(logits[node], params)  # r = p
        total, accepted = 1.0, None
        for child in tree.children(node):
            token = int(tree.tokens[child])
            u = next(draws)
            if tree.sampled:  # SpecInfer: accept with min(1, r/q), else r <- max(r - q, 0)
                q = tree.q[node]
                if u < min(1.0, residual[token] / total / q[token]):
                    accepted = child
                    break
                residual = np.maximum(residual / total - q, 0.0)
                total = residual.sum()
            else:  # deterministic candidates: accept with r(c) / sum(r), else remove c
                if u * total < residual[token]:
                    accepted = child
                    break
                total -= residual[token]
                residual[token] = 0.0
        if accepted is None:
            return path, sample_from(residual, next(draws))
        path.append(accepted)
        node = accepted


def tree_uniforms(rng: np.random.Generator, T: int) -> np.ndarray:
    """The uniforms a sampled step of a T-node tree draws from its sequence's generator: every child test and
    the bonus draw, in order (T + 1; a one-node tree's token takes the first). Engine.decode_ahead draws the
    same, so a seed gives the same tokens one step ahead or step by step."""
    return rng.random(T + 1)


def verify(tree: Tree, logits, params: SamplingParams, rng: np.random.Generator, rows: slice | None = None) -> tuple[list[int], int]:
    """logits: the step's `StepLogits`; rows: this tree's rows in it.

    Greedy copies back T argmax ids; sampled verification of deterministic candidates runs on the
    backend (the verify_tree kernel on the GPU) and copies back the path and the bonus only.
    """
    rows = rows or slice(0, len(tree))
    if params.greedy:
        return verify_greedy(tree, logits.argmax()[rows])
    uniforms = tree_uniforms(rng, len(tree))
    if tree.sampled:
        return verify_sampled(tree, logits.host()[rows], params, uniforms)
    return logits.backend.verify_tree(logits.device, rows.start, tree, params, uniforms)
