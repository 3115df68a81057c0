"""The n-gram drafter's tree steps on the device (minispec/ngram_device.py, kernels/ngram_step.cu): a sequence's
drafting state in device buffers, its tree steps replayed from a plan the device writes, and the kernel that
verifies, commits and drafts the next tree after each step. Part of CudaBackend (cuda_backend.py), whose state and
launch helpers it uses.
"""

from __future__ import annotations

import numpy as np

from ..step import StepPlan, pack_plan, packed_offsets
from .cuda_sampling import SAMPLE_CLUSTER, SAMPLE_THREADS
from .cuda_steps import CapturedStep, context_bucket


class NgramLaunchers:
    """CudaBackend's ngram_* methods and replay_packed."""

    def ngram_buffers(self, model, cache, N: int, W: int, capacity: int):
        """A sequence's device drafting state (minispec/ngram_device.py), one set per (model, cache, N) for the
        process: the graphs captured on its packed plan keep its pointer. The records are pinned host memory, which
        the kernel writes over the bus (unified addressing), so no copy sits in the stream between two steps."""
        from ..ngram_device import OUT_SIZE, STATE_SIZE, NgramBuffers
        from ..tree import MAX_TREE_NODES
        import cupyx

        key = ("ngram", N, W, capacity)
        buffers = self.graphs.get((model, cache), key)
        if buffers is None:
            cp = self.cp
            # one allocation, state | tree | packed | hist, so that a stretch's load is one copy (ngram_load)
            sizes = [STATE_SIZE, 2 * MAX_TREE_NODES, packed_offsets(1, N, W)[-1], capacity]
            at = np.cumsum([0, *sizes]).tolist()
            block = cp.zeros(at[-1], cp.int32)
            buffers = NgramBuffers(N, W, block[at[3] :], block[: at[1]], block[at[1] : at[2]].reshape(2, MAX_TREE_NODES),
                                   block[at[2] : at[3]], cupyx.empty_pinned((2, OUT_SIZE), np.int32),
                                   [cp.cuda.Event(disable_timing=True) for _ in range(2)], block,
                                   cupyx.empty_pinned(at[-1], np.int32), cp.cuda.Event(disable_timing=True))
            self.graphs.put((model, cache), key, buffers)
        return buffers

    def upload(self, array, host: np.ndarray, offset: int = 0) -> None:
        """host (int32) into a device int32 array from element `offset`, in stream order (one cudaMemcpyAsync)."""
        host = np.ascontiguousarray(host, dtype=np.int32)
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(array.data.ptr + 4 * offset, host.ctypes.data, host.nbytes, runtime.memcpyHostToDevice, self.stream.ptr)

    def ngram_load(self, buffers, tokens, state, tree, plan: StepPlan, owner=None) -> None:
        """The sequence's tokens, its state and tree rows (ngram_device.state_row, tree_rows), and its first plan,
        in one copy from pinned memory: the call returns at once, so at a hand-over the host goes on to launch the
        stretch while the plain step in flight runs (a copy from pageable memory may wait for the stream). owner:
        the sequence; where the last load was the same one's, the staging still holds the tokens it converted and
        only those added since are converted from the list (a hand-over late in a long answer converts a few,
        not thousands: 620 tokens took ~28 µs on a slow host). The copy sends them all, as before."""
        self.flush_host_read()
        buffers.loaded.synchronize()  # the last load's copy has read the staging (long since: a stretch ago)
        staging, head = buffers.staging, buffers.block.size - buffers.hist.size  # state | tree | packed, then hist
        staging[: state.size] = state
        staging[state.size : state.size + tree.size] = tree.reshape(-1)
        pack_plan(plan, staging[state.size + tree.size : head], buffers.N, buffers.W)
        staged = min(buffers.staged, len(tokens)) if owner is not None and buffers.owner is owner else 0
        staging[head + staged : head + len(tokens)] = tokens[staged:]  # (a sequence's tokens only grow)
        self.upload(buffers.block, staging[: head + len(tokens)])
        buffers.loaded.record(self.stream)
        buffers.owner, buffers.staged = owner, len(tokens)

    def ngram_table(self, buffers, table: list[int]) -> None:
        """The sequence's page table into the packed plan (pages added since), in stream order."""
        row = np.full(buffers.W, -1, dtype=np.int32)
        row[: len(table)] = table
        self.upload(buffers.packed, row, packed_offsets(1, buffers.N, buffers.W)[9])

    def replay_packed(self, model, cache, buffers, max_kv_len: int):
        """Launch the step whose plan the device wrote into buffers.packed (its graph captured on that buffer the
        first time; max_kv_len bounds its keys, which the host does not know) -> (logits [N, V], argmax ids [N]),
        the graph's static outputs."""
        self.flush_host_read()
        context = context_bucket(max_kv_len)
        key = (1, buffers.N, context, "ngram", self.launch_settings())
        step = self.graphs.get((model, cache), key)
        if step is None:
            step = CapturedStep(self.cp, 1, buffers.N, buffers.W, self.graph_positions(model), context, packed=buffers.packed)
            if self.use_graphs:
                self.capture(step, model, cache)
            self.graphs.put((model, cache), key, step)
        if step.graph is None:  # graphs off: launch by launch
            logits = model.compute(step.plan, cache)
            return logits, self.argmax_device(logits)
        step.graph.launch(self.stream)
        return step.outputs(buffers.N)

    def ngram_draws(self, buffers, logits, key: int, params):
        """Each row's draw at its position in buffers.packed (the sample_rows kernel computes u(key, position)):
        the sampled counterpart of replay_packed's argmax ids, into a buffer of the stretch's own, so that
        ngram_advance's packed launch reads the same pointer every step. Its arguments change only with the logits
        (a graph's static output), the key and the settings: packed once, kept with the buffers."""
        b = buffers
        entry = ("draws", logits.data.ptr, key, params.temperature, params.top_k, params.top_p, params.min_p)
        draws = b.launches.get(entry)
        if draws is None:
            R, V = logits.shape  # (R <= N: the graph's rows)
            if b.draws is None:
                b.draws = self.cp.empty(b.N, dtype=self.cp.int32)
            settings = self.sample_settings(range(R), [params] * R, [0.0] * R)
            positions = np.uint64(b.packed.data.ptr + 4 * packed_offsets(1, b.N, b.W)[2])
            kernel, shared = self.sampling_kernel("sample_rows", V)
            launch = self.prepared_launch(kernel, (SAMPLE_CLUSTER, R), (SAMPLE_THREADS,),
                                          (logits, settings, b.draws, np.uint64(0), np.int32(V), positions, np.uint64(key)), shared)
            draws = b.launches[entry] = (launch, settings)  # (the settings array lives as long as its launch)
        draws[0]()
        return b.draws

    def ngram_advance(self, cache, buffers, ids, slot: int, params) -> None:
        """The ngram_advance kernel after the step (kernels/ngram_step.cu): record `slot` is ready when its event is.
        Its arguments change only with the ids' array (a graph's static output, or the plain step's in flight at a
        hand-over), the slot and the request's settings, so each such launch is packed once and kept with the
        buffers (packing took ~85 µs of the host's ~270 at a hand-over, notes/handover_h100_stop35.log)."""
        b = buffers
        key = (ids.data.ptr, slot, params)  # the same pointer is the same argument, whichever array holds it now
        advance = b.launches.get(key)
        if advance is None:
            _, Hkv, P, D = cache.k[0].shape
            caches = self.cache_pointers(cache.k, cache.v)
            row_words = D * np.dtype(self.store_dtype).itemsize // 4
            i32 = np.int32
            args = (ids, b.hist, b.state, b.tree, b.packed, np.uint64(b.out[slot].ctypes.data), caches, i32(len(caches)),
                    i32(Hkv), i32(P), i32(row_words), i32(b.N), i32(params.max_len), i32(params.max_ngram),
                    i32(params.max_matches), i32(params.depth), i32(params.nodes), i32(params.width), i32(params.common),
                    i32(params.strong), np.float64(params.pays), *map(i32, params.stop_args()))
            if len(b.launches) >= 64:  # the settings hold each request's length limit: keep the recent ones
                b.launches.clear()
            advance = b.launches[key] = self.prepared_launch(self.kernel("ngram_step.cu", "ngram_advance"), (1,), (256,), args)
        advance()
        b.done[slot].record(self.stream)

    def ngram_read(self, buffers, slot: int) -> np.ndarray:
        """Record `slot` once its step's advance has run (waits for that alone)."""
        buffers.done[slot].synchronize()
        return buffers.out[slot].copy()
