"""The step plan: build_plan's one-sequence path (every single request's steps) against the batch path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minispec.step import StepItem, StepPlan, build_plan
from minispec.tree import Tree


def random_item(rng, kind: str, page_size: int):
    T, L = int(rng.integers(1, 20)), int(rng.integers(0, 200))
    table = [int(p) for p in rng.permutation(400)[: -(-(L + T) // page_size)]]
    if kind == "chunk":
        return StepItem.chunk(table, L, rng.integers(0, 1000, T), all_logits=bool(rng.integers(0, 2)))
    tree = Tree(rng.integers(0, 1000, T), [-1] + [int(rng.integers(0, i)) for i in range(1, T)])
    if kind == "level" and T > 1:  # a draft model's newest level: the last nodes alone
        return StepItem.tree(table, L, tree, list(range(int(rng.integers(1, T)), T)))
    return StepItem.tree(table, L, tree)


@pytest.mark.parametrize("kind", ["tree", "chunk", "level"])
@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_one_sequence_plan_equals_its_share_of_a_batch(kind, page_size):
    rng = np.random.default_rng(page_size * 7 + len(kind))
    for _ in range(50):
        item, other = random_item(rng, kind, page_size), random_item(rng, "tree", page_size)
        one, both = build_plan([item], page_size), build_plan([item, other], page_size)
        T, W = len(item.tokens), len(item.table)
        share = {"cu_q": slice(0, 2), "kv_len": slice(0, 1), "tree_start": slice(0, 1), "causal": slice(0, 1),
                 "logit_rows": slice(0, len(one.logit_rows))}
        for field in dataclasses.fields(StepPlan):
            got, batch = getattr(one, field.name), getattr(both, field.name)
            want = batch[0:1, :W] if field.name == "page_tables" else batch[share.get(field.name, slice(0, T))]
            assert got.dtype == batch.dtype and np.array_equal(got, want), field.name
