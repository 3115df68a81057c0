"""Verification: which drafted tree nodes the target accepts, and the bonus token after them.

`p` is the target distribution (after temperature / top-k / top-p / min-p),
`q` the draft distribution the candidates were sampled from. A node at
position p (L + its depth) decides the token at p + 1.

- Greedy: from the root follow the child whose token is the target argmax;
  the argmax where no child matches is the bonus. Equals plain greedy decoding.
- Deterministic candidates (n-gram, top-k trees), sampled: each node draws its
  token from p at u(key, position) (sampling.position_uniforms), and the walk
  is the greedy one on those draws. A path node's draw is the token plain
  sampled decoding draws at that position with the same key, so the output is
  plain sampled decoding's, token for token, whatever was drafted; the draws of
  nodes off the path are never read, and a position's draw decides its token
  once (the next step's nodes sit past the bonus). This is the lossless rule
  "accept child c with probability r(c) / sum(r), r losing each rejected
  sibling" (SpecInfer's for deterministic candidates) in another form: both
  emit c with probability p(c) and else a token of p without the children.
- Candidates sampled from q (SpecInfer multi-step rule): accept child c with
  min(1, r(c) / q(c)); on rejection r <- max(r - q, 0), renormalised. The tests
  at a node at position p draw u(key, p) of streams 1, 2, ... in turn. A chain
  drawn on the backend (Tree.q_backend: one child a node) is tested there, every
  node at once (backend.specinfer_rows): whether its child is accepted, and the
  token drawn from r if not; the walk reads one int a node (verify_tested).
"""

from __future__ import annotations

import numpy as np

from .sampling import SamplingParams, position_uniform, position_uniforms, sample_from, target_distribution
from .tree import Tree


def verify_chosen(tree: Tree, chosen: np.ndarray) -> tuple[list[int], int]:
    """chosen: [T] the token the target chose after each node (its argmax, or its draw at the node's position)
    -> (accepted path of node ids from the root, bonus token)."""
    chosen, tokens, node, path = chosen.tolist(), tree.token_list, 0, [0]
    while True:
        target = chosen[node]
        match = next((c for c in tree.children(node) if tokens[c] == target), None)
        if match is None:
            return path, target
        path.append(match)
        node = match


def node_uniforms(key: int, tree: Tree, L: int) -> np.ndarray:
    """float64 [T]: each node's draw of a tree rooted at position L (the node at L + depth)."""
    return position_uniforms(key, L + tree.depth)


def verify_sampled(tree: Tree, logits: np.ndarray, params: SamplingParams, key: int, L: int) -> tuple[list[int], int]:
    """SpecInfer's rule for a tree whose candidates were sampled from q (tree.q); logits: [T, V] host rows."""
    node, path = 0, [0]
    while True:
        residual, total, accepted = target_distribution(logits[node], params), 1.0, None  # r = p
        q, children, position = tree.q[node], tree.children(node), L + int(tree.depth[node])
        tests = [position_uniform(key, position, stream) for stream in range(1, len(children) + 2)]
        for child, u in zip(children, tests):
            token = int(tree.tokens[child])
            if u < min(1.0, residual[token] / total / q[token]):  # accept with min(1, r/q), else r <- max(r - q, 0)
                accepted = child
                break
            residual = np.maximum(residual / total - q, 0.0)
            total = residual.sum()
        if accepted is None:
            return path, sample_from(residual, tests[-1])
        path.append(accepted)
        node = accepted


def verify_tested(tree: Tree, tests: np.ndarray) -> tuple[list[int], int]:
    """A chain's path and bonus from its nodes' SpecInfer tests (backend.specinfer_rows, [T]: -1 where the node's
    child is accepted, else the token drawn there; the last node's is p's draw)."""
    tests, path = tests.tolist(), [0]
    while tests[path[-1]] == -1:
        path.append(tree.children(path[-1])[0])
    return path, tests[path[-1]]


def fetch_draws(seqs, trees: list[Tree], logits) -> None:
    """Queue the draws verify() reads for a step's trees: every node of each sampled sequence's tree of deterministic
    candidates at its position (node_uniforms), all in one launch (StepLogits.fetch_draws); and every node's test of
    each chain drawn on the backend, in another (StepLogits.fetch_tests: the uniforms of streams 1 and 2 at the node's
    position, verify_sampled's)."""
    rows, params, uniforms, offset = [], [], [], 0
    tested, Q = ([], [], [], [], [], []), None  # rows, params, u, q rows, children, residual u; the chains' q rows
    for seq, tree in zip(seqs, trees):
        if not seq.params.greedy and tree.q_backend is not None:
            assert Q is None or tree.q_backend[0] is Q, "a step's backend chains come from one proposal, which shares its q rows"
            Q, q_rows = tree.q_backend
            positions = seq.L + np.arange(len(tree))
            for part, values in zip(tested, (range(offset, offset + len(tree)), [seq.params] * len(tree),
                                             position_uniforms(seq.key, positions, 1), [*q_rows, -1],
                                             tree.token_list[1:] + [0], position_uniforms(seq.key, positions, 2))):
                part.extend(values)
        elif not seq.params.greedy and not tree.sampled:
            rows += range(offset, offset + len(tree))
            params += [seq.params] * len(tree)
            uniforms.append(node_uniforms(seq.key, tree, seq.L))
        offset += len(tree)
    if rows:
        logits.fetch_draws(rows, params, np.concatenate(uniforms))
    if Q is not None:
        logits.fetch_tests(*tested[:3], Q, *tested[3:])


def verify(tree: Tree, logits, params: SamplingParams, key: int, L: int, rows: slice) -> tuple[list[int], int]:
    """One tree of a step, rooted at position L, its rows `rows` of the step's StepLogits: greedy on the argmax ids,
    SpecInfer on the tests fetch_draws queued for a chain drawn on the backend, on the host rows for other candidates
    drawn from q, else on the node draws fetch_draws queued."""
    if params.greedy:
        return verify_chosen(tree, logits.argmax()[rows])
    if tree.q_backend is not None:
        return verify_tested(tree, logits.tests()[rows])
    if tree.sampled:
        return verify_sampled(tree, logits.host()[rows], params, key, L)
    return verify_chosen(tree, logits.draws()[rows])
