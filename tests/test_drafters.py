"""Token trees and the n-gram drafter against references written from their docstrings (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from minispec import MinispecError, SamplingParams
from minispec.drafters import NGRAM_COMMON, NGRAM_PAYS, NGRAM_PAYS_SAMPLED, NGRAM_STRONG, NgramDrafter, TreeBudget
from minispec.tree import Tree


def random_parents(rng, T: int) -> list[int]:
    return [-1] + [int(rng.integers(0, i)) for i in range(1, T)]


def test_tree_depths_ancestors_and_children():
    rng = np.random.default_rng(0)
    for T in [1, 2, 7, 33, 64]:
        parents = random_parents(rng, T)
        tree = Tree(rng.integers(0, 50, T), parents)
        for i in range(T):
            chain, node = [], i
            while node >= 0:  # walk up to the root
                chain.append(node)
                node = parents[node]
            assert tree.depth[i] == len(chain) - 1
            assert int(tree.anc[i]) == sum(1 << j for j in chain)
            assert tree.children(i) == [c for c in range(T) if parents[c] == i]
        assert tree.token_list == tree.tokens.tolist() and len(tree) == T


@pytest.mark.parametrize("parents", [[0, 0], [-1, 1], [-1, 0, 3, 0], [-1, -1], list(range(-1, 64))])
def test_bad_trees_are_errors(parents):
    with pytest.raises(MinispecError):
        Tree(list(range(len(parents))), parents)


class Seq:
    def __init__(self, tokens, params=SamplingParams(temperature=0)):
        self.tokens = list(tokens)
        self.params = params


def reference_tree(tokens, alpha, budget: TreeBudget, max_ngram=4, max_matches=8, paid=True):
    """The n-gram drafter's tree as its docstring states it, by brute force: the first `max_matches` suffix
    matches (longest n first, most recent first; n >= 2 while alpha < 1/2; none where only the last token matches
    and it follows at NGRAM_COMMON or more earlier places), one trie walk per match adding n
    to every node it passes, value(child) = value(parent) * alpha * weight(child) / weight(parent), and the
    best T - 1 nodes (ties: older first) whose parents are kept, at most `width` children each. paid = False
    (the sequence's tree steps gave fewer than NGRAM_PAYS tokens each): the root alone unless a start's match
    weight (the sum of the suffix lengths that found it) reaches NGRAM_STRONG."""
    L, matches = len(tokens), []
    max_matches = max_matches if budget.width > 1 else 1
    for n in range(min(max_ngram, L - 1), (1 if alpha >= 0.5 else 2) - 1, -1):
        starts = [end + 1 for end in range(n - 1, L) if tokens[end - n + 1 : end + 1] == tokens[L - n :]]
        if n == 1 and not matches and len([s for s in starts if s < L]) >= NGRAM_COMMON:
            break  # the last token alone matches, and it is common
        for start in reversed(starts):
            if start < L and len(matches) < max_matches:
                matches.append((start, n))
    strength = {}
    for start, n in matches:
        strength[start] = strength.get(start, 0) + n
    if not paid and max(strength.values(), default=0) < NGRAM_STRONG:
        matches = []
    nodes, weight = [(tokens[-1], -1)], {0: 0}  # (token, parent) in creation order
    for start, n in matches:
        node = 0
        weight[0] += n
        for token in tokens[start : start + budget.depth]:
            found = next((i for i, (t, p) in enumerate(nodes) if p == node and t == token), None)
            if found is None:
                if len(nodes) == 64:
                    break
                nodes.append((token, node))
                found = len(nodes) - 1
            weight[found] = weight.get(found, 0) + n
            node = found
    value = [float("inf")] + [0.0] * (len(nodes) - 1)
    for i in range(1, len(nodes)):
        p = nodes[i][1]
        value[i] = (1.0 if p == 0 else value[p]) * alpha * weight[i] / weight[p]
    kept, children = [0], {}
    for i in sorted(range(1, len(nodes)), key=lambda i: (-value[i], i)):
        p = nodes[i][1]
        if len(kept) < budget.nodes and p in kept and children.get(p, 0) < budget.width:
            kept.append(i)
            children[p] = children.get(p, 0) + 1
    kept.sort()
    return [nodes[i][0] for i in kept], [-1] + [kept.index(nodes[i][1]) for i in kept[1:]]


@pytest.mark.parametrize("budget", [(16, 12, 4), (8, 7, 1), (24, 3, 8), (64, 12, 4)])
def test_ngram_trees_equal_the_reference(budget):
    """Random text over a small vocabulary (many overlapping matches), with commits that move alpha both ways."""
    rng = np.random.default_rng(budget[0] * 100 + budget[2])
    budget = TreeBudget(*budget)
    cases = set()  # (tree steps have paid, a tree was drafted)
    for trial in range(6):
        drafter = NgramDrafter(budget)
        seq = Seq(rng.integers(0, 4 + trial, 40).tolist())
        if trial % 2:  # the prompt indexed ahead (Engine.run, while the prefill runs): the same trees
            drafter.start([seq])
            assert drafter.index[id(seq)][1] == len(seq.tokens)
        gained, steps = 0, 0  # tokens and steps of trees with more than the root
        for step in range(25):
            tree = drafter.propose([seq], [1 << 20])[0]
            paid = gained >= NGRAM_PAYS * steps
            tokens, parents = reference_tree(seq.tokens, drafter.acceptance(seq), budget, paid=paid)
            cases.add((paid, len(tokens) > 1))
            assert tree.tokens.tolist() == tokens and tree.parents.tolist() == parents, (trial, step)
            assert drafter.propose([seq], [1 << 20])[0] is tree  # asked again before a commit: the same tree
            path = [0]  # accept a random prefix of a random branch
            while tree.children(path[-1]) and rng.random() < 0.7:
                path.append(int(rng.choice(tree.children(path[-1]))))
            accepted = [tree.token_list[n] for n in path[1:]] + [int(rng.integers(0, 6))]
            if len(tree) > 1:
                gained, steps = gained + len(accepted), steps + 1
            drafter.commit(seq, path, accepted)
            seq.tokens += accepted
        drafter.release(seq)
        assert not drafter.history and not drafter.index
    assert {(True, True), (False, False)} <= cases  # drafting, and the gate closed (test_ngram_gate: a strong match past it)


def test_ngram_gate_lets_only_strong_matches_past_trees_that_did_not_pay():
    drafter = NgramDrafter(TreeBudget(16, 15, 4))
    seq = Seq([5, 1, 2, 3, 7, 8, 1, 2, 3])
    assert len(drafter.propose([seq], [1 << 20])[0]) > 1  # no tree step yet: the gate is open
    drafter.commit(seq, [0, 1], [7, 6])  # one draft accepted: 2 tokens < NGRAM_PAYS; alpha 2 / 4 (one-token matches count)
    seq.tokens += [7, 6, 1, 2, 3]  # "1 2 3" again, found at two starts by 3 + 2 + 1: a weak match
    assert drafter.acceptance(seq) == 0.5 and len(drafter.propose([seq], [1 << 20])[0]) == 1
    seq.tokens += [4, 9, 1, 2, 3, 4]  # "1 2 3 4" again: every suffix of 4 down to 1 finds it, 4 + 3 + 2 + 1 >= NGRAM_STRONG
    tree = drafter.propose([seq], [1 << 20])[0]
    assert tree.token_list[:2] == [4, 9]
    drafter.commit(seq, [0, 1], [9, 1])
    assert drafter.history[id(seq)].tree_tokens == 4 and drafter.history[id(seq)].tree_steps == 2
    weak = NgramDrafter(TreeBudget(16, 15, 4), strong=11)  # the gate's settings are the drafter's
    other = Seq(seq.tokens[:9])
    weak.propose([other], [1 << 20])
    weak.commit(other, [0, 1], [7, 6])
    other.tokens = list(seq.tokens)  # ending in the match of weight 10 that passed the default gate
    assert len(weak.propose([other], [1 << 20])[0]) == 1
    # sampled sequences: the same gate at NGRAM_PAYS_SAMPLED tokens a tree step (3); 0 never closes it
    ungated, seqs = NgramDrafter(TreeBudget(16, 15, 4), pays_sampled=0.0), []
    for gated, tokens_given in ((drafter, [7, 6, 2]), (drafter, [7, 6]), (ungated, [7, 6])):
        sampled = Seq([5, 1, 2, 3, 7, 8, 1, 2, 3], SamplingParams(temperature=0.7))
        seqs.append(sampled)  # (alive: the drafter keys its histories by id)
        assert len(gated.propose([sampled], [1 << 20])[0]) > 1  # no tree step yet
        gated.commit(sampled, [0, 1], tokens_given)
        sampled.tokens += tokens_given + [1, 2, 3]  # a weak match again
        drafts = len(gated.propose([sampled], [1 << 20])[0]) > 1
        assert drafts == (gated is ungated or len(tokens_given) >= NGRAM_PAYS_SAMPLED), (tokens_given, drafts)
    closed = seqs[1]
    closed.tokens += [4, 9, 1, 2, 3, 4]  # a strong match passes the closed gate
    assert len(drafter.propose([closed], [1 << 20])[0]) > 1


def test_sampled_draft_children_are_iid_draws_from_q():
    """Candidates.expand_sampled (a draft model's tree for a sampled sequence, SpecInfer): the `width` best frontier
    nodes grow `width` children each, drawn from q = the draft row under the sequence's filters with
    the given generator, in draw order; a node cut short by the limit keeps its first draws; the tree carries each
    grown node's q (leaves None). Over many trees the root's children follow q."""
    from minispec.drafters import Candidates
    from minispec.sampling import sample_from, target_distribution

    V, params = 12, SamplingParams(temperature=0.9, top_k=5)
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, V))
    q_root = target_distribution(logits[0], params)
    c = Candidates(root=7)
    seed_draws = np.random.default_rng(11).random(3)
    assert c.expand_sampled([0], [0], logits[:1], params, 3, 64, np.random.default_rng(11)) == [1, 2, 3]
    assert c.tokens[1:] == [sample_from(q_root, u) for u in seed_draws] and c.parents[1:] == [0, 0, 0]
    assert all(q_root[t] > 0 for t in c.tokens[1:])  # within the top-k
    assert np.isclose(c.score[1], np.log(q_root[c.tokens[1]]))
    # the next level: the two best of the three children grow (ties keep order), the limit cuts the second short
    order = sorted(range(3), key=lambda i: -c.score[1 + i])[:2]
    frontier_rows = logits[[1, 2, 1]]
    added = c.expand_sampled([1, 2, 3], c.growing([1, 2, 3], 2), frontier_rows, params, 2, 7, np.random.default_rng(5))
    assert added == [4, 5, 6] and c.parents[4:] == [1 + order[0], 1 + order[0], 1 + order[1]]
    u = np.random.default_rng(5).random(4)  # two draws a grown node, the second node's second unused
    first, second = (target_distribution(frontier_rows[i], params) for i in order)
    assert c.tokens[4:] == [sample_from(first, u[0]), sample_from(first, u[1]), sample_from(second, u[2])]
    tree = c.tree_sampled()
    assert tree.sampled and len(tree) == 7 and np.array_equal(tree.q[0], q_root) and tree.q[4] is None
    assert np.array_equal(tree.q[1 + order[1]], second)
    # i.i.d.: the root's children over many trees follow q
    counts, draws = np.zeros(V), np.random.default_rng(0)
    for _ in range(4000):
        grown = Candidates(root=0)
        grown.expand_sampled([0], [0], logits[:1], params, 2, 64, draws)
        for token in grown.tokens[1:]:
            counts[token] += 1
    assert 0.5 * np.abs(counts / counts.sum() - q_root).sum() < 0.02
