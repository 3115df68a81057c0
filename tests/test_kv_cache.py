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


def test_kept_prefixes_are_reused_shared_and_evicted_last_page_first():
    """keep_prefix holds a finished sequence's full pages by key; reuse_prefix hands the longest run of them back
    (shared, never written: a sequence writes from its L on); a pool that runs out evicts kept pages no sequence
    holds, the least recently used prefix's last page first, and counts them as free meanwhile."""
    P = 4
    cache = filled_cache(P=P, pages=8)
    tokens = list(range(100, 111))  # 11 tokens: pages 0 and 1 are full (positions 0-7), page 2 is not
    table = []
    cache.prepare(table, 0, len(tokens))
    page0, page1, page2 = table
    cache.keep_prefix(table, tokens, len(tokens))
    cache.release(table)
    assert cache.free_pages == 8 and len(cache.free) == 6 and cache.refcount[[page0, page1, page2]].tolist() == [1, 1, 0]

    # the longest run of whole pages within the limit, from position 0 only
    assert cache.reuse_prefix(tokens[:7], 7) == [page0]  # (page 1 would need positions up to 7)
    assert cache.reuse_prefix(tokens + [5, 6], 12) == [page0, page1]
    assert cache.reuse_prefix([1] + tokens[1:], 11) == []  # another first token: another chain of keys
    assert cache.refcount[[page0, page1]].tolist() == [3, 2]  # the cache's reference and the two callers'
    shared = [page0, page1]
    cache.prepare(shared, 8, 4)  # writing from position 8 on takes a new page and copies nothing
    assert shared[:2] == [page0, page1] and cache.refcount[[page0, page1]].tolist() == [3, 2]
    cache.release(shared)
    cache.release([page0])
    assert cache.refcount[[page0, page1]].tolist() == [1, 1]

    # another prefix, kept after the first: eviction order page 1, page 0 (the first prefix, its last page first), then
    # the second's; a reuse makes a prefix the most recent
    other = [7, 7, 7, 7, 8, 8, 8, 8]
    table = []
    cache.prepare(table, 0, len(other))
    other_pages = list(table)
    cache.keep_prefix(table, other, len(other))
    cache.release(table)
    assert cache.free_pages == 8 and len(cache.free) == 4
    held = []
    cache.prepare(held, 0, 4 * P)  # the 4 free pages
    cache.prepare(held, 4 * P, P)  # a fifth: the first prefix's last page
    assert held[-1] == page1 and cache.reuse_prefix(tokens, 11) == [page0]  # (page 0 now the most recent)
    cache.release([page0])
    cache.prepare(held, 5 * P, P)
    assert held[-1] == other_pages[1] and cache.reuse_prefix(other, 8) == other_pages[:1]
    cache.release(other_pages[:1])
    cache.prepare(held, 6 * P, P)
    assert held[-1] == page0
    cache.prepare(held, 7 * P, P)
    assert held[-1] == other_pages[0] and cache.free_pages == 0 and not cache.kept
    with pytest.raises(KVPoolFull):
        cache.prepare(held, 8 * P, 1)
    cache.release(held)
    assert cache.free_pages == 8 and not cache.refcount.any()
