"""The CUDA backend's tables of captured graphs and device pointer tables, keyed by live objects (runs on CPU)."""

from __future__ import annotations

import gc
import weakref

from minispec.backends.cuda_backend import IdentityTable


class Owner:  # a model or a KV cache, as far as the table cares
    pass


def test_entry_goes_with_its_object_and_a_new_object_at_the_same_id_finds_nothing():
    table = IdentityTable()
    model, cache = Owner(), Owner()
    table.put((model, cache), (1, 16), "graph")
    assert table.get((model, cache), (1, 16)) == "graph"
    assert table.get((model, cache), (2, 16)) is None  # the plain part of the key counts too
    freed = id(cache)
    del cache
    gc.collect()
    assert len(table) == 0
    # CPython reuses a freed object's address; an id alone would hand the old entry to the new object
    reused = next((o for o in (Owner() for _ in range(1000)) if id(o) == freed), None)
    if reused is not None:
        assert table.get((model, reused), (1, 16)) is None


def test_table_keeps_nothing_alive():
    table = IdentityTable()
    cache = Owner()
    table.put((cache,), (), "pointers")
    alive = weakref.ref(cache)
    del cache  # no gc.collect: the last reference goes, so the table held none
    assert alive() is None
    assert len(table) == 0
