"""Token trees: the drafts of one sequence for one step.

Node 0 (the root) is the last chosen token, not yet in the cache; nodes are in
topological order (`parent[i] < i`). Node i is written to position L + i of the
sequence (slot order) but rotated as position L + depth[i] (RoPE), and sees the
committed prefix plus exactly its ancestors and itself: `anc[i]` has bit j set
iff node j is node i or one of its ancestors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import MinispecError

MAX_TREE_NODES = 64  # one uint64 of ancestor bits per node


@dataclass
class Tree:
    tokens: np.ndarray  # [T] int64 token ids
    parents: np.ndarray  # [T] int64, parents[0] = -1
    q: np.ndarray | None = None  # [T, V] draft distribution each node's children were sampled from (or None)
    sampled: bool = False  # True when children were sampled from q (SpecInfer rule applies)
    depth: np.ndarray = field(init=False)  # [T]
    anc: np.ndarray = field(init=False)  # [T] uint64

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens, dtype=np.int64).reshape(-1)
        self.parents = np.asarray(self.parents, dtype=np.int64).reshape(-1)
        T = len(self.tokens)
        if T < 1 or T > MAX_TREE_NODES:
            raise MinispecError(f"a tree has 1..{MAX_TREE_NODES} nodes, got {T}")
        if len(self.parents) != T or self.parents[0] != -1:
            raise MinispecError("tree parents must have one entry per node and parents[0] = -1")
        if T > 1 and not np.all((self.parents[1:] >= 0) & (self.parents[1:] < np.arange(1, T))):
            raise MinispecError("tree nodes must be in topological order: 0 <= parents[i] < i")
        parents = self.parents.tolist()
        depth, anc = [0] * T, [1] * T  # Python ints: a per-node NumPy scalar costs more than the whole tree
        for i in range(1, T):
            depth[i] = depth[parents[i]] + 1
            anc[i] = anc[parents[i]] | (1 << i)
        self.depth = np.array(depth, dtype=np.int64)
        self.anc = np.array(anc, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, node: int) -> list[int]:
        return [int(c) for c in np.nonzero(self.parents == node)[0]]

    @classmethod
    def single(cls, token: int) -> "Tree":
        return cls(tokens=[token], parents=[-1])

