"""The engine: prefill, then draft -> verify -> accept -> commit -> emit, for a batch of sequences."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .errors import MinispecError
from .kv_cache import KVPoolFull
from .drafters import NgramDrafter, NoDrafter
from .ngram_device import OUT_TOKENS, NgramParams, state_row, tree_rows
from .sampling import SamplingParams, position_uniform, sequence_key
from .step import StepItem, build_plan, pow2_bucket
from .tokenizer import StreamDecoder, Tokenizer
from .tree import MAX_TREE_NODES, Tree
from .verify import fetch_draws, verify


@dataclass
class Stats:
    steps: int = 0  # target forwards after prefill
    emitted: int = 0  # tokens emitted by those forwards
    accepted_lengths: Counter = field(default_factory=Counter)  # tokens per step -> count
    preemptions: int = 0  # times its pages went back to the pool for the others' steps (Engine.preempt)

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / self.steps if self.steps else 0.0

    def add(self, other: "Stats") -> None:
        """Count `other`'s steps, tokens and preemptions in these (a request's stats: its samples' summed)."""
        self.steps += other.steps
        self.emitted += other.emitted
        self.accepted_lengths.update(other.accepted_lengths)
        self.preemptions += other.preemptions


def held_back(text: str, stops: list[str]) -> int:
    """The length of the longest tail of `text` that is a proper beginning of a stop string (0 without any): text a
    stream must not show yet."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@dataclass
class Sequence:
    """One sample being generated: its tokens, pages, random key and stream, and output."""

    index: int  # which prompt
    sample: int  # which of its n samples
    tokens: list[int]  # prompt + emitted tokens
    prompt_len: int
    params: SamplingParams
    decoder: StreamDecoder
    table: list[int] = field(default_factory=list)  # page table of the target cache
    L: int = 0  # tokens whose K/V is in the cache; tokens[L] is the root of the next tree
    finish_reason: str | None = None
    text: str = ""
    streamed: int = 0  # characters of text yielded so far (a tail that may begin a stop string waits: emit_text)
    stats: Stats = field(default_factory=Stats)
    draft_state: object = None  # the drafter's own per-sequence state
    _rng: np.random.Generator | None = field(default=None, repr=False)
    _key: int | None = field(default=None, repr=False)

    @property
    def key(self) -> int:
        """This sample's key: its token after position p is drawn at u(key, p) (sampling.position_uniforms)."""
        if self._key is None:
            self._key = sequence_key(self.params.seed, self.sample)
        return self._key

    @property
    def rng(self) -> np.random.Generator:
        """This sample's random stream, for a draft model's sampled candidates (the tokens themselves are drawn at
        `key`): seeded by the key, so the same seed gives the same stream."""
        if self._rng is None:
            self._rng = np.random.default_rng(self.key)
        return self._rng

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def output_len(self) -> int:  # len(output), without the copy
        return len(self.tokens) - self.prompt_len

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, cache, drafter, max_model_len: int, prefill_chunk: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.drafter = drafter
        self.max_model_len = max_model_len
        self.prefill_chunk = prefill_chunk
        self.decode_ahead_enabled = True  # decoding without a drafter (all greedy or all sampled) runs one step ahead
        # one greedy sequence with the n-gram drafter: tree steps drafted, verified and committed on the device
        # (speculate_on_device); False keeps every tree step's host work between the steps
        self.device_drafting_enabled = True
        # prefix caching (KVCache.keep_prefix / reuse_prefix): a finished sequence's full pages stay in the pool for
        # the next prompt that starts with the same tokens (minispec chat: a turn re-sends the conversation)
        self.prefix_caching = False

    # ------------------------------------------------------------------ the loop
    def run(self, prompts: list[list[int]], params: list[SamplingParams]):
        """Yield (sequence, text piece) as tokens are accepted; returns when every sequence is done.

        A pool too small for the whole batch: prompts it cannot hold with the others wait to be prefilled (admit), a
        sequence it cannot give its next page waits a step (tree_budgets), and where it can give no sequence one, the
        last going one's pages go back and its tokens are prefilled again later (preempt, resume), first come first.
        A full pool is an error only where one sequence alone needs more than it holds."""
        for prompt in prompts:
            self.check_prompt(prompt)
        parents = [self.new_sequence(i, 0, prompt, p) for i, (prompt, p) in enumerate(zip(prompts, params))]
        queued = list(parents)  # prompts not prefilled yet, first come first (admit)
        seqs: list[Sequence] = []
        try:
            first = self.admit(queued, [])
            # all greedy or all sampled: a step's next tokens come from one kernel (argmax or the sampler), so
            # while there is nothing to verify the steps run one ahead of the host (decode_ahead)
            ahead = self.decode_ahead_enabled and self.drafter.host_only and len({p.greedy for p in params}) == 1
            asks = None if type(self.drafter) is NoDrafter else self.drafts_ready
            greedy = all(p.greedy for p in params)
            if ahead:  # the first step launched behind the prefill, its roots the first tokens left on the device
                seqs, last_rows = self.prefill_samples(first)
                firsts = [last_rows[s.index][0].choose_device(last_rows[s.index][1], s.params, s.key, s.prompt_len - 1)
                          for s in seqs]
                self.drafter.start(seqs)
                yield from self.decode_ahead(seqs, self.until_room(asks, queued), self.model.backend.concat(firsts))
            else:
                seqs += yield from self.start_sequences(first)
            text_due = []  # (sequence, tokens) of the last step whose text is not out yet (see below)
            preempted = []  # sequences whose pages went back to the pool (preempt), first preempted first
            while True:  # (no step is in flight here)
                try:
                    scheduled = yield from self.schedule(seqs, queued, preempted)
                except KVPoolFull:  # (one sequence over the pool): the last step's text goes out before the error
                    yield from self.emit_text(text_due)
                    raise
                if not scheduled:
                    break
                going, budgets = scheduled
                if not going:  # (the ones resumed or admitted finished at once)
                    continue
                active = going
                if 0 in budgets:  # the pool is short: those it cannot give a page wait for the others' (retire)
                    active, budgets = [s for s, b in zip(going, budgets) if b], [b for b in budgets if b]
                trees = self.drafter.propose(active, budgets)  # tokens[T], parents[T] per sequence
                if ahead and all(len(tree) == 1 for tree in trees):
                    yield from self.emit_text(text_due)
                    text_due = []
                    # until the drafter has drafts again, or the pool has room for a sequence that waits
                    stepping = {id(s) for s in active}
                    waiting = [s for s in going if id(s) not in stepping]
                    yield from self.decode_ahead(active, self.until_room(asks, waiting, preempted, queued))
                    continue
                if self.drafts_on_device(active, trees):
                    yield from self.emit_text(text_due)
                    text_due = []
                    if (yield from self.speculate_on_device(active[0], trees[0])) is not None:  # until no tree
                        continue  # (None: the pool could not give the stretch its pages; the host's step asks less)
                items = []
                try:
                    for seq, tree in zip(active, trees):
                        self.cache.prepare(seq.table, seq.L, len(tree))
                        items.append(StepItem.tree(seq.table, seq.L, tree))
                    logits = self.model.forward(build_plan(items, self.cache.page_size), self.cache)  # [N, V]
                    if greedy:  # verification reads the ids next
                        logits.fetch_argmax()
                    else:
                        fetch_draws(active, trees, logits)
                except Exception:  # (a full pool): the text of the tokens taken so far goes out before the error
                    yield from self.emit_text(text_due)
                    raise
                # the last step's text while this one runs: a sequence without stop strings has its tokens, and its
                # stop by a stop token or length, before its text (the host's ~20 µs a step of text off the GPU's
                # idle time between tree steps)
                yield from self.emit_text(text_due)
                text_due = []
                offset = 0
                for seq, tree in zip(active, trees):
                    path, bonus = verify(tree, logits, seq.params, seq.key, seq.L, slice(offset, offset + len(tree)))
                    offset += len(tree)
                    self.cache.commit(seq.table, seq.L, path)  # accepted K/V to L .. L+len(path)-1
                    seq.L += len(path)
                    accepted = [tree.token_list[node] for node in path[1:]] + [int(bonus)]
                    seq.stats.steps += 1
                    seq.stats.accepted_lengths[len(accepted)] += 1
                    if seq.params.stop:  # its text decides where it stops
                        yield from self.emit(seq, accepted)
                    else:
                        text_due.append((seq, self.take_tokens(seq, accepted)))
                    self.drafter.commit(seq, path, accepted)
                    if seq.done:  # no step is in flight here: its pages go back now, for the sequences going on
                        self.retire(seq)
            yield from self.emit_text(text_due)
            return seqs
        finally:
            for seq in parents + seqs:
                self.retire(seq)

    def schedule(self, seqs: list[Sequence], queued: list[Sequence], preempted: list[Sequence]):
        """A round of the loop's scheduling, with no step in flight: the pages of sequences that finished where no host
        step gives them back (in a device-drafted stretch, or at their first token) back; preempted sequences resumed or
        else (first come first) queued prompts admitted where the pool has room, their samples added to seqs (their
        first tokens' text is yielded); then each going sequence's tree budget (tree_budgets), the last going ones
        preempted where the pool can give none a page. Returns (going, budgets), ([], []) where the ones resumed or
        admitted finished at once, or None when every sequence is done."""
        for seq in seqs:
            if seq.done and seq.table:
                self.retire(seq)
        going = [s for s in seqs if not s.done and s.table]  # (a preempted sequence holds no pages)
        if preempted:
            self.resume(preempted, going)
        elif queued and (admitted := self.admit(queued, going)):
            seqs += yield from self.start_sequences(admitted)
        going = [s for s in seqs if not s.done and s.table]
        if not going:
            return ([], []) if preempted or queued else None
        budgets = self.tree_budgets(going)
        while not any(budgets):  # the pool cannot give any sequence its next page: the last one's go back
            if len(going) == 1:
                raise self.cache.full_error("one sequence needs more pages than the pool holds")
            preempted.append(self.preempt(going.pop()))
            budgets = self.tree_budgets(going)
        return going, budgets

    def preempt(self, seq: Sequence) -> Sequence:
        """Give a going sequence's pages back to the pool (preemption by recompute: resume prefills its tokens again
        once there is room); its tokens, text, stream and drafter state stay. With prefix caching its full pages are
        kept, so resume takes back those that no other sequence's pages evicted meanwhile."""
        self.release_pages(seq)
        seq.L = 0
        seq.stats.preemptions += 1
        return seq

    def resume(self, preempted: list[Sequence], going: list[Sequence]) -> None:
        """Prefill preempted sequences again, first preempted first, those the pool has room for (admit). A resumed
        sequence's K/V is the prefill's, whose products may round unlike the decode steps' that wrote it first
        (README: "Types and launches")."""
        back = self.admit(preempted, going)
        if not back:
            return
        for seq in back:  # tokens[L] is the next step's root, as before
            seq.table = self.cache.reuse_prefix(seq.tokens, len(seq.tokens) - 1) if self.prefix_caching else []
            seq.L = len(seq.table) * self.cache.page_size
        self.prefill(back, [len(seq.tokens) - 1 for seq in back])

    def admit(self, waiting: list[Sequence], going: list[Sequence]) -> list[Sequence]:
        """The first of `waiting` (queued prompts, or preempted sequences), taken off it in order, that the pool has
        room for beside every going sequence's next page (pages_to_go_on: a prompt's pages and a page for each of its
        samples' first token; a preempted sequence's tokens); with none going, the first at least (its prefill
        reports a pool too small for it alone)."""
        room = self.cache.free_pages - sum(map(self.pages_to_go_on, going))
        taken = []
        for seq in waiting:
            need = self.pages_to_go_on(seq)
            if need > room and (going or taken):
                break
            room -= need
            taken.append(seq)
        del waiting[: len(taken)]
        return taken

    def prefill_samples(self, parents: list[Sequence]) -> tuple[list[Sequence], dict]:
        """Prefill prompts (prefill_sharing) and fork their samples, which share the prompt's pages: (the samples,
        {prompt index: (StepLogits, row) of its last token})."""
        rows = dict(zip([parent.index for parent in parents], self.prefill_sharing(parents)))
        return [seq for parent in parents for seq in self.fork_samples(parent)], rows

    def start_sequences(self, parents: list[Sequence]):
        """prefill_samples, then emit each sample's first token, chosen on the host from its prompt's last row;
        returns the samples."""
        seqs, rows = self.prefill_samples(parents)
        for parent in parents:
            if parent.params.greedy:  # its first token's id: the copy queued now, read below
                rows[parent.index][0].fetch_argmax()
        self.drafter.start(seqs)  # while the prefill's last step runs (nothing has waited for it yet)
        for seq in seqs:
            logits, row = rows[seq.index]
            yield from self.emit(seq, [logits.choose(row, seq.params, seq.key, seq.prompt_len - 1)], from_step=False)
        return seqs

    def pages_to_go_on(self, seq: Sequence) -> int:
        """The pages a sequence needs for its next step: a going or waiting one's next token's, a preempted one's tokens
        (resume: the root's page too), a queued prompt's and a page for each of its samples' first token (admit)."""
        cache = self.cache
        if seq.table:
            return cache.pages_to_write(seq.table, seq.L, 1)
        return cache.pages_for(len(seq.tokens)) + (seq.params.n if seq.output_len == 0 else 0)

    def until_room(self, asks, *lines: list[Sequence]):
        """decode_ahead's `until` while sequences wait in lines (sequences waiting for a page, preempted ones, queued
        prompts; each served first come first): the drafter asks (asks), or the pool has room again for the first of a
        line (pages_to_go_on) beside a page for each sequence going. The lines are read when asked (the queue a
        stretch began with may be long)."""
        if not any(lines):
            return asks
        cache = self.cache

        def until(live: list[Sequence]) -> bool:
            if asks is not None and asks(live):
                return True
            return min(self.pages_to_go_on(line[0]) for line in lines if line) + len(live) <= cache.free_pages

        return until

    def retire(self, seq: Sequence) -> None:
        """A sequence's pages back to the pool (release_pages), its drafter's state dropped; again, nothing."""
        self.release_pages(seq)
        self.drafter.release(seq)

    def release_pages(self, seq: Sequence) -> None:
        """A sequence's pages back to the pool, with prefix caching its full ones kept (retire, preempt)."""
        if self.prefix_caching:  # positions below L hold tokens[:L]'s K/V at every point of the loop
            self.cache.keep_prefix(seq.table, seq.tokens, seq.L)
        self.cache.release(seq.table)

    def tree_budgets(self, seqs: list[Sequence]) -> list[int]:
        """Each sequence's most tree nodes: up to the context limit, and to the pages the pool can give once every
        sequence has those of its next token (so near a full pool the trees shrink, down to plain decoding, instead of
        the step failing where plain decoding would go on). The pages go to the sequences in turn. Where the pool
        cannot give every sequence its next token's pages, those it cannot (in turn) get 0: they wait a step, while
        the others go on and, finishing, give pages back; where it can give none, all get 0 (run then preempts)."""
        cache = self.cache
        budgets = [min(self.max_model_len - s.L, MAX_TREE_NODES) for s in seqs]
        need = [cache.pages_to_write(s.table, s.L, 1) for s in seqs]
        free = cache.free_pages
        waiting = set()
        if sum(need) > free:
            for i, pages in enumerate(need):
                if pages <= free:
                    free -= pages
                else:
                    waiting.add(i)
            if len(waiting) == len(seqs):
                return [0] * len(seqs)
        else:
            free -= sum(need)
        for i, s in enumerate(seqs):  # free: the pages left once every stepping sequence has its next token's
            budgets[i] = 0 if i in waiting else cache.fit_tokens(s.table, s.L, budgets[i], need[i] + free)
            free -= cache.pages_to_write(s.table, s.L, budgets[i]) - need[i] if budgets[i] else 0
        return budgets

    def drafts_on_device(self, seqs: list[Sequence], trees: list[Tree]) -> bool:
        """Whether the next tree steps run drafted on the device: one sequence with the n-gram drafter whose
        tree has drafts (both backends can: the NumPy backend's is the kernel's reference), with room
        for the steps in flight before the context limit, and pages for them in the pool."""
        if not self.device_drafting_enabled or type(self.drafter) is not NgramDrafter or len(seqs) != 1:
            return False
        seq, drafter, cache = seqs[0], self.drafter, self.cache
        N = pow2_bucket(drafter.budget.nodes)
        return (len(trees[0]) > 1
                and NgramParams.of(drafter, self.max_model_len).supported() and seq.L + 3 * N <= self.max_model_len
                and cache.pages_for(seq.L + 3 * N) - len(seq.table) <= cache.free_pages)  # the stretch's pages

    def speculate_on_device(self, seq: Sequence, tree: Tree | None = None, inflight=None):
        """Tree steps of one sequence with the n-gram drafter's work on the device (minispec/ngram_device.py):
        after each step one kernel verifies, commits, drafts the next tree and writes its plan, and the host launches
        step k + 1 before it reads step k's record (its tokens, the next tree's size, the drafter's counts). The tokens
        and trees are those of the host's loop: the same rules, in the same order. A sampled sequence's step draws
        each node's token at its position (ngram_draws, the plan's positions read on the device) and the kernel
        walks those draws as a greedy step's argmax ids (verify.py): the host's tokens again.

        Step k + 1 is launched while step k runs where step k's tree has drafts. Where the device's drafter gives no
        tree (no match, or tree steps that stopped paying) or the sequence ends, step k + 1's plan is empty: that step
        costs ~0.04 ms and gives no token, and the stretch returns to the host's loop, which decodes plainly one step
        ahead until a tree pays, as without the device (the same steps and tokens). Before each launch the sequence has
        pages for every position the steps in flight may write (3 N past what is read); a pool that cannot give them
        ends the stretch, and the host's loop then asks for only what a step needs. A sequence that stops wastes the
        steps launched past its end, as in decode_ahead. Returns whether the stretch ended where the device drafted
        nothing (the sequence goes on with plain decoding).

        inflight: instead of `tree`, the argmax ids (or draws) of a plain step already launched at L (decode_ahead hands its
        sequence over once drafts show): the device verifies that one-node step, drafts the first tree from its
        token and the host launches that tree step at once, with no host draft or GPU idle time in between. And
        where the device drafts nothing, the host launches the plain step at L as soon as it reads the record that
        says so, behind the empty step in flight, and returns it as decode_ahead's pending step (launch_plain)
        instead of True: the GPU goes back to plain decoding without waiting for the host's return to its loop
        (~0.1-0.3 ms a stretch end, notes/device_draft_timeline_h100_stop33.log). It is the step decode_ahead would
        launch first (the host's drafter, asked after it, drafts nothing at L either: the same rules), so the tokens
        are the same."""
        backend, cache, drafter = self.model.backend, self.cache, self.drafter
        history = drafter.history[id(seq)]
        params = NgramParams.of(drafter, self.max_model_len, seq, self.tokenizer.stop_token_ids)
        N = pow2_bucket(drafter.budget.nodes)  # the rows of a full tree's graph bucket
        # page-table entries and tokens for every position a stretch may reach (3 N past L, L + 3 N <= max_model_len)
        W, capacity = cache.pages_for(self.max_model_len + 4 * N) + 1, self.max_model_len + 4 * N
        buffers = backend.ngram_buffers(self.model, cache, N, W, capacity)
        try:
            cache.prepare(seq.table, seq.L, 3 * N)
        except KVPoolFull:  # (drafts_on_device counts the pages first) the host's step asks for its tree alone
            if inflight is None:  # (a plain step in flight writes at L: its page stays)
                cache.truncate(seq.table, seq.L)
            return None
        counts = (history.accepted, history.tries, history.tree_tokens, history.tree_steps)
        first = tree or Tree.single(seq.tokens[seq.L])  # (the plain step's plan carries the page table only)
        plan = build_plan([StepItem.tree(seq.table, seq.L, first)], cache.page_size)
        backend.ngram_load(buffers, seq.tokens, state_row(seq.L, len(first), *counts), tree_rows(first), plan, owner=seq)
        sizes = {0: len(first)}  # step -> its tree's nodes, once known
        launched = read = 0  # steps launched, steps whose record the host has read
        if inflight is not None:  # the plain step is step 0; step 1 goes behind it whatever its draft (an empty plan
            backend.ngram_advance(cache, buffers, inflight, 0, params)  # costs ~0.04 ms)
            sizes[0], launched = 2, 1
        L, pages = seq.L, len(seq.table)  # L: what the records read so far make final
        plain = None  # the plain step launched at the end (inflight)
        while True:
            size = sizes.get(launched, sizes.get(launched - 1, 0))  # the step to launch's tree, or the one in flight's
            if not seq.done and launched - read < 2 and size > 1 and L + 3 * N <= self.max_model_len:
                try:
                    cache.prepare(seq.table, L, 3 * N)  # every position the steps in flight and their drafts may reach
                except KVPoolFull:
                    size = 0
                else:
                    if len(seq.table) != pages:
                        backend.ngram_table(buffers, seq.table)
                        pages = len(seq.table)
                    # the most keys this step may have: the records in flight may each take N tokens
                    logits, ids = backend.replay_packed(self.model, cache, buffers, L + N * (launched - read + 1))
                    if not seq.params.greedy:  # each node's draw at its position, read from the plan on the device
                        ids = backend.ngram_draws(buffers, logits, seq.key, seq.params)
                    backend.ngram_advance(cache, buffers, ids, launched % 2, params)
                    launched += 1
                    continue
            if read == launched:
                break
            record = backend.ngram_read(buffers, read % 2)
            read += 1
            taken, sizes[read] = record[0], int(record[1])
            if seq.done or not taken:  # stopped at an earlier record, or its plan was empty: this step did nothing
                continue
            L = seq.L = int(record[2])
            history.accepted, history.tries, history.tree_tokens, history.tree_steps = (float(record[3]), float(record[4]),
                                                                                        int(record[5]), int(record[6]))
            seq.stats.steps += 1
            seq.stats.accepted_lengths[int(taken)] += 1
            yield from self.emit(seq, record[OUT_TOKENS : OUT_TOKENS + taken].tolist())
            if inflight is not None and sizes[read] == 0 and not seq.done and L + 3 * N <= self.max_model_len:
                plain = self.launch_plain([seq])  # (its page is among those prepared for the stretch)
        history.asked = history.tree = None
        if not seq.done:
            cache.truncate(seq.table, seq.L + (plain is not None))  # (the plain step in flight writes at L)
        if plain is not None:  # (launched only where the device drafted nothing)
            return plain
        # ended where the device drafted nothing (not at the end, the context limit or a full pool)
        return not seq.done and read > 0 and sizes[read] == 0 and seq.L + 3 * N <= self.max_model_len

    def hands_over(self, rows: list[Sequence]) -> bool:
        """Whether decode_ahead hands the step in flight to a device-drafted stretch: one sequence going on, whose
        tree (drafts_ready has just proposed it; the drafter answers again from its cache) drafts on the device."""
        if len(rows) != 1 or rows[0].done:
            return False
        return self.drafts_on_device(rows, self.drafter.propose(rows, [self.max_model_len - rows[0].L]))

    def drafts_ready(self, seqs: list[Sequence]) -> bool:
        """Whether the drafter proposes more than the root for any of `seqs` (a host-only drafter: asking is cheap)."""
        trees = self.drafter.propose(seqs, [self.max_model_len - s.L for s in seqs])
        return any(len(tree) > 1 for tree in trees)

    def launch_plain(self, rows: list[Sequence], ahead: int = 0, tokens=None) -> tuple:
        """One plain step of `rows` launched, their roots at L + ahead: s.tokens[L] from the host, or `tokens` on the
        device (a pending step's ids, one per row) -> decode_ahead's pending step (rows, ids on the device, their
        host copy's wait, 1). A sampled step draws each row at its root's position (sampling.position_uniform)."""
        # (root 0: a placeholder where the token is on the device)
        items = [StepItem.tree(s.table, s.L + ahead, Tree.single(s.tokens[s.L] if tokens is None else 0)) for s in rows]
        logits = self.model.forward(build_plan(items, self.cache.page_size), self.cache, tokens)
        if rows[0].params.greedy:
            ids = logits.argmax_device()
        else:
            ids = logits.sample_device([s.params for s in rows], [position_uniform(s.key, s.L + ahead) for s in rows])
        # the copy starts with step k + 1, from that step's token input (CudaBackend.to_host_soon, defer): the ids
        # are a graph's output or a fresh array, which nothing but a replay writes
        return rows, ids, self.model.backend.to_host_soon(ids, defer=True), 1

    def decode_ahead(self, seqs: list[Sequence], until=None, first=None):
        """Decoding without drafts (all greedy, or all sampled), one step ahead of the host.

        Step k + 1 is launched with the token step k left on the device (Model.forward's `tokens`) before the
        host reads that token, so the host's work between steps (the copy back, emitting text, stop checks,
        the next plan) overlaps the GPU's. A sequence that stops at step k's token wastes the step launched
        past it: its K/V landed beyond L on a page the sequence owns, and nothing reads it; its pages go back once
        that step is read (retire), those of one that step did not take at once. The tokens are
        those of step-by-step decoding (same kernels, same inputs; a sampled step draws each sequence's token
        at its root's position, as every step does: sampling.position_uniform). When
        the pool has no page for the step ahead, that round waits for the pending tokens and goes step by
        step (a sequence that stops there never needed the page); step by step, the sequences it has no page for
        wait while the others step, until those are done or short of pages too (their pages come back as they
        finish: retire); where it can give none a page, the stretch returns and run's loop preempts.

        until(sequences still going) -> bool, asked after each step's tokens: True launches no further step; the
        one in flight is read (its token is the next one whatever drafts come) and the stretch returns. A run with a
        drafter gives the same tokens with or without stretches, greedy or sampled (verify.py).

        first: the sequences' first tokens on the device, chosen from the prefill's logits (StepLogits.choose_device)
        and not yet emitted: the first step is launched behind the prefill with them as its roots (at L), so the
        host's first read, drafts and plan run while the GPU works; the tokens are those of choose."""
        backend = self.model.backend
        # (sequences of the step in flight, its argmax ids on the device, their host copy's wait, where its token
        # goes: 1 = L + 1 behind its root at L, 0 = L itself for the prefill's first tokens)
        pending = None
        if first is not None:
            pending = (list(seqs), first, backend.to_host_soon(first, defer=True), 0)
        stopping = False
        while True:
            if stopping:
                rows, ahead = [], 0
            elif pending is None:
                rows, ahead = [s for s in seqs if not s.done], 0
            else:  # those the pending token cannot finish by length (a stop token shows only when it is read)
                ahead = pending[3]
                rows = [s for s in pending[0] if not s.done and s.output_len + 1 < s.params.max_tokens and s.L + ahead + 1 < self.max_model_len]
            launched, ready = None, []
            try:
                for s in rows:  # the root of s sits at L, or at L + ahead behind the pending step's token
                    self.cache.prepare(s.table, s.L + ahead, 1)
                    ready.append(s)
            except KVPoolFull:
                if pending is None and not ready:  # run's loop makes room (preempt), or reports a full pool
                    return
                if pending is not None:  # this round reads the pending tokens; the next goes step by step
                    ready = []
            # (step by step, the sequences the pool has no page for wait until those that step are done or short of
            # pages themselves, which gives theirs back as they finish: retire)
            rows = ready
            if rows:
                tokens = None
                if pending is not None:  # the pending ids as they are, or the rows of the sequences still going
                    tokens = pending[1]
                    if len(rows) < len(pending[0]):
                        where = {id(s): i for i, s in enumerate(pending[0])}
                        tokens = backend.gather(pending[1], [where[id(s)] for s in rows])
                launched = self.launch_plain(rows, ahead, tokens)
            if pending is not None:
                for s, token in zip(pending[0], pending[2]()):  # waits for step k alone
                    if s.done:  # stopped at the previous token: this step ran past its end
                        continue
                    if not pending[3]:  # the prefill's token: no step made it
                        yield from self.emit(s, [int(token)], from_step=False)
                        continue
                    s.L += 1  # the root's K/V is in place (a one-node path moves nothing)
                    s.stats.steps += 1
                    s.stats.accepted_lengths[1] += 1
                    yield from self.emit(s, [int(token)])
                # a sequence done with this step's token and not in the step now in flight gives its pages back (one
                # that stopped at a stop token is in that step, whose K/V lands on its page: it gives them after it)
                in_flight = {id(s) for s in launched[0]} if launched is not None else set()
                for s in pending[0]:
                    if s.done and id(s) not in in_flight:
                        self.retire(s)
                live = [s for s in pending[0] if not s.done]
                stopping = stopping or (until is not None and bool(live) and until(live))
                if stopping and launched is not None and self.hands_over(launched[0]):
                    # drafts show for a sequence that drafts on the device: the step in flight becomes that stretch's
                    # first (its token verified there), so no host draft and no idle GPU come between
                    handed = yield from self.speculate_on_device(launched[0][0], inflight=launched[1])
                    if isinstance(handed, tuple):  # the device drafted nothing: plain steps again from the one it
                        pending, stopping = handed, False  # launched (the host's drafter, asked after that step,
                        continue  # would say the same)
                    if handed is not None:
                        return
                    # (None: no stretch started; the step in flight is read below as any other)
            if launched is None and pending is None:
                return
            pending = launched  # None: the next round goes step by step

    # ------------------------------------------------------------------ pieces of the loop
    def check_prompt(self, prompt: list[int]) -> None:
        if not prompt:
            raise MinispecError("the prompt is empty")
        if len(prompt) >= self.max_model_len:
            raise MinispecError(
                f"the prompt has {len(prompt)} tokens, over the context limit of {self.max_model_len} "
                "(one more token must fit): shorten it"
            )
        if max(prompt) >= self.model.config.vocab_size or min(prompt) < 0:
            raise MinispecError("the prompt holds token ids outside the vocabulary")

    def new_sequence(self, index: int, sample: int, prompt: list[int], params: SamplingParams) -> Sequence:
        return Sequence(index, sample, list(prompt), len(prompt), params, self.tokenizer.stream_decoder())

    def prefill(self, seqs: list[Sequence], ends: list[int] | None = None) -> list[tuple]:
        """Chunked prefill of every prompt (or of each sequence's tokens up to ends[i]: a preempted one's, resume),
        several sequences per step; (StepLogits, row) of each last token."""
        ends = ends or [s.prompt_len for s in seqs]
        last = [None] * len(seqs)
        while pending := [i for i, s in enumerate(seqs) if s.L < ends[i]]:
            items, owners, budget = [], [], self.prefill_chunk
            for i in pending:
                seq = seqs[i]
                take = min(budget, ends[i] - seq.L)
                if take == 0:
                    break
                self.cache.prepare(seq.table, seq.L, take)
                chunk = np.asarray(seq.tokens[seq.L : seq.L + take])
                items.append(StepItem.chunk(seq.table, seq.L, chunk))
                owners.append(i)
                budget -= take
            logits = self.model.forward(build_plan(items, self.cache.page_size), self.cache)  # [B, V]
            for row, i in enumerate(owners):
                seqs[i].L += len(items[row].tokens)
                if seqs[i].L == ends[i]:  # a copy of the row: a later step may replay this graph
                    last[i] = (logits.row(row), 0)
        return last

    def prefill_sharing(self, parents: list[Sequence]) -> list[tuple]:
        """prefill(parents); with prefix caching each prompt starts past the kept pages that hold its first tokens
        (one token at least is prefilled), and prompts of the batch that begin with a whole page of an earlier one's
        wait for its prefill and start from its pages too (a shared system prompt or examples prefilled once, in a
        second round of prefill steps)."""
        if not self.prefix_caching:
            return self.prefill(parents)
        P = self.cache.page_size
        first, later, seen = [], [], set()
        for seq in parents:
            keys = self.cache.prefix_keys(seq.tokens, (seq.prompt_len - 1) // P)
            (later if keys and keys[0] in seen else first).append(seq)
            seen.update(keys)
        rows = {}
        for group in (first, later):
            if not group:
                continue
            for seq in group:  # kept pages: earlier requests', and for the second group the first group's
                seq.table = self.cache.reuse_prefix(seq.tokens, seq.prompt_len - 1)
                seq.L = len(seq.table) * P
            rows.update(zip(map(id, group), self.prefill(group)))
            if group is first and later:  # their prompts' whole pages, for the rest of the batch
                for seq in first:
                    self.cache.keep_prefix(seq.table, seq.tokens, seq.L)
        return [rows[id(seq)] for seq in parents]

    def fork_samples(self, parent: Sequence) -> list[Sequence]:
        if parent.params.n == 1:
            return [parent]
        children = []
        for sample in range(parent.params.n):
            child = self.new_sequence(parent.index, sample, parent.tokens, parent.params)
            child.table, child.L = self.cache.fork(parent.table), parent.L
            children.append(child)
        self.cache.release(parent.table)
        return children

    def take_tokens(self, seq: Sequence, tokens: list[int], from_step: bool = True) -> list[int]:
        """Append accepted tokens up to a stop token or the length limit; the tokens appended, whose text emit_text
        gives (now, or for a tree step of a sequence without stop strings, once the next step is launched).

        from_step: the tokens come from a draft/verify step (counted in tokens per step), not the prefill.
        """
        params, taken = seq.params, []
        for token in tokens:
            if token in self.tokenizer.stop_token_ids and not params.ignore_eos:
                seq.finish_reason = "stop"
                break
            seq.tokens.append(token)
            seq.stats.emitted += from_step
            taken.append(token)
            if seq.output_len >= params.max_tokens or len(seq.tokens) >= self.max_model_len:
                seq.finish_reason = "length"
                break
        return taken

    def emit_text(self, due: list[tuple[Sequence, list[int]]]):
        """The text pieces of tokens take_tokens appended, in order; a stop string ends the sequence's text there. A
        piece stops short of a tail of the text that begins a stop string (the next tokens may complete it, and a
        stop string is never shown); that tail follows once it cannot, or when the sequence ends otherwise. At the
        end the decoder gives what it held back (a multi-byte character the last token cut), so the text is the
        tokenizer's decode of the output, up to a stop string."""
        for seq, tokens in due:
            stops, cut = seq.params.stop, False
            for token in [*tokens, None]:  # None: the end, once the sequence is done (the decoder's held-back bytes)
                if token is None and (cut or not seq.done):
                    break
                piece = seq.decoder.step(token) if token is not None else seq.decoder.finish()
                if not piece:
                    continue
                seq.text += piece
                stop_at = min((seq.text.find(s) for s in stops if s in seq.text), default=-1)
                if stop_at >= 0:
                    seq.text, seq.finish_reason, cut = seq.text[:stop_at], "stop", True
                    break
                ready = len(seq.text) - held_back(seq.text, stops)
                if ready > seq.streamed:
                    yield seq, seq.text[seq.streamed : ready]
                    seq.streamed = ready
            if seq.done and len(seq.text) > seq.streamed:  # stopped (a stop string, a stop token) or cut at a limit
                yield seq, seq.text[seq.streamed :]
                seq.streamed = len(seq.text)

    def emit(self, seq: Sequence, tokens: list[int], from_step: bool = True):
        """Append accepted tokens until a stop condition; yield text pieces. With stop strings a token at a time: its
        text decides whether the next one is taken."""
        if not seq.params.stop:
            yield from self.emit_text([(seq, self.take_tokens(seq, tokens, from_step))])
            return
        for token in tokens:
            yield from self.emit_text([(seq, self.take_tokens(seq, [token], from_step))])
            if seq.done:
                break
