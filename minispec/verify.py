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

from .sampling import SamplingParams, target_distribution
from .tree import Tree


def verify_greedy(tree: Tree, targets: np.ndarray) -> tuple[list[int], int]:
    """targets: [T] target argmax after each node -> (accepted path of node ids from the root, bonus token)."""
    node, path = 0, [0]
    while True:
        target = int(targets[node])
        match = next((c for c in tree.children(node) if tree.tokens[c] == target), None)
        if match is None:
            return path, target
        path.append(match)
        node = match


def verify_sampled(tree: Tree, logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> tuple[list[int], int]:
    node, path = 0, [0]
    while True:
        residual = target_distribution(logits[node], params)  # r = p
        accepted = None
        for child in tree.children(node):
            token = int(tree.tokens[child])
            if tree.sampled:
                q = tree.q[node]
                if rng.random() < min(1.0, residual[token] / q[token]):
                    accepted = child
                    break
                residual = np.maximum(residual - q, 0.0)
            else:
                if rng.random() < residual[token]:
                    accepted = child
                    break
                residual[token] = 0.0
            total = residual.sum()
            if total <= 0:  # p is fully covered by rejected candidates: cannot happen for valid p, q
                break
            residual /= total
        if accepted is None:
            return path, int(rng.choice(len(residual), p=residual / residual.sum()))
        path.append(accepted)
        node = accepted


def verify(tree: Tree, logits, params: SamplingParams, rng: np.random.Generator, rows: slice | None = None) -> tuple[list[int], int]:
    """logits: the step's `StepLogits`; rows: this tree's rows in it (greedy copies back argmax ids only)."""
    rows = rows or slice(0, len(tree))
    if params.greedy:
        return verify_greedy(tree, logits.argmax()[rows])
    if len(tree) == 1:  # plain sampling: drawn on the device, only the token comes back
        return [0], logits.choose(rows.start, params, rng)
    return verify_sampled(tree, logits.host()[rows], params, rng)
