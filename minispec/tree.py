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


def _chain_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """parents, depth and ancestor bits of the longest chain; a chain of T nodes is their first T entries."""
    arrays = (np.arange(-1, MAX_TREE_NODES - 1, dtype=np.int64), np.arange(MAX_TREE_NODES, dtype=np.int64),
              np.array([(2 << i) - 1 for i in range(MAX_TREE_NODES)], dtype=np.uint64))
    for array in arrays:
        array.flags.writeable = False
    return arrays


_CHAIN_PARENTS = list(range(-1, MAX_TREE_NODES - 1))
_CHAIN_ARRAYS = _chain_arrays()


@dataclass
class Tree:
    tokens: np.ndarray  # [T] int64 token ids
    parents: np.ndarray  # [T] int64, parents[0] = -1
    q: np.ndarray | None = None  # [T, V] draft distribution each node's children were sampled from (or None)
    sampled: bool = False  # True when children were sampled from q (SpecInfer rule applies)
    # a chain drawn on the backend (ModelDrafter.propose_chains) in place of q: (Q, rows), node k's q being
    # Q[rows[k]] (un-normalised) for each node but the last; the SpecInfer tests run there (verify.fetch_draws)
    q_backend: tuple | None = None
    depth: np.ndarray = field(init=False)  # [T]
    anc: np.ndarray = field(init=False)  # [T] uint64
    token_list: list = field(init=False, repr=False)  # tokens as Python ints (the host's per-node loops)
    kids: list = field(init=False, repr=False)  # kids[i]: children of node i, in order

    def __post_init__(self):
        # Python ints and lists throughout: a tree is built every step, and a per-node NumPy scalar (or a
        # NumPy call per node) costs more than the whole tree
        if type(self.tokens) is list and type(self.parents) is list:  # (the drafters' trees: lists of Python ints)
            tokens, parents = self.tokens, self.parents
            self.tokens = np.array(tokens, dtype=np.int64)
        else:
            self.tokens = np.asarray(self.tokens, dtype=np.int64).reshape(-1)
            tokens, parents = self.tokens.tolist(), np.asarray(self.parents, dtype=np.int64).reshape(-1).tolist()
        T = len(tokens)
        if T < 1 or T > MAX_TREE_NODES:
            raise MinispecError(f"a tree has 1..{MAX_TREE_NODES} nodes, got {T}")
        self.token_list = tokens
        if parents == _CHAIN_PARENTS[:T]:  # a chain (a copied span, a plain step): its arrays are shared, read-only
            self.parents, self.depth, self.anc = _CHAIN_ARRAYS[0][:T], _CHAIN_ARRAYS[1][:T], _CHAIN_ARRAYS[2][:T]
            self.kids = [[i + 1] for i in range(T - 1)] + [[]]
            return
        if len(parents) != T or parents[0] != -1:
            raise MinispecError("tree parents must have one entry per node and parents[0] = -1")
        depth, anc, kids = [0] * T, [1] * T, [[] for _ in range(T)]
        for i in range(1, T):
            parent = parents[i]
            if not 0 <= parent < i:
                raise MinispecError("tree nodes must be in topological order: 0 <= parents[i] < i")
            depth[i] = depth[parent] + 1
            anc[i] = anc[parent] | (1 << i)
            kids[parent].append(i)
        self.kids = kids
        self.parents = np.array(parents, dtype=np.int64)
        self.depth = np.array(depth, dtype=np.int64)
        self.anc = np.array(anc, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.token_list)

    def children(self, node: int) -> list[int]:
        """Node ids whose parent is `node`, in order."""
        return self.kids[node]

    @classmethod
    def single(cls, token: int) -> "Tree":
        return cls(tokens=[token], parents=[-1])

    @classmethod
    def chain(cls, tokens: list[int], **fields) -> "Tree":
        """Node i the parent of node i + 1 (a copied span, a draft model's chain, a catch-up as a tree step)."""
        return cls(tokens, _CHAIN_PARENTS[: len(tokens)], **fields)

