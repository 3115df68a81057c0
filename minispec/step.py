"""The step plan: flat arrays that describe one forward over a ragged batch.

One plan serves prefill chunks (causal), plain decode (T = 1) and tree
verification, mixed in one batch (nano-vllm style flat arrays). Query rows of
sequence b are `cu_q[b] : cu_q[b+1]`; it attends to positions `0 .. kv_len[b]-1`
of its pages, positions `< tree_start[b]` unmasked, the rest through the
ancestor bits `masks` (or causally when `causal[b]`, for chunks longer than 64:
the T_b queries then sit at the last T_b positions and see keys up to their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .tree import Tree


@dataclass
class StepPlan:
    tokens: np.ndarray  # [N] int32
    positions: np.ndarray  # [N] int32 RoPE positions (L + depth)
    slots: np.ndarray  # [N] int32 where each new K/V row is written (page * P + row)
    cu_q: np.ndarray  # [B+1] int32 query offsets
    kv_len: np.ndarray  # [B] int32 L + T
    tree_start: np.ndarray  # [B] int32 L
    masks: np.ndarray  # [N] uint64 ancestor bits (bit j: sees tree node j)
    causal: np.ndarray  # [B] int32 1 = causal chunk, masks unused
    page_tables: np.ndarray  # [B, max_pages] int32, padded with -1
    logit_rows: np.ndarray  # [R] int32 rows of the step whose logits are needed

    @property
    def num_tokens(self) -> int:  # N
        return len(self.tokens)

    @property
    def batch_size(self) -> int:  # B
        return len(self.kv_len)

    @property
    def all_logits(self) -> bool:  # every row needs logits (decode, tree verify)
        return len(self.logit_rows) == len(self.tokens)

    # asked by the backend's graph lookup every step: one NumPy reduction each, once
    @cached_property
    def has_causal(self) -> bool:  # a causal chunk is in the step
        return bool(self.causal.any())

    @cached_property
    def max_kv_len(self) -> int:
        return int(self.kv_len.max())


@dataclass
class StepItem:
    """One sequence's share of a step.

    Queries are written at `slot_positions` and attend to positions
    `0 .. kv_len-1`: those `< tree_start` freely, the rest through the ancestor
    bits `masks` (relative to tree_start), or causally when `masks` is None.
    """

    table: list[int]  # the sequence's page table (already `prepare`d for the written positions)
    tree_start: int  # L
    tokens: np.ndarray  # [T]
    positions: np.ndarray  # [T] RoPE positions
    slot_positions: np.ndarray  # [T] sequence positions the new K/V rows go to
    masks: np.ndarray | None  # [T] uint64, or None for a causal chunk
    kv_len: int
    all_logits: bool = True  # False: only the last row needs logits (prefill chunk)

    @classmethod
    def chunk(cls, table, L: int, tokens, all_logits: bool = False) -> "StepItem":
        """Causal chunk: tokens at positions L .. L+T-1 (prefill, or a draft model catching up)."""
        T = len(tokens)
        span = L + np.arange(T)
        return cls(table, L, np.asarray(tokens), span, span, None, L + T, all_logits)

    @classmethod
    def tree(cls, table, L: int, tree: Tree, nodes=None) -> "StepItem":
        """Tree nodes `nodes` (default: all) as queries; node i lives at position L + i, rotated as L + depth[i].

        A draft model growing a tree level by level passes only the newest level's
        nodes; the earlier levels' K/V is already in its pages.
        """
        if nodes is None:  # every node (the target's verify step): no gathers
            T = len(tree)
            return cls(table, L, tree.tokens, L + tree.depth, np.arange(L, L + T), tree.anc, L + T)
        nodes = np.asarray(nodes)
        return cls(table, L, tree.tokens[nodes], L + tree.depth[nodes], L + nodes, tree.anc[nodes], L + int(nodes.max()) + 1)


def build_plan(items: list[StepItem], page_size: int) -> StepPlan:
    # built on the host every step: few NumPy calls per item (each costs about what a small copy does)
    if len(items) == 1:
        return build_plan_one(items[0], page_size)
    join = np.concatenate
    tokens, positions, slots, masks, logit_rows = [], [], [], [], []
    cu_q, kv_len, tree_start, causal = [0], [], [], []
    max_pages = max(len(item.table) for item in items)
    page_tables = np.full((len(items), max_pages), -1, dtype=np.int32)
    for b, item in enumerate(items):
        T = len(item.tokens)
        offset = cu_q[-1]
        table = page_tables[b, : len(item.table)]
        table[:] = item.table
        for rows, part in zip((tokens, positions, slots, masks, logit_rows), item_rows(item, table, page_size, offset)):
            rows.append(part)
        causal.append(int(item.masks is None))
        cu_q.append(offset + T)
        kv_len.append(item.kv_len)
        tree_start.append(item.tree_start)
    return StepPlan(
        tokens=join(tokens).astype(np.int32),
        positions=join(positions).astype(np.int32),
        slots=join(slots).astype(np.int32),
        cu_q=np.asarray(cu_q, dtype=np.int32),
        kv_len=np.asarray(kv_len, dtype=np.int32),
        tree_start=np.asarray(tree_start, dtype=np.int32),
        masks=join(masks).astype(np.uint64),
        causal=np.asarray(causal, dtype=np.int32),
        page_tables=page_tables,
        logit_rows=join(logit_rows).astype(np.int32),
    )


def item_rows(item: StepItem, table: np.ndarray, page_size: int, offset: int) -> tuple:
    """One sequence's rows of a plan, its first at row `offset`: tokens, positions, slots (through its page table),
    ancestor masks, logit rows (before the plan's dtypes)."""
    T = len(item.tokens)
    slot = np.asarray(item.slot_positions)
    return (item.tokens, item.positions, table[slot // page_size] * page_size + slot % page_size,
            np.zeros(T, dtype=np.uint64) if item.masks is None else item.masks,
            np.arange(offset, offset + T) if item.all_logits else np.array([offset + T - 1]))


def build_plan_one(item: StepItem, page_size: int) -> StepPlan:
    """build_plan of one sequence (every decode and tree step of a single request) without the batch's joins:
    22 against 32 µs on the 2-core development machine, on the host between two tree steps."""
    table = np.array(item.table, dtype=np.int32)
    tokens, positions, slots, masks, logit_rows = item_rows(item, table, page_size, 0)
    return StepPlan(
        tokens=tokens.astype(np.int32),
        positions=positions.astype(np.int32),
        slots=slots.astype(np.int32),
        cu_q=np.array([0, len(tokens)], dtype=np.int32),
        kv_len=np.array([item.kv_len], dtype=np.int32),
        tree_start=np.array([item.tree_start], dtype=np.int32),
        masks=masks.astype(np.uint64),
        causal=np.array([int(item.masks is None)], dtype=np.int32),
        page_tables=table.reshape(1, -1),
        logit_rows=logit_rows.astype(np.int32),
    )


def empty_plan(L: int, table: np.ndarray) -> StepPlan:
    """A one-sequence plan of no rows at L (cu_q = [0, 0], kv_len = tree_start = L): its step does no work. The device
    drafter writes it where no tree follows (kernels/ngram_step.cu); packed, its rows are pack_plan's padding."""
    none = np.zeros(0, dtype=np.int32)
    return StepPlan(tokens=none, positions=none, slots=none, cu_q=np.zeros(2, dtype=np.int32),
                    kv_len=np.array([L], dtype=np.int32), tree_start=np.array([L], dtype=np.int32),
                    masks=np.zeros(0, dtype=np.uint64), causal=np.zeros(1, dtype=np.int32),
                    page_tables=np.asarray(table, dtype=np.int32).reshape(1, -1), logit_rows=none)


def pow2_bucket(n: int) -> int:
    """The smallest power of two >= n: captured graphs are keyed by it (a step's rows, a context's keys)."""
    return 1 << (n - 1).bit_length()


def packed_offsets(B: int, N: int, W: int) -> list[int]:
    """Where each array of a plan starts in one int32 buffer (a captured graph's static inputs, the device drafter's
    next plan): masks as 2 N int32 (uint64 view) | tokens N | positions N | slots N | logit_rows N | cu_q B+1 |
    kv_len B | tree_start B | causal B | page_tables B * W; the last entry is the size."""
    sizes = [2 * N, N, N, N, N, B + 1, B, B, B, B * W]
    return [0, *np.cumsum(sizes).tolist()]


def unpack_plan(packed: np.ndarray, N: int, W: int) -> StepPlan:
    """A one-sequence plan of every row's logits from its packed form (rows past cu_q[1] are padding)."""
    o = packed_offsets(1, N, W)
    n = int(packed[o[5] + 1])
    return StepPlan(
        tokens=packed[o[1] : o[1] + n].copy(),
        positions=packed[o[2] : o[2] + n].copy(),
        slots=packed[o[3] : o[3] + n].copy(),
        cu_q=packed[o[5] : o[6]].copy(),
        kv_len=packed[o[6] : o[7]].copy(),
        tree_start=packed[o[7] : o[8]].copy(),
        masks=packed[o[0] : o[0] + 2 * n].copy().view(np.uint64),
        causal=packed[o[8] : o[9]].copy(),
        page_tables=packed[o[9] : o[10]].reshape(1, W).copy(),
        logit_rows=np.arange(n, dtype=np.int32),
    )


def pack_plan(plan: StepPlan, packed: np.ndarray, N: int, W: int, offsets: list[int] | None = None) -> None:
    """Write a plan of plan.batch_size sequences into `packed` (packed_offsets' layout, N rows, W page-table entries
    a sequence), every element: rows past the plan's (a bucket's padding) see no tree node, sit at position 0,
    write no K/V (slot -1) and have logit rows of their own; page tables are padded with -1. offsets: the layout,
    where the caller keeps it (CapturedStep.fill, every step)."""
    o = offsets or packed_offsets(plan.batch_size, N, W)
    n, R = plan.num_tokens, len(plan.logit_rows)
    if n < N:
        packed[o[0] + 2 * n : o[1]] = 0
        packed[o[1] + n : o[2]] = 0
        packed[o[2] + n : o[3]] = 0
        packed[o[3] + n : o[4]] = -1
    if R < N:
        packed[o[4] + R : o[5]] = np.arange(R, N)
    packed[o[0] : o[0] + 2 * n] = plan.masks.view(np.int32)
    packed[o[1] : o[1] + n] = plan.tokens
    packed[o[2] : o[2] + n] = plan.positions
    packed[o[3] : o[3] + n] = plan.slots
    packed[o[4] : o[4] + R] = plan.logit_rows
    packed[o[5] : o[6]] = plan.cu_q
    packed[o[6] : o[7]] = plan.kv_len
    packed[o[7] : o[8]] = plan.tree_start
    packed[o[8] : o[9]] = plan.causal
    tables, width = packed[o[9] : o[10]].reshape(-1, W), plan.page_tables.shape[1]
    if width < W:
        tables[:, width:] = -1
    tables[:, :width] = plan.page_tables
