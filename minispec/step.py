"""The step plan: flat arrays that describe one forward over a ragged batch.

One plan serves prefill chunks (causal), plain decode (T = 1) and tree
verification, mixed in one batch (nano-vllm style flat arrays). Query rows of
sequence b are `cu_q[b] : cu_q[b+1]`; it attends to positions `0 .. kv_len[b]-1`
of its pages, positions `< tree_start[b]` unmasked, the rest through the
ancestor bits `masks` (or causally when `causal[b]`, for chunks longer than 64).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class StepItem:
    """One sequence's share of a step: a causal chunk or a tree, written at positions L.. ."""

    table: list[int]  # the sequence's page table (already `prepare`d for L .. L+T-1)
    L: int  # committed tokens in the cache
    tokens: np.ndarray  # [T]
    tree: Tree | None = None  # None: a causal chunk
    all_logits: bool = True  # False: only the last row needs logits (prefill chunk)


def build_plan(items: list[StepItem], page_size: int) -> StepPlan:
    tokens, positions, slots, masks, logit_rows = [], [], [], [], []
    cu_q, kv_len, tree_start, causal = [0], [], [], []
    max_pages = max(len(item.table) for item in items)
    page_tables = np.full((len(items), max_pages), -1, dtype=np.int32)
    for b, item in enumerate(items):
        T = len(item.tokens)
        offset = cu_q[-1]
        table = np.asarray(item.table, dtype=np.int64)
        slot_positions = item.L + np.arange(T)
        tokens.append(item.tokens)
        slots.append(table[slot_positions // page_size] * page_size + slot_positions % page_size)
        if item.tree is None:
            positions.append(slot_positions)
            masks.append(np.zeros(T, dtype=np.uint64))
            causal.append(1)
        else:
            positions.append(item.L + item.tree.depth)
            masks.append(item.tree.anc)
            causal.append(0)
        logit_rows.append(offset + (np.arange(T) if item.all_logits else np.array([T - 1])))
        cu_q.append(offset + T)
        kv_len.append(item.L + T)
        tree_start.append(item.L)
        page_tables[b, : len(table)] = table
    return StepPlan(
        tokens=np.concatenate(tokens).astype(np.int32),
        positions=np.concatenate(positions).astype(np.int32),
        slots=np.concatenate(slots).astype(np.int32),
        cu_q=np.asarray(cu_q, dtype=np.int32),
        kv_len=np.asarray(kv_len, dtype=np.int32),
        tree_start=np.asarray(tree_start, dtype=np.int32),
        masks=np.concatenate(masks).astype(np.uint64),
        causal=np.asarray(causal, dtype=np.int32),
        page_tables=page_tables,
        logit_rows=np.concatenate(logit_rows).astype(np.int32),
    )
