"""Page pool bookkeeping: allocation, fork with copy-on-write, commit with overlapping moves."""

from __future__ import annotations

import numpy as np
import pytest

from minispec.backends.numpy_backend import NumpyBackend
from minispec.kv_cache import KVCache, KVPoolFull


def filled_cache(P=4, pages=12, seed=0):
    cache = KVCache(NumpyBackend(), num_layers=2, num_pages=pages, num_kv_heads=2, page_size=P, head_dim=3)
    rng = np.random.default_rng(seed)
    for array in cache.k + cache.v:
        array[...] = rng.normal(size=array.shape)
    return cache


def rows(cache, table, positions, layer=0):
    slots = cache.slots(table, positions)
    P = cache.page_size
    return cache.k[layer][slots // P, :, slots % P].copy(), cache.v[layer][slots // P, :, slots % P].copy()


@pytest.mark.parametrize("path", [[0, 2, 3], [0, 1, 2], [0, 5, 6, 7], [0], [0, 3, 9, 10, 11]])
def test_commit_moves_accepted_nodes_with_overlap(path):
    cache = filled_cache(P=4)
    table = []
    L = 6
    cache.prepare(table, 0, L + 12)
    before_k, before_v = rows(cache, table, [L + node for node in path])
    prefix = rows(cache, table, range(L))
    cache.commit(table, L, path)
    after_k, after_v = rows(cache, table, [L + j for j in range(len(path))])
    np.testing.assert_array_equal(after_k, before_k)
    np.testing.assert_array_equal(after_v, before_v)
    np.testing.assert_array_equal(rows(cache, table, range(L))[0], prefix[0])
    assert len(table) == cache.pages_for(L + len(path))
    cache.release(table)
    assert cache.free_pages == cache.num_pages


def test_fork_shares_pages_and_copies_on_write():
    cache = filled_cache(P=4)
    parent = []
    cache.prepare(parent, 0, 10)  # pages 0..2, the last one partial
    prefix = rows(cache, parent, range(10))
    child = cache.fork(parent)
    assert child == parent and all(cache.refcount[p] == 2 for p in parent)
    cache.prepare(child, 10, 4)  # writes positions 10..13: the partial page is copied, a new one added
    assert child[:2] == parent[:2] and child[2] != parent[2]
    np.testing.assert_array_equal(rows(cache, child, range(10))[0], prefix[0])
    cache.k[0][child[2], :, 2] = 99.0  # a write in the child
    np.testing.assert_array_equal(rows(cache, parent, range(10))[0], prefix[0])  # parent unchanged
    cache.release(child)
    cache.release(parent)
    assert cache.free_pages == cache.num_pages and not cache.refcount.any()


def test_pool_full_is_a_clear_error():
    cache = filled_cache(P=4, pages=3)
    table = []
    with pytest.raises(KVPoolFull, match="KV cache is full"):
        cache.prepare(table, 0, 13)
    cache.release(table)
    assert cache.free_pages == 3
