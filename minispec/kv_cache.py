"""Paged KV cache: a pool of fixed-size pages with reference counts and per-sequence page tables.

Per layer, `k` and `v` are `[NP, Hkv, P, D]`. Position s of a sequence lives in
page `table[s // P]`, row `s % P`; its flat slot id is `page * P + row`.
Pages are shared between sequences by reference count (`fork`, for n > 1
samples of one prompt); a shared page is copied before it is written
(copy-on-write), so a sample never changes another's prefix.

Prefix caching (`keep_prefix` / `reuse_prefix`, which `minispec chat` turns on): the full pages of a
finished sequence stay in the pool, each holding one reference of the cache's and keyed by every token up
to its end (a chained BLAKE2 digest), until the pool needs them; a request whose prompt starts with the same
tokens shares them and is prefilled from there (a chat's next turn: the conversation so far). Their K/V
agree with a fresh prefill's up to fp32 summation order (the launches that wrote them had other shapes).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from .errors import MinispecError


class KVPoolFull(MinispecError):
    pass


class KVCache:
    def __init__(self, backend, num_layers: int, num_pages: int, num_kv_heads: int, page_size: int, head_dim: int):
        if page_size < 1 or num_pages < 1:
            raise MinispecError("page size and page count must be >= 1")
        self.backend = backend
        self.page_size = page_size  # P
        self.num_pages = num_pages  # NP
        shape = (num_pages, num_kv_heads, page_size, head_dim)  # [NP, Hkv, P, D]
        self.k = [backend.empty_cache(shape) for _ in range(num_layers)]
        self.v = [backend.empty_cache(shape) for _ in range(num_layers)]
        self.refcount = np.zeros(num_pages, dtype=np.int64)
        self.free = list(range(num_pages - 1, -1, -1))  # pop() hands out low page ids first
        self.kept = OrderedDict()  # prefix key -> page, least recently used first (keep_prefix)

    # ------------------------------------------------------------------ page bookkeeping
    @property
    def free_pages(self) -> int:
        """Pages a sequence can take: the free ones and the kept ones no sequence holds (evicted on demand)."""
        kept = np.fromiter(self.kept.values(), dtype=np.int64, count=len(self.kept))
        return len(self.free) + int(np.count_nonzero(self.refcount[kept] == 1))

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def _take_page(self) -> int:
        if not self.free:
            self._evict_kept()
        if not self.free:
            raise self.full_error()
        page = self.free.pop()
        self.refcount[page] = 1
        return page

    def full_error(self, why: str = "") -> KVPoolFull:
        pages = f"{self.num_pages} page{'s' if self.num_pages != 1 else ''} of {self.page_size} tokens"
        return KVPoolFull(f"KV cache is full ({pages}){': ' + why if why else ''}: use fewer or shorter requests, or a larger "
                          "kv_cache_tokens / --kv-cache-tokens")

    def _drop_page(self, page: int) -> None:
        self.refcount[page] -= 1
        assert self.refcount[page] >= 0, "page reference count went negative"
        if self.refcount[page] == 0:
            self.free.append(page)

    def pages_to_write(self, table: list[int], start: int, num_tokens: int) -> int:
        """The pages `prepare(table, start, num_tokens)` would take: copies of shared pages it writes, and new ones."""
        end_pages = self.pages_for(start + num_tokens)
        shared = sum(self.refcount[table[index]] > 1 for index in range(start // self.page_size, min(len(table), end_pages)))
        return int(shared) + max(0, end_pages - len(table))

    def fit_tokens(self, table: list[int], start: int, most: int, pages: int) -> int:
        """The most tokens (up to `most`, at least 0) from `start` whose writes take at most `pages` pages."""
        while most > 0 and self.pages_to_write(table, start, most) > pages:
            most -= 1
        return most

    def prepare(self, table: list[int], start: int, num_tokens: int) -> None:
        """Make positions start .. start+num_tokens-1 writable: copy shared pages, add new ones."""
        end = start + num_tokens
        first = start // self.page_size
        for index in range(first, min(len(table), self.pages_for(end))):
            if self.refcount[table[index]] > 1:  # copy-on-write
                page = self._take_page()
                self.backend.copy_page(self.k, self.v, table[index], page)
                self._drop_page(table[index])
                table[index] = page
        while len(table) < self.pages_for(end):
            table.append(self._take_page())

    def fork(self, table: list[int]) -> list[int]:
        """A child table sharing every page; writes are copied on demand by `prepare`."""
        for page in table:
            self.refcount[page] += 1
        return list(table)

    def truncate(self, table: list[int], length: int) -> None:
        """Release pages holding only positions >= length."""
        while len(table) > self.pages_for(length):
            self._drop_page(table.pop())

    def release(self, table: list[int]) -> None:
        self.truncate(table, 0)

    # ------------------------------------------------------------------ prefix caching
    def prefix_keys(self, tokens, pages: int) -> list[bytes]:
        """The keys of a sequence's first `pages` pages: page i's digests tokens 0 .. (i + 1) P - 1, chained."""
        keys, key, P = [], b"", self.page_size
        data = np.asarray(tokens[: pages * P], dtype=np.int64)
        for i in range(pages):
            key = hashlib.blake2b(key + data[i * P : (i + 1) * P].tobytes(), digest_size=16).digest()
            keys.append(key)
        return keys

    def keep_prefix(self, table: list[int], tokens, length: int) -> None:
        """Keep the full pages of positions 0 .. length - 1 (K/V written for tokens[:length]) past the sequence's
        release, the cache's reference on each. A page whose key is kept already (by another page or itself) stays
        the sequence's alone."""
        keys = self.prefix_keys(tokens, min(length // self.page_size, len(table)))
        for page, key in zip(table, keys):
            if key not in self.kept:
                self.kept[key] = page
                self.refcount[page] += 1
        self._touch(keys)

    def reuse_prefix(self, tokens, limit: int) -> list[int]:
        """The kept pages that hold the longest run of tokens[:limit] from position 0 (whole pages), a reference
        on each for the caller's table."""
        table, keys = [], []
        for key in self.prefix_keys(tokens, limit // self.page_size):
            page = self.kept.get(key)
            if page is None:
                break
            self.refcount[page] += 1
            table.append(page)
            keys.append(key)
        self._touch(keys)
        return table

    def _touch(self, keys: list[bytes]) -> None:
        """Mark a prefix's pages used now, its last page the least recent of them: a prefix's later pages are of no
        use without its earlier ones, so eviction takes them first."""
        for key in reversed(keys):
            self.kept.move_to_end(key)

    def _evict_kept(self) -> None:
        """Free the least recently used kept page that no sequence holds."""
        for key, page in self.kept.items():
            if self.refcount[page] == 1:
                del self.kept[key]
                self._drop_page(page)
                return

    def slots(self, table: list[int], positions: np.ndarray) -> np.ndarray:
        """Flat slot ids (page * P + row) of a sequence's positions."""
        positions = np.asarray(positions, dtype=np.int64)
        return np.asarray(table, dtype=np.int64)[positions // self.page_size] * self.page_size + positions % self.page_size

    def commit(self, table: list[int], L: int, path: list[int]) -> None:
        """Keep the accepted tree nodes (move_accepted); afterwards the sequence holds L + len(path) positions and
        pages past them are released."""
        self.move_accepted(table, L, path)
        self.truncate(table, L + len(path))

    def move_accepted(self, table, L: int, path: list[int]) -> None:
        """Node path[j] (position L + path[j]) moves to position L + j, in every layer. Sources and destinations
        overlap (accept 0, 2, 3 after rejecting 1), so the backend reads every source before it writes."""
        moves = [(L + node, L + j) for j, node in enumerate(path) if node != j]
        if moves:
            source, destination = zip(*moves)
            self.backend.move_slots(self.k, self.v, self.slots(table, source), self.slots(table, destination))
