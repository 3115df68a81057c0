"""Drafters: who proposes the token tree of each step.

Every drafter answers `propose(seqs, budgets) -> [Tree]` (root = the sequence's
last token, not yet cached) and hears back what was accepted via `commit`.
"""

from __future__ import annotations

from .tree import Tree


class NoDrafter:
    """Plain decoding: the tree is the root alone (T = 1)."""

    def start(self, seq) -> None:
        pass

    def propose(self, seqs, budgets) -> list[Tree]:
        return [Tree.single(seq.tokens[seq.L]) for seq in seqs]

    def commit(self, seq, path, accepted) -> None:
        pass

    def release(self, seq) -> None:
        pass
