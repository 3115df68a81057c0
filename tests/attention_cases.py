"""Random paged-attention problems with an independent dense reference (shared by CPU and GPU tests)."""

from __future__ import annotations

import numpy as np

from minispec.step import StepItem, build_plan
from minispec.tree import Tree


def random_tree(rng, T: int, shape: str) -> Tree:
    if shape == "single" or T == 1:
        parents = [-1]
    elif shape == "chain":
        parents = list(range(-1, T - 1))
    elif shape == "star":
        parents = [-1] + [0] * (T - 1)
    else:
        parents = [-1] + [int(rng.integers(0, i)) for i in range(1, T)]
    return Tree(rng.integers(0, 100, size=len(parents)), parents)


def ancestors(parents, i):
    """Node i and its ancestors, by walking parent links (not the bit masks)."""
    seen = set()
    while i >= 0:
        seen.add(i)
        i = parents[i]
    return seen


def make_problem(rng, page_size: int, specs, H=4, Hkv=2, D=16, spare_pages=5, dtype=np.float32):
    """specs: list of (L, kind, T) with kind "chunk" or a tree shape. Returns (q, k_cache, v_cache, plan, expected).

    dtype is the cache's storage type (float32 or ml_dtypes.bfloat16); the reference uses the stored values.
    """
    G = H // Hkv
    total_pages = sum(-(-(L + T) // page_size) for L, _, T in specs) + spare_pages
    k_cache = np.full((total_pages, Hkv, page_size, D), np.nan, dtype=dtype)  # foreign pages stay NaN
    v_cache = np.full_like(k_cache, np.nan)
    free = list(rng.permutation(total_pages))  # shuffled page tables
    items, expected, queries = [], [], []
    for L, kind, T in specs:
        S = L + T
        keys = (rng.normal(size=(S, Hkv, D)) * 2).astype(dtype)  # peaked softmax: a wrong mask shows
        values = rng.normal(size=(S, Hkv, D)).astype(dtype)
        table = [int(free.pop()) for _ in range(-(-S // page_size))]
        for s in range(S):
            k_cache[table[s // page_size], :, s % page_size] = keys[s]
            v_cache[table[s // page_size], :, s % page_size] = values[s]
        q = (rng.normal(size=(T, H, D)) * 2).astype(np.float32)
        if kind == "chunk":
            item = StepItem.chunk(table, L, np.zeros(T, dtype=np.int64), all_logits=True)
            visible = [set(range(L + i + 1)) for i in range(T)]
        else:
            tree = random_tree(rng, T, kind)
            item = StepItem.tree(table, L, tree)
            visible = [set(range(L)) | {L + j for j in ancestors(tree.parents, i)} for i in range(T)]
        out = np.zeros((T, H, D))
        for i in range(T):
            cols = sorted(visible[i])
            for h in range(H):
                scores = keys[cols, h // G].astype(np.float64) @ q[i, h].astype(np.float64) / np.sqrt(D)
                w = np.exp(scores - scores.max())
                out[i, h] = (w / w.sum()) @ values[cols, h // G].astype(np.float64)
        items.append(item)
        queries.append(q)
        expected.append(out.reshape(T, H * D))
    plan = build_plan(items, page_size)
    return np.concatenate(queries), k_cache, v_cache, plan, np.concatenate(expected)


def problem_specs(page_size: int):
    """Prefix lengths 0, 1, P-1, P, P+1 and long; chunks, single nodes, chains, stars and random trees."""
    P = page_size
    lengths = sorted({0, 1, max(P - 1, 0), P, P + 1, 5 * P + 3})
    specs = []
    for i, L in enumerate(lengths):
        specs.append((L, ["single", "chain", "star", "random"][i % 4], [1, 7, 12, 64][i % 4] if L else 1))
        specs.append((L, "chunk", 1 + (3 * i) % 19))
    specs.append((2 * P + 5, "random", 64))
    return specs
