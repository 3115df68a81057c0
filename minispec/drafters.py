"""Drafters: who proposes the token tree of each step.

Every drafter answers `propose(seqs, budgets) -> [Tree]` (root = the sequence's
last token, not yet cached; `budgets[b]` caps T by the context left) and hears
back what was accepted through `commit`; `start(seqs)` comes once the prompts
are prefilled (their prefill may still run on the device), `release` at the
end. A tree budget (T, depth, width) with width 1 is a chain, so chains and
trees run on the same code.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .errors import MinispecError
from .sampling import sample_from, target_distribution, top_logprobs
from .step import StepItem, build_plan
from .tree import MAX_TREE_NODES, Tree


@dataclass(frozen=True)
class TreeBudget:
    nodes: int = 16  # T, root included
    depth: int = 12  # longest draft path
    width: int = 4  # continuations / children per expanded node

    def __post_init__(self):
        if not 1 <= self.nodes <= MAX_TREE_NODES:
            raise MinispecError(f"tree budget: T must be in 1..{MAX_TREE_NODES} nodes, got {self.nodes}")
        if self.depth < 1 or self.width < 1:
            raise MinispecError("tree budget: depth and width must be >= 1")

    @classmethod
    def parse(cls, text) -> "TreeBudget":
        """"T,depth,width" (e.g. "16,12,4"), a tuple, or None for the default."""
        if text is None:
            return cls()
        if isinstance(text, TreeBudget):
            return text
        parts = text.split(",") if isinstance(text, str) else list(text)
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise MinispecError(f"tree budget {text!r}: expected T,depth,width such as 16,12,4") from None
        if len(values) != 3:
            raise MinispecError(f"tree budget {text!r}: expected T,depth,width such as 16,12,4")
        return cls(*values)


# When a greedy tree step pays (NgramDrafter): a tree step with its host work and the stretch of decoding ahead it
# breaks costs ~2.6 plain steps end to end on the default model (H100, stop 24: summarise's 10 tree steps cost 5.4 ms
# more than the replay's stop 18 costs had them, notes/ngram_gate_stop24.log), so a sequence whose tree steps have
# given fewer than NGRAM_PAYS tokens each drafts only where a suffix match is strong: match weight >= NGRAM_STRONG,
# the sum of the suffix lengths that found the start (a start the last 4 tokens find weighs 4 + 3 + 2, + 1 while
# one-token matches count; one the last 3 find, 6 at most). Until its first tree step a sequence drafts freely (a prior
# of one NGRAM_PAYS-token step, which the replays of stop 24 used, changes no decision: it sits on the threshold).
# Replayed on the 12 stored prompts at those costs: 1.04x -> 1.08x plain in all, summarise 0.93x -> 1.01x, list
# 0.75x -> 0.99x, the copying prompts unchanged.
# Stop 34 set both again for the device's drafting (Engine.speculate_on_device): its tree steps run back to back at
# ~0.69 ms, but each stretch of them costs ~0.3 ms of idle GPU at its start and at its end, against 0.295 ms a plain
# step, so a stretch of one tree step pays from about 4.5 tokens; and a strong match is one that every suffix of 4
# down to 1 tokens finds (4 + 3 + 2 + 1; one-token matches count while the drafts are accepted half the time). The
# replay at those costs (notes/scripts/ngram_offline.py device, costs fitted to bench e2e's measured 0.87 / 1.81 /
# 2.09x): 1.00x -> 1.04x plain in all, summarise 0.87x -> 0.92x, json 0.79x -> 0.94x, shorten 0.79x -> 0.87x, no
# prompt slower (3 and 8 had been set for host-drafted steps; notes/ngram_gate_stop34.log).
# So a gate that closed while alpha < 1/2 stays closed for the rest of the generation: one-token matches are not looked
# up then, and a start weighs at most 4 + 3 + 2 = 9. Replayed (stop 43, notes/ngram_gate_reopen_stop43.log), letting
# strong matches reopen it lost on json and shorten (0.94x -> 0.79x, 0.87x -> 0.79x), and never reopening a closed gate
# at all lost a prompt whose copying comes late (1.68x -> 0.99x): the rule is the best of the three.
NGRAM_PAYS = 4.5
NGRAM_STRONG = 10

# The same gate for sampled sequences, whose trees were drafted and verified on the host step by step: there a tree
# step cost ~1.5 ms against 0.36 ms a plain sampled step one ahead (H100, stop 36, from the steps and rates below).
# Ungated since stop 25, whose one-seed try had a gate at 2 tokens cut extract 1.67x -> 0.90x; sampled outputs now
# copy less (2.5-3.1 tokens a tree step) and plain sampled decoding runs 1.7x faster. By turns over 6-8 seeds in
# three calls (notes/sampled_gate_h100_stop36.log, geometric means of n-gram / plain sampled per seed, means of the
# calls): no gate 0.89 / 0.90 / 1.02x on summarise / rewrite / extract, 3 tokens 0.95 / 0.93 / 1.05x, 4.5 mixed.
# Since stop 45 one sampled sequence drafts on the device too (Engine.speculate_on_device), its tree steps as cheap
# as greedy ones; by turns over 6 seeds on an H200 (notes/sampled_gate_h200_stop45.log) no gate, 3 and 4.5 gave
# 0.80 / 0.96 / 0.94x on summarise and within 0.07 of each other elsewhere: 3 stays.
NGRAM_PAYS_SAMPLED = 3.0
# ... and its strong match: stop 45's gate at 1000 tokens left trees only at strong matches and still measured ~0.90x,
# but a sampled gate that no match opens measured within the seeds' spread of this one at temperatures 0.7 and 0.3
# (0.95 / 1.02 / 0.93x against 0.92 / 1.06 / 1.00x; notes/sampled_gate_strong_h200_stop46.log): the greedy value.
NGRAM_STRONG_SAMPLED = NGRAM_STRONG

# A token that alone matches (no longer suffix does) and follows at NGRAM_COMMON or more earlier places is a common
# one ("the", "a"), whose continuations disagree: no draft. Replayed on the 12 stored prompts at stop 31's H100 costs
# (notes/scripts/ngram_offline.py; plain one ahead 0.296 ms, a T = 16 tree 0.72 ms + 0.15-0.3 ms of host): list
# 0.91x -> 1.01x (0.82x -> 0.93x at 0.3 ms), summarise +0.01-0.02x, no prompt slower; 4 would cost rewrite 1.92x -> 1.75x.
NGRAM_COMMON = 5

# The n-gram drafter's default: 16 nodes, paths of up to 15 (the depth of the default TreeBudget, 12, is a draft
# model's number of draft forwards). Replayed on the 12 stored prompts' greedy outputs (notes/scripts/ngram_offline.py,
# H100 step costs of stop 18): 1.152x -> 1.156x plain in all, a question answered from its text (qa_doc) 3.96x ->
# 4.91x, no prompt slower.
NGRAM_BUDGET = TreeBudget(16, 15, 4)

# A draft model's default: a chain of 3 drafts, proposed with one wait (ModelDrafter.propose_chains). A tree
# needs the host at every level (which nodes grow next); on an H200 the default model drafting for itself, greedy,
# ran 2.0-2.2x faster on chains of 5 than on the tree 16,12,4 (self:8 677-730 against 336-346 tokens/s, self:20
# 529-569 against 276-294) though the trees took more tokens a forward (1.09-1.34 against 1.00-1.25;
# notes/draft_model_chains_h200_stop54.log), and chains of 3 ran 1.3-1.4x chains of 5 at the same tokens a forward
# (self:8 763-851, self:20 641-728; notes/draft_chain_length_h200_stop54.log): a verify step of 4 nodes is cheaper
# than one of 6 (on the default model cluster decode's 4-row instance, not the 16-row fused kernel; on 8B shapes a
# 4-node step is 1.02x the plain step, a 16-node one 1.11x, and 6 nodes take the 8-row bucket between), and a draft
# accepted at rate a per node gives as many tokens a step from 3 drafts as from 5 up to a ~ 0.8 with a 1B-to-8B
# draft's costs. The CPU kept the tree until stop 55, on the reasoning that there a level's cost is its draft
# forward whatever its shape; but the tree's levels are 12 forwards over up to 16 rows against the chain's 3 of one,
# and `minispec bench spec --device cpu` ran the chain 2.6-3.1x faster (self:8 11.5-13.0 against 4.4-4.7 tokens/s,
# self:20 8.7-11.0 against 3.4-3.8, at 0.96-1.22 against 1.00-1.32 tokens a forward; notes/bench_spec_cpu_stop55.log).
DRAFT_BUDGET = TreeBudget(4, 3, 1)
# A chain proposal's level 0 (ModelDrafter.catch_up) goes as chain trees up to this many rows in all (a step's rows
# that replay a tree step's graph); past it (a prompt's first catch-up) as causal chunks, a prefill.
CATCH_UP_CHAIN_ROWS = 64


def best_subtree(tokens: list[int], parents: list[int], score, nodes: int, width: int | None = None) -> Tree:
    """The root and the best-scoring candidates (nodes in all, at most `width` children each) as a Tree.

    Candidates are in creation order (parents first) and a child never outscores its parent, so taking
    them by descending score (ties: older first) keeps every chosen node's ancestors.
    """
    if len(tokens) <= nodes and (width is None or len(set(parents)) == len(parents) or max(Counter(parents[1:]).values()) <= width):
        return Tree(tokens, parents)  # every candidate fits (a copied span: one chain, no parent twice)
    kept, children = {0}, {}
    # descending score; a stable sort keeps ties in creation order (older first)
    for node in sorted(range(1, len(tokens)), key=score.__getitem__, reverse=True):
        if len(kept) >= nodes:
            break
        parent = parents[node]
        if parent in kept and (width is None or children.get(parent, 0) < width):
            kept.add(node)
            children[parent] = children.get(parent, 0) + 1
    chosen = sorted(kept)  # creation order is topological
    index = {node: i for i, node in enumerate(chosen)}
    return Tree([tokens[n] for n in chosen], [-1] + [index[parents[n]] for n in chosen[1:]])


def continuation_trie(root: int, continuations) -> tuple[list[int], list[int], list[int]]:
    """The trie of (continuation, weight) pairs under `root`, nodes in creation order (a continuation's new nodes
    after its predecessors'), at most MAX_TREE_NODES: (tokens, parents, weight), weight[i] the sum of the weights of
    the continuations through node i.

    Each continuation shares the path of the earlier one it agrees with longest and adds a fresh chain after it: a
    few list comparisons per continuation instead of a dict lookup per token (this runs on the host between two
    tree steps, while the GPU waits)."""
    tokens, parents, weight, paths = [root], [-1], [0], []  # paths: (continuation, its nodes) so far
    for continuation, n in continuations:
        weight[0] += n
        shared, along = 0, ()
        for other, nodes in paths:
            if other[0] != continuation[0] or len(nodes) <= shared:
                continue
            k, end = 1, min(len(continuation), len(nodes))
            while k < end and other[k] == continuation[k]:
                k += 1
            if k > shared:
                shared, along = k, nodes
        for node in along[:shared]:
            weight[node] += n
        fresh = continuation[shared : shared + MAX_TREE_NODES - len(tokens)]  # a full trie takes no new node
        first = len(tokens)
        nodes = [*along[:shared], *range(first, first + len(fresh))]
        if fresh:
            tokens += fresh
            parents.append(along[shared - 1] if shared else 0)
            parents += range(first, first + len(fresh) - 1)
            weight += [n] * len(fresh)
        paths.append((continuation, nodes))
    return tokens, parents, weight


def ngram_tree(root: int, continuations, alpha: float, nodes: int, width: int) -> Tree:
    """The n-gram drafter's tree from its (continuation, weight) pairs: their trie under `root`, each node valued
    value(child) = value(parent) * alpha * weight(child) / weight(parent), the best `nodes` kept (best_subtree).
    The device's drafter (kernels/ngram_step.cu) computes the same doubles in the same order."""
    tokens, parents, weight = continuation_trie(root, continuations)
    value = [math.inf] * len(tokens)
    for node in range(1, len(tokens)):  # parents come before children
        parent = parents[node]
        value[node] = (1.0 if parent == 0 else value[parent]) * alpha * weight[node] / weight[parent]
    return best_subtree(tokens, parents, value, nodes, width)


def scan_match_starts(tokens: np.ndarray, max_ngram: int, max_matches: int, shortest: int, common: int) -> dict[int, int]:
    """NgramDrafter.match_starts by a scan of the whole sequence instead of an n-gram index (the device drafter's
    way, kernels/ngram_step.cu, whose reference this is): {start: weight}, longest match first, most recent first.
    tokens: the sequence, int array; shortest: 1 while the sequence's drafts are accepted at least half the time;
    common: NgramDrafter.common."""
    found, matches, total = {}, 0, len(tokens)
    for n in range(min(max_ngram, total - 1), shortest - 1, -1):
        hit = np.ones(total - n, dtype=bool)  # hit[e - n + 1]: the n tokens ending at e equal the suffix (e < total - 1)
        for k in range(n):
            hit &= tokens[k : total - n + k] == tokens[total - n + k]
        starts = (np.flatnonzero(hit)[::-1] + n).tolist()  # most recent first; the suffix itself is not among them
        if n == 1 and not found and len(starts) >= common:
            break  # a common token alone matches (`common` counts the suffix itself too)
        for start in starts:
            found[start] = found.get(start, 0) + n
            matches += 1
            if matches >= max_matches:
                return found
    return found


def count_acceptance(tree: Tree, path, accepted: float, tries: float) -> tuple[float, float]:
    """NgramHistory's acceptance counts after a verified path: every drafted child of an accepted node is a try,
    accepted where the path goes on (the device's drafter counts the same, kernels/ngram_step.cu)."""
    for j, node in enumerate(path):
        if tree.children(node):
            tries += 1
            accepted += j + 1 < len(path)
    return accepted, tries


def gate_open(tree_tokens: int, tree_steps: int, weight: int, pays: float, strong: int) -> bool:
    """Whether a sequence drafts: its tree steps have paid (`pays` tokens each), or its best match start weighs
    `strong` or more (NgramDrafter.pays)."""
    return tree_tokens >= pays * tree_steps or weight >= strong


class NoDrafter:
    """Plain decoding: the tree is the root alone (T = 1)."""

    host_only = True  # proposing runs no model: the engine may ask after every token it decodes ahead

    def start(self, seqs) -> None:
        """The prompts are in the target's cache and the prefill's last step may still run on the device: work that
        needs only the prompts goes here, off the first proposal's critical path."""

    def propose(self, seqs, budgets) -> list[Tree]:
        return [Tree.single(seq.tokens[seq.L]) for seq in seqs]

    def commit(self, seq, path, accepted) -> None:
        pass

    def release(self, seq) -> None:
        pass


@dataclass
class NgramHistory:
    """One sequence's state in the n-gram drafter."""

    accepted: float = 1.0  # drafted children of accepted nodes that were accepted (Laplace prior 1 of 2)
    tries: float = 2.0  # drafted children of accepted nodes
    tree_tokens: int = 0  # tokens that tree steps (more than the root) gave
    tree_steps: int = 0
    tree: Tree | None = None  # the last proposal
    asked: tuple | None = None  # (token count, node cap) it answered, until the next commit


class NgramDrafter(NoDrafter):
    """Prompt lookup: continuations of recent suffix matches in prompt + output, merged into a tree.

    Matches of the longest suffix come first (most recent first), then shorter
    ones; each continuation weighs its match length. A node's value estimates
    the chance the target reaches it: value(child) = value(parent) * alpha *
    weight(child) / weight(parent), where alpha is this sequence's measured
    rate at which a drafted child of an accepted node is accepted. The best
    T - 1 nodes are kept: deep single branches when drafts are reliable
    (copying), bushier trees when they are not. Width 1 uses the first
    continuation only: a chain.

    A one-token match is weak evidence: it drafts only while alpha >= 1/2 (the
    prior), and not for a common token (NGRAM_COMMON places or more), so free
    text, where such drafts mostly fail, leaves the steps to
    plain decoding one step ahead (Engine.decode_ahead) until a longer match
    shows. Replayed offline with H100 step costs on the default model's greedy
    outputs of 12 prompts (notes/scripts/ngram_offline.py), this took n-gram
    speculation from 1.06x to 1.16x plain in all (the worst prompt 0.80x ->
    0.93x) and left the copying prompts as they were.

    A tree step must also pay for itself: once this sequence's tree steps
    give fewer than NGRAM_PAYS tokens each (NGRAM_PAYS_SAMPLED when it
    samples), it drafts only on a strong match (NGRAM_STRONG), and plain
    decoding ahead runs the rest.
    """

    def __init__(self, budget: TreeBudget, max_ngram: int = 4, max_matches: int = 8, *, pays: float = NGRAM_PAYS,
                 strong: int = NGRAM_STRONG, common: int = NGRAM_COMMON, pays_sampled: float = NGRAM_PAYS_SAMPLED,
                 strong_sampled: int = NGRAM_STRONG_SAMPLED):
        self.budget = budget
        self.max_ngram = max_ngram
        self.max_matches = max_matches if budget.width > 1 else 1
        self.pays_rate, self.strong, self.common = pays, strong, common  # the gate (NGRAM_PAYS, NGRAM_STRONG, NGRAM_COMMON)
        self.pays_sampled = pays_sampled  # the gate's `pays` for sampled sequences (NGRAM_PAYS_SAMPLED; 0: never closed)
        self.strong_sampled = strong_sampled  # ... and its `strong` (NGRAM_STRONG_SAMPLED)
        self.history = {}  # id(seq) -> NgramHistory
        self.index = {}  # id(seq) -> (n-gram -> continuation starts, oldest first; tokens indexed so far)

    def update_index(self, seq) -> dict:
        """Index the n-grams ending at every token emitted since the last call: O(max_ngram) per token."""
        grams, done = self.index.get(id(seq), ({}, 0))
        tokens = seq.tokens
        for end in range(done, len(tokens)):  # the n-gram tokens[end-n+1 .. end] continues at end + 1
            for n in range(1, min(self.max_ngram, end + 1) + 1):
                grams.setdefault(tuple(tokens[end - n + 1 : end + 1]), []).append(end + 1)
        self.index[id(seq)] = (grams, len(tokens))
        return grams

    def start(self, seqs) -> None:
        """Index each prompt while the prefill runs (4 n-grams a token: ~230 µs for a 100-token prompt on the
        2-core development machine, which the first proposal would otherwise spend with the GPU idle)."""
        for seq in seqs:
            self.update_index(seq)

    def acceptance(self, seq) -> float:
        """alpha: the Laplace-smoothed rate at which this sequence's drafted children of accepted nodes were accepted."""
        history = self.history.setdefault(id(seq), NgramHistory())
        return history.accepted / history.tries

    def pays(self, seq, continuations) -> bool:
        """Whether this sequence drafts now: its tree steps have paid (NGRAM_PAYS tokens each, NGRAM_PAYS_SAMPLED
        when it samples), or a match is strong."""
        history = self.history[id(seq)]
        weight = max((n for _, n in continuations), default=0)
        return gate_open(history.tree_tokens, history.tree_steps, weight, *self.gate(seq.params.greedy))

    def gate(self, greedy: bool) -> tuple[float, int]:
        """(pays, strong) of the gate for a greedy or a sampled sequence."""
        return (self.pays_rate, self.strong) if greedy else (self.pays_sampled, self.strong_sampled)

    def continuations(self, seq) -> list[tuple[list[int], int]]:
        """(continuation, weight) pairs, one per match start (match_starts), its tokens up to the budget's depth."""
        tokens, depth = seq.tokens, self.budget.depth
        return [(tokens[start : start + depth], weight) for start, weight in self.match_starts(seq).items()]

    def match_starts(self, seq) -> dict[int, int]:
        """{start: weight} of the `max_matches` first suffix matches, longest match first, most recent first (the
        dict's order); one-token matches only while the sequence's drafts are accepted at least half the time.
        A start found by several suffix lengths comes once (at its first place), weighing the sum of its
        match lengths: the trie it builds is that of one continuation per match, walked once."""
        grams, tokens, found, matches = self.update_index(seq), seq.tokens, {}, 0
        shortest = 1 if self.acceptance(seq) >= 0.5 else 2
        for n in range(min(self.max_ngram, len(tokens) - 1), shortest - 1, -1):
            starts = grams.get(tuple(tokens[-n:]), ())
            if n == 1 and not found and len(starts) > self.common:  # (one start is the suffix itself)
                break  # a common token alone matches: its continuations disagree (NGRAM_COMMON)
            for start in reversed(starts):
                if start >= len(tokens):  # the suffix itself: nothing follows it yet
                    continue
                found[start] = found.get(start, 0) + n
                matches += 1
                if matches >= self.max_matches:
                    break
            if matches >= self.max_matches:
                break
        return found

    def propose(self, seqs, budgets) -> list[Tree]:
        trees = []
        for seq, budget in zip(seqs, budgets):
            alpha = self.acceptance(seq)
            history = self.history[id(seq)]
            if history.asked == (len(seq.tokens), budget):  # asked again before a commit (Engine.drafts_ready, then the step)
                trees.append(history.tree)
                continue
            continuations = self.continuations(seq)
            if not self.pays(seq, continuations):
                continuations = []  # the root alone: plain decoding ahead until a tree pays
            tree = ngram_tree(int(seq.tokens[-1]), continuations, alpha, min(self.budget.nodes, budget), self.budget.width)
            history.tree, history.asked = tree, (len(seq.tokens), budget)
            trees.append(tree)
        return trees

    def commit(self, seq, path, accepted) -> None:
        history = self.history[id(seq)]
        history.asked = None
        if len(history.tree) > 1:
            history.tree_tokens += len(accepted)
            history.tree_steps += 1
        history.accepted, history.tries = count_acceptance(history.tree, path, history.accepted, history.tries)

    def release(self, seq) -> None:
        self.history.pop(id(seq), None)
        self.index.pop(id(seq), None)


class Candidates:
    """Draft nodes of one sequence (node 0 = root) with cumulative draft log-probabilities."""

    def __init__(self, root: int):
        self.tokens, self.parents, self.score = [root], [-1], [0.0]
        self.q = {}  # node -> the draft distribution its children were drawn from (expand_sampled)

    def growing(self, nodes: list[int], width: int) -> list[int]:
        """Where in `nodes` the `width` best by score are (ties: the earlier first): the nodes a level expands."""
        return sorted(range(len(nodes)), key=lambda i: -self.score[nodes[i]])[:width]

    def expand(self, nodes: list[int], grow: list[int], top: tuple[np.ndarray, np.ndarray], width: int, limit: int) -> list[int]:
        """Give the `width` best of `nodes` (at positions `grow`: growing(nodes, width)) their `width` most probable
        children; top: the draft's (ids, logprobs) [len(grow), >= width] of those nodes' rows in grow's order
        (sampling.top_logprobs: the backend ranks the rows, so only k ids and log-probabilities a row come to the
        host, and only the growing rows are ranked)."""
        ids, logprobs = top
        added = []
        for row, i in enumerate(grow):
            for token, logprob in zip(ids[row][:width].tolist(), logprobs[row][:width].tolist()):
                if len(self.tokens) >= limit:
                    return added
                self.tokens.append(token)
                self.parents.append(nodes[i])
                self.score.append(self.score[nodes[i]] + logprob)
                added.append(len(self.tokens) - 1)
        return added

    def expand_sampled(self, nodes: list[int], grow: list[int], logits: np.ndarray, params, width: int, limit: int, rng) -> list[int]:
        """Give the `width` best of `nodes` (at positions `grow`: growing(nodes, width)) `width` children each, drawn
        i.i.d. from their q (the draft's distribution, rows of `logits`, one a node, under the sequence's sampling
        `params`) with the sequence's generator: a SpecInfer tree. Which
        nodes grow depends on their own values, never on their children's, and a node cut short by `limit` keeps
        the first of its draws: so the children of every node are i.i.d. draws from its q, which the SpecInfer rule
        (verify.verify_sampled) needs to be lossless. No pruning by value follows (tree_sampled)."""
        added = []
        for i in grow:
            if len(self.tokens) >= limit:
                break
            node = nodes[i]
            q = self.q[node] = target_distribution(logits[i], params)
            for token in sample_from(q, rng.random(width)).tolist():
                if len(self.tokens) >= limit:
                    return added
                self.tokens.append(token)
                self.parents.append(node)
                self.score.append(self.score[node] + math.log(q[token]))
                added.append(len(self.tokens) - 1)
        return added

    def tree(self) -> Tree:
        return Tree(self.tokens, self.parents)

    def tree_sampled(self) -> Tree:
        """The whole sampled tree, each grown node's q in its row (leaves: None)."""
        return Tree(self.tokens, self.parents, q=[self.q.get(node) for node in range(len(self.tokens))], sampled=True)

    def best(self, nodes: int) -> Tree:
        return best_subtree(self.tokens, self.parents, self.score, nodes)


class ModelDrafter(NoDrafter):
    """A draft model (another checkpoint, or the target's first K layers) growing the tree level by level.

    EAGLE-2 style: each level expands the `width` best new nodes (by cumulative
    draft log-probability) into their `width` most probable children, with one
    draft forward per level over the new nodes (the same tree attention as the
    target: node i at position L + i, the root at L); the best T - 1 nodes and
    the root make the tree. The draft keeps its own paged cache; tokens the
    target accepted are fed to it at the start of the next proposal. Chains
    (width 1: the default, DRAFT_BUDGET) need no choice of nodes
    between levels, and run their levels without the host (propose_chains).

    A sampled sequence's children are instead drawn from q, the draft's distribution under the sequence's
    temperature and filters (SpecInfer): verified by the SpecInfer rule, a draft that agrees with the target is
    accepted however spread out p is, where the top-k children are accepted only with their share of p. Those
    trees stop growing at T nodes and are not pruned (Candidates.expand_sampled says why).
    """

    host_only = False  # proposing runs the draft model, and its cache follows the target through commit
    device_chains = True  # chains proposed with one wait (propose_chains); False: level by level (tests)
    device_tests = True  # a sampled chain's q stays on the backend, where the target tests it; False: on the host (tests)
    chain_catch_up = True  # a chain proposal's level 0 as a chain tree where short (catch_up); False: a causal chunk

    def __init__(self, model, budget: TreeBudget, num_pages: int, page_size: int, prefix_caching: bool = False):
        self.model = model
        self.budget = budget
        self.cache = model.new_cache(num_pages, page_size)
        self.state = {}  # id(seq) -> DraftState
        # the draft's own pages kept between requests, as the target's (Engine.prefix_caching): a chat's next turn
        # feeds the draft only what the kept pages lack
        self.prefix_caching = prefix_caching

    def forward(self, items, counts: list[int], greedy: list[bool], grows: list[list[int]]) -> list:
        """The draft's rows of the items, `counts[b]` rows for sequence b: for a greedy sequence the top `width`
        (ids, logprobs) of its rows `grows[b]` (the nodes that grow next, Candidates.growing), for a sampled one its
        logits rows (float32 [counts[b], V], its q). A level of greedy sequences alone copies back only the tops (the
        backend ranks the rows: on the GPU ~0.1 MB a level instead of the [rows, V] logits, and no host softmax over
        V; the NumPy backend ranks the growing rows alone)."""
        logits = self.model.forward(build_plan(items, self.cache.page_size), self.cache)
        width, offsets = self.budget.width, np.cumsum([0, *counts]).tolist()
        wanted = [[offsets[b] + i for i in grow] for b, grow in enumerate(grows)]
        if all(greedy):
            ids, logprobs = logits.top_logprobs(width, [row for rows in wanted for row in rows])
            ends = np.cumsum([0, *map(len, wanted)]).tolist()
            return [(ids[a:b], logprobs[a:b]) for a, b in zip(ends, ends[1:])]
        rows = logits.host()
        return [top_logprobs(rows[w], width) if g else rows[a:b] for a, b, g, w in zip(offsets, offsets[1:], greedy, wanted)]

    def catch_up(self, seqs, as_chains: bool = False) -> list[StepItem]:
        """Level 0 of a proposal: per sequence, every token the draft has not cached yet, the root included, as a
        causal chunk (its last row's logits), or with as_chains, where no sequence's prompt is among them and they
        are CATCH_UP_CHAIN_ROWS rows or fewer in all, as a chain tree (every row's logits): the same keys and
        positions, but a tree step, which the decode kernels take (a small draft's fused layers or cluster decode)
        where a causal chunk runs layer by layer."""
        spans = []  # per sequence: (its draft page table, the first position to feed, the tokens from there)
        chains = as_chains  # (a sequence's first catch-up, its prompt, is a prefill)
        for seq in seqs:
            state = self.state.get(id(seq))
            if state is None:  # its first proposal: from position 0, or past the kept pages that hold its tokens
                chains = False
                table = self.cache.reuse_prefix(seq.tokens, seq.L) if self.prefix_caching else []
                state = self.state[id(seq)] = DraftState(table, len(table) * self.cache.page_size)
            new = seq.tokens[state.cached : seq.L + 1]
            self.cache.prepare(state.table, state.cached, len(new))
            spans.append((state.table, state.cached, new))
            state.cached = seq.L + 1
            state.chain, state.fed = 0, True
        chains = chains and sum(len(new) for *_, new in spans) <= CATCH_UP_CHAIN_ROWS
        return [StepItem.tree(table, L, Tree.chain(new)) if chains else StepItem.chunk(table, L, new) for table, L, new in spans]

    def propose(self, seqs, budgets) -> list[Tree]:
        caps = self.fit(seqs, [min(self.budget.nodes, cap) for cap in budgets])
        drafting = [b for b, cap in enumerate(caps) if cap > 1]
        trees = [Tree.single(seq.tokens[seq.L]) for seq in seqs]
        for seq, cap in zip(seqs, caps):
            if cap == 1 and id(seq) in self.state:  # no draft this step: nothing fed (commit keeps the draft's cache)
                self.state[id(seq)].fed = False
        if drafting:
            for b, tree in zip(drafting, self.propose_trees([seqs[b] for b in drafting], [caps[b] for b in drafting])):
                trees[b] = tree
        return trees

    def fit(self, seqs, caps: list[int]) -> list[int]:
        """The caps cut to the draft's own pool, whose pages go to the sequences in turn: a sequence's catch-up and
        cap - 1 drafts write its draft K/V up to position L + cap - 1. One whose catch-up and a draft find no room
        drafts nothing this step (cap 1): where the draft's pool is fuller than the target's (n samples share the
        target's prompt pages, each has its own in the draft's), the target decodes on instead of failing."""
        cache, free, fitted = self.cache, self.cache.free_pages, []
        for seq, cap in zip(seqs, caps):
            state = self.state.get(id(seq))
            table, cached = (state.table, state.cached) if state else ([], 0)  # (a first proposal's kept pages: not counted)
            # positions cached .. L + cap - 1: cap = the tokens that fit, less the catch-up's before the root
            cap = cache.fit_tokens(table, cached, seq.L + cap - cached, free) - (seq.L - cached)
            if cap > 1:
                free -= cache.pages_to_write(table, cached, seq.L + cap - cached)
            fitted.append(max(cap, 1))
        return fitted

    def propose_trees(self, seqs, caps: list[int]) -> list[Tree]:
        """The trees (or chains) of sequences that draft this step, each of at most its cap nodes."""
        width, limit = self.budget.width, MAX_TREE_NODES
        greedy = [seq.params.greedy for seq in seqs]
        if width == 1 and self.device_chains:  # greedy and sampled sequences chain apart: a wait for each kind
            trees = [None] * len(seqs)
            for kind in set(greedy):
                group = [b for b, g in enumerate(greedy) if g == kind]
                for b, tree in zip(group, self.propose_chains([seqs[b] for b in group], [caps[b] for b in group])):
                    trees[b] = tree
            return trees
        items = self.catch_up(seqs)
        grows = [[0] for _ in seqs]  # per sequence: where in its frontier the nodes that grow are (Candidates.growing)
        rows = self.forward(items, [1] * len(seqs), greedy, grows)  # per sequence: the root's row
        grown = [Candidates(seq.tokens[seq.L]) for seq in seqs]
        frontier = [[0] for _ in seqs]
        for level in range(self.budget.depth):
            frontier = [self.expand(seq, c, f, g, r, width, limit, cap) if len(f) else []
                        for seq, c, f, g, r, cap in zip(seqs, grown, frontier, grows, rows, caps)]
            if level == self.budget.depth - 1 or not any(frontier):
                break
            items, growing = [], [b for b, new in enumerate(frontier) if new]
            for b in growing:
                seq, new = seqs[b], frontier[b]
                table = self.state[id(seq)].table
                self.cache.prepare(table, seq.L + new[0], new[-1] - new[0] + 1)
                items.append(StepItem.tree(table, seq.L, grown[b].tree(), new))
                grows[b] = grown[b].growing(new, width)
            out = self.forward(items, [len(frontier[b]) for b in growing], [greedy[b] for b in growing], [grows[b] for b in growing])
            for b, part in zip(growing, out):
                rows[b] = part
        return [c.best(cap) if seq.params.greedy else c.tree_sampled() for seq, c, cap in zip(seqs, grown, caps)]

    def propose_chains(self, seqs, caps: list[int]) -> list[Tree]:
        """Chains (a width-1 budget) of sequences all greedy or all sampled (propose splits a batch of both), with
        one wait on the device: each level's tokens stay on the device and are the next level's input tokens
        (Model.forward's `tokens`, as Engine.decode_ahead feeds a step its predecessor's token), so the levels run
        back to back and the host reads every level's tokens once, at the end. Level k feeds chain node k at
        position L + k (the root at L) and gives node k + 1: its argmax, or for a sampled sequence its draw from q,
        the draft's distribution under the sequence's sampling settings, at the next uniform of the sequence's
        generator (backend.draw_rows), with q kept on the device beside it for SpecInfer's rule, which the target's
        step tests there too (Tree.q_backend, verify.fetch_draws: neither q nor the target's rows come to the host;
        with device_tests off, q does). The chains are the level-by-level proposal's (its top-1 child, or its one
        child drawn from q with the same uniform), whose round trip a level (a draft step, then its ranked ids or
        logits rows) cost more than the draft step itself on a GPU."""
        backend, P = self.model.backend, self.cache.page_size
        lengths = [min(self.budget.depth, cap - 1) for cap in caps]  # draft nodes per chain
        sampled = not seqs[0].params.greedy
        # a sampled chain's uniforms, one a level: the draws the level-by-level proposal takes from the generator
        uniforms = [seq.rng.random(n).tolist() if sampled and n else [] for seq, n in zip(seqs, lengths)]
        items = self.catch_up(seqs, as_chains=self.chain_catch_up)
        logits = self.model.forward(build_plan(items, P), self.cache)
        rows = list(range(len(seqs)))  # the sequences the last level fed, in its row order
        last = np.cumsum([len(item.tokens) if item.all_logits else 1 for item in items]) - 1  # their rows of logits
        levels, qs = [], []  # per level: (its sequences, their node's token); sampled: (its sequences, their q rows)
        for level in range(max(lengths, default=0)):
            keep = [i for i, b in enumerate(rows) if lengths[b] > level]  # the rows whose chain has node level + 1
            rows = [rows[i] for i in keep]
            at = last[keep].tolist()  # (level 0: each sequence's last catch-up row; later levels feed one row each)
            if sampled:
                ids, q = backend.draw_rows(logits.device, at, [seqs[b].params for b in rows], [uniforms[b][level] for b in rows])
                qs.append((rows, q))
            else:
                ids = logits.argmax_device()
                ids = ids if at == list(range(len(logits.device))) else backend.gather(ids, at)
            levels.append((rows, ids.copy()))  # (a replayed graph's ids are its static output: the next replay rewrites them)
            going = [b for b in rows if lengths[b] > level + 1]
            if not going:
                break
            items = []
            for b in going:
                table = self.state[id(seqs[b])].table
                self.cache.prepare(table, seqs[b].L + level + 1, 1)
                items.append(StepItem.tree(table, seqs[b].L + level + 1, Tree.single(0)))  # (the token: from `ids`)
            feed = ids if len(going) == len(rows) else backend.gather(ids, [rows.index(b) for b in going])
            logits = self.model.forward(build_plan(items, P), self.cache, feed)
            rows, last = going, np.arange(len(going))  # (the next level's rows of logits: one a sequence fed)
        host = backend.to_host(backend.concat([ids for _, ids in levels])).tolist() if levels else []
        chains, q_rows, offset = [[seq.tokens[seq.L]] for seq in seqs], [[] for _ in seqs], 0
        for rows, _ in levels:
            for i, b in enumerate(rows):
                chains[b].append(host[offset + i])
                q_rows[b].append(offset + i)  # (node k's q: row offset + i of the levels' q rows, in level order)
            offset += len(rows)
        for seq, chain in zip(seqs, chains):
            self.state[id(seq)].chain = len(chain) - 1
        if not sampled:
            return [Tree.chain(chain) for chain in chains]
        if qs and self.device_tests:  # node k's children were drawn from Q[q_rows[k]]; the last node grew none
            Q = backend.concat([q for _, q in qs])
            return [Tree.chain(chain, sampled=True, q_backend=(Q, rows)) for chain, rows in zip(chains, q_rows)]
        host_q = [row / row.sum() for _, q in qs for row in np.asarray(backend.to_host(q), dtype=np.float64)]
        return [Tree.chain(chain, q=[*(host_q[j] for j in rows), None], sampled=True) for chain, rows in zip(chains, q_rows)]

    @staticmethod
    def expand(seq, candidates: Candidates, nodes: list[int], grow: list[int], rows, width: int, limit: int, cap: int) -> list[int]:
        """One level of the tree: the top-k children of a greedy sequence's nodes (rows: the (ids, logprobs) of the
        growing ones, at positions `grow`; up to `limit`, pruned to the cap afterwards), or children drawn from q for
        a sampled one (rows: the logits rows, every node's; up to the cap)."""
        if seq.params.greedy:
            return candidates.expand(nodes, grow, rows, width, limit)
        return candidates.expand_sampled(nodes, grow, rows, seq.params, width, cap, seq.rng)

    def commit(self, seq, path, accepted) -> None:
        state = self.state.get(id(seq))
        if state is None or not state.fed:  # it drafted nothing this step (fit): the draft's cache is as it was
            return
        # the old root stays; accepted tokens are fed next time, but for a chain's first n - 1 nodes, whose K/V its
        # levels wrote at their positions (propose_chains; the last node was never fed)
        root = seq.L - len(path)
        state.cached = min(root + 1 + min(len(path) - 1, max(state.chain - 1, 0)), len(seq.tokens))
        self.cache.truncate(state.table, state.cached)

    def release(self, seq) -> None:
        state = self.state.pop(id(seq), None)
        if state:
            if self.prefix_caching:  # positions below `cached` hold tokens[:cached]'s draft K/V
                self.cache.keep_prefix(state.table, seq.tokens, state.cached)
            self.cache.release(state.table)


@dataclass
class DraftState:
    table: list = field(default_factory=list)  # page table in the draft's cache
    cached: int = 0  # tokens of the sequence whose draft K/V is cached
    chain: int = 0  # draft nodes of the last proposal where it was a chain drafted by propose_chains, else 0
    fed: bool = True  # the last proposal fed the draft (catch_up); False where it drafted nothing (ModelDrafter.fit)


def make_drafter(draft, budget, target_model, tokenizer, backend, num_pages: int, page_size: int, load_model=None,
                 prefix_caching: bool = False):
    """None -> plain decoding; "ngram"; "self:K"; or a draft model directory with the target's tokenizer.
    prefix_caching: a draft model keeps its pages between requests (ModelDrafter)."""
    if draft is None or draft == "none":
        return NoDrafter()
    if draft == "ngram":  # a continuation may fill the whole node budget (a draft model's depth is its draft forwards)
        return NgramDrafter(TreeBudget.parse(budget) if budget is not None else NGRAM_BUDGET)
    budget = TreeBudget.parse(budget) if budget is not None else DRAFT_BUDGET
    if isinstance(draft, str) and draft.startswith("self:"):
        try:
            K = int(draft.split(":", 1)[1])
        except ValueError:
            raise MinispecError(f"draft {draft!r}: expected self:K with K an integer") from None
        if not 1 <= K < target_model.config.num_layers:
            raise MinispecError(f"draft {draft!r}: K must be in 1..{target_model.config.num_layers - 1} (the target has {target_model.config.num_layers} layers)")
        return ModelDrafter(target_model.truncated(K), budget, num_pages, page_size, prefix_caching)
    try:
        draft_model, draft_tokenizer = load_model(draft)
    except MinispecError as error:  # (a typo of ngram or self:K reads as a model that is not there)
        raise MinispecError(f"draft {draft!r} is not 'ngram', 'self:K' or a usable draft model: {error}") from None
    if draft_model.config.vocab_size != target_model.config.vocab_size or draft_tokenizer.hf.get_vocab() != tokenizer.hf.get_vocab():
        raise MinispecError(f"draft model {draft!r} has a different tokenizer or vocabulary than the target: it cannot draft for it")
    return ModelDrafter(draft_model, budget, num_pages, page_size, prefix_caching)
