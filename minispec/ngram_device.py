"""n-gram speculation with verification, commit and drafting on the device (one sequence, greedy or sampled).

Drafted on the host, a greedy tree step cannot start before the host has read the last step's argmax ids,
verified them, committed, drafted the next tree and uploaded its plan: 0.15-0.3 ms with the GPU idle between two
tree steps of ~0.67 ms (the default model, H100). Here one kernel after each step (kernels/ngram_step.cu) does that
work on the device, the same drafter's rules in the same order (NgramDrafter: verify_chosen, KVCache.commit's moves,
NgramDrafter.commit's counts, scan_match_starts, ngram_tree), and writes the next step's plan where that step's
graph reads it. The host launches step k + 1 before it reads step k's tokens, so its reads, text and stop checks
run while the GPU works, as in Engine.decode_ahead.

The device's state (backend arrays, NgramBuffers):
  hist    int32 [capacity]  the sequence's tokens; hist[L] is the root of the step's tree
  state   int32 [8]         L, T, accepted, tries, tree_tokens, tree_steps (NgramHistory's counts), -, -
  tree    int32 [2, 64]     tokens | parents of the step's tree
  packed  int32             the next step's plan, step.packed_offsets(1, N, W) (the graph's static inputs)
  out     int32 [2, 72]     each step's record for the host, two in turns: P (tokens taken), T' (the next tree's
                            nodes), L', the four counts, -, then the P tokens taken
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .drafters import NGRAM_COMMON, NGRAM_PAYS, NGRAM_STRONG, NgramDrafter
from .tree import MAX_TREE_NODES

STATE_SIZE = 8
OUT_SIZE = 8 + MAX_TREE_NODES
OUT_TOKENS = 8  # where a record's tokens start
MAX_MATCHES = 8  # the kernel's room for match starts (MAX_FOUND)
MAX_COMMON = 16  # ... and for one suffix length's (CANDIDATES)
MAX_STOP_IDS = 4  # stop0..3


@dataclass(frozen=True)
class NgramParams:
    """The drafter's settings as the kernel takes them."""

    max_ngram: int
    max_matches: int
    depth: int
    nodes: int
    width: int
    max_len: int  # the engine's context limit: a tree has at most max_len - L nodes
    stop_len: int  # the sequence ends at this many tokens (its output limit, or the context's)
    stop_ids: tuple = ()  # stop tokens that end it (none where the request ignores them), at most MAX_STOP_IDS
    common: int = NGRAM_COMMON
    strong: int = NGRAM_STRONG
    pays: float = NGRAM_PAYS

    @classmethod
    def of(cls, drafter: NgramDrafter, max_len: int, seq=None, stop_token_ids=()) -> "NgramParams":
        """The drafter's settings, and where `seq` ends (Engine.take_tokens' rules): a step launched past the end
        then runs an empty plan. More stop tokens than the kernel holds: none (the steps past the end run in full)."""
        b = drafter.budget
        stop_len, stop_ids = max_len, ()
        if seq is not None:
            stop_len = min(max_len, seq.prompt_len + seq.params.max_tokens)
            if not seq.params.ignore_eos and len(stop_token_ids) <= MAX_STOP_IDS:
                stop_ids = tuple(sorted(stop_token_ids))
        pays, strong = drafter.gate(seq is None or seq.params.greedy)  # (the gate NgramDrafter.pays applies)
        return cls(drafter.max_ngram, drafter.max_matches, b.depth, b.nodes, b.width, max_len, stop_len, stop_ids,
                   drafter.common, strong, pays)

    def stop_args(self) -> list[int]:
        """stop0..3 and stop_len as the kernel takes them."""
        return [*self.stop_ids, *[-1] * (MAX_STOP_IDS - len(self.stop_ids)), self.stop_len]

    def supported(self) -> bool:
        """Whether the kernel's fixed room holds these settings."""
        return self.max_matches <= MAX_MATCHES and self.common <= MAX_COMMON and self.nodes <= MAX_TREE_NODES


@dataclass
class NgramBuffers:
    """One sequence's device state (backend arrays; layouts in the module's docstring)."""

    N: int  # rows of the step (the tree budget's power-of-two bucket)
    W: int  # page-table entries
    hist: object
    state: object
    tree: object
    packed: object
    out: np.ndarray  # [2, OUT_SIZE] host-readable records (pinned memory on the GPU)
    done: list | None = None  # per record: an event the host waits for (GPU), None on the NumPy backend
    block: object = None  # (GPU) one allocation holding state | tree | packed | hist, loaded in one copy
    staging: np.ndarray | None = None  # (GPU) the load's host side of `block` (pinned memory)
    loaded: object = None  # (GPU) an event after the load's copy: the staging is free again once it has passed
    owner: object = None  # (GPU) the sequence last loaded, and how many of its tokens the staging holds (ngram_load)
    staged: int = 0
    launches: dict = field(default_factory=dict)  # (GPU) ngram_advance's and ngram_draws' launches, their arguments packed
    draws: object = None  # (GPU) a sampled step's draws [N] (ngram_draws)


def state_row(L: int, T: int, accepted, tries, tree_tokens: int, tree_steps: int) -> np.ndarray:
    """The state array of a sequence at L with a T-node tree, and its drafter's counts (NgramHistory's)."""
    row = np.zeros(STATE_SIZE, dtype=np.int32)
    row[:6] = [L, T, int(accepted), int(tries), tree_tokens, tree_steps]
    return row


def tree_rows(tree) -> np.ndarray:
    """The tree array: [2, 64] tokens | parents, padded with 0 and -1."""
    rows = np.zeros((2, MAX_TREE_NODES), dtype=np.int32)
    rows[1] = -1
    rows[0, : len(tree)] = tree.tokens
    rows[1, : len(tree)] = tree.parents
    return rows
