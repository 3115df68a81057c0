"""Argmax, top-k log-probabilities and sampling on the CUDA backend (kernels/sampling.cu; the draws in
sampling_draw.cu): a step's rows of logits in, ids or draws out, with no host round trip between the logits and the
tokens. Part of CudaBackend (cuda_backend.py), whose state and launch helpers it uses.
"""

from __future__ import annotations

import numpy as np

from ..errors import MinispecError
from .driver import allow_shared

TOP_K_MAX, TOP_THREADS, TOP_SHARES = 8, 256, 64  # kernels/sampling.cu's top_share / top_merge
TOP_LAUNCHES_KEPT = 16  # top_logprobs' packed launches kept (a draft model's level buckets and the rows ranked)
SAMPLE_CLUSTER, SAMPLE_THREADS = 8, 1024  # blocks a row of sampling spreads over, and their threads (kernels/sampling_draw.cu)
SAMPLE_STATIC_SHARED = 40 << 10  # its blocks' static shared memory (SampleShared), rounded up
# argmax_share's blocks an SM in all (row_shares): 8, where the others take 2. Measured on an H200
# (notes/argmax_shares_h200_stop60.log), Llama-3's 128k logits: 16 rows 8.9 -> 7.0 µs, 32 rows 14.0 -> 8.7, 64 rows
# 20.0 -> 13.6 (the 8B T = 64 step 4-11 µs faster in three rounds), 1-4 rows level (their 63 shares of 2048 are the
# cap already); 16 a SM was level or slower. A block scans its share 2048 logits a round trip: more blocks, fewer trips.
ARGMAX_BLOCKS_PER_SM = 8


class SamplingLaunchers:
    """CudaBackend's argmax_device, top_logprobs, sample_rows, draw_rows and specinfer_rows."""

    def argmax_device(self, logits):
        """int32 [R] argmax of each row, left on the device (the host copy waits for the step)."""
        cp = self.cp
        logits = cp.ascontiguousarray(logits)
        R, V = logits.shape
        S = self.row_shares(R, V, ARGMAX_BLOCKS_PER_SM)
        best_value = cp.empty((R, S), dtype=cp.float32)
        best_index = cp.empty((R, S), dtype=cp.int32)
        ids = cp.empty(R, dtype=cp.int32)
        self.launch(self.kernel("sampling.cu", "argmax_share"), (S, R), (256,), (logits, best_value, best_index, np.int32(V)))
        self.launch(self.kernel("sampling.cu", "argmax_merge"), (R,), (32,), (best_value, best_index, ids, np.int32(S)))
        return ids

    def row_shares(self, R: int, V: int, blocks_per_sm: int = 2) -> int:
        """How many shares argmax_share / top_share cut each of R rows of V logits into: shares of at least 2048
        logits, about `blocks_per_sm` blocks per SM in all."""
        return max(1, min(-(-V // 2048), -(-blocks_per_sm * self.sm_count // R)))

    def top_logprobs(self, logits, k: int, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable tokens of rows `rows` (default: all) and their log-probabilities on the host (ids
        int32 [len(rows), k], logprobs float32): a draft model's greedy tree level copies these back, not its [R, V]
        logits. Every row is ranked (one launch of each kernel, whichever rows are asked); past TOP_K_MAX the rows
        come to the host and the reference ranks them."""
        ids, logprobs = self.top_logprobs_all(logits, k)
        return (ids, logprobs) if rows is None else (ids[rows], logprobs[rows])

    def top_logprobs_all(self, logits, k: int) -> tuple[np.ndarray, np.ndarray]:  # top_logprobs of every row
        cp = self.cp
        logits = cp.ascontiguousarray(logits)
        R, V = logits.shape
        k = min(k, V)  # (as the reference: a vocabulary smaller than k gives V columns)
        if not 1 <= k <= TOP_K_MAX:
            from ..sampling import top_logprobs

            return top_logprobs(cp.asnumpy(logits), k)
        # a draft's levels rank the same graph output buffer again and again: its two launches are packed once (their
        # buffers with them) and kept by the logits' address and shape, the last TOP_LAUNCHES_KEPT of them (packing
        # the arguments and allocating took ~130 µs of the host a level, six levels a step)
        key = (logits.data.ptr, R, V, k, self.pdl)
        kept = self.top_launches.pop(key, None)
        if kept is None:
            S = min(self.row_shares(R, V), TOP_SHARES)
            share_value = cp.empty((R, S, k), dtype=cp.float32)
            share_index = cp.empty((R, S, k), dtype=cp.int32)
            share_ml = cp.empty((R, S, 2), dtype=cp.float32)
            out = cp.empty((2, R, k), dtype=cp.int32)  # ids, then the logprobs' bits: one copy back
            share = self.prepared_launch(self.kernel("sampling.cu", "top_share"), (S, R), (TOP_THREADS,),
                                         (logits, share_value, share_index, share_ml, np.int32(V), np.int32(k)))
            merge = self.prepared_launch(self.kernel("sampling.cu", "top_merge"), (R,), (32,),
                                         (share_value, share_index, share_ml, out[0], out[1].view(cp.float32), np.int32(S), np.int32(k)))
            kept = (share, merge, out, (share_value, share_index, share_ml))
            if len(self.top_launches) >= TOP_LAUNCHES_KEPT:
                self.top_launches.pop(next(iter(self.top_launches)))  # the least recently used
        self.top_launches[key] = kept  # (most recently used last)
        share, merge, out, _ = kept
        share()
        merge()
        ids, logprobs = cp.asnumpy(out)  # (waits: the next call may reuse the buffers)
        return ids, logprobs.view(np.float32)

    def sample_rows(self, logits, rows, params, uniforms) -> np.ndarray:
        """tokens[r] drawn from p of params[r] at uniform u[r] (the row's position's, sampling.position_uniforms)."""
        return self.cp.asnumpy(self.sample_rows_device(logits, rows, params, uniforms))

    def sample_rows_device(self, logits, rows, params, uniforms, probs=None):
        """sample_rows, the tokens left on the device (int32 [R], not waited for). probs: float [R, V] or None,
        filled with each row's kept p (e units) for tests."""
        cp = self.cp
        logits = cp.ascontiguousarray(logits)
        R, V = len(rows), logits.shape[1]
        tokens = cp.empty(R, dtype=cp.int32)
        kernel, shared = self.sampling_kernel("sample_rows", V)
        self.launch(kernel, (SAMPLE_CLUSTER, R), (SAMPLE_THREADS,),
                    (logits, self.sample_settings(rows, params, uniforms), tokens, np.uint64(0) if probs is None else probs, np.int32(V),
                     np.uint64(0), np.uint64(0)), shared)
        return tokens

    def draw_rows(self, logits, rows, params, uniforms):
        """sample_rows_device's draws and, beside them on the device, each row's kept p as the draw walked it (float32
        [R, V] in e units: p / max p, 0 where filtered): the q a draft model's sampled chain was drawn from, which
        SpecInfer's rule reads (specinfer_rows)."""
        probs = self.cp.empty((len(rows), logits.shape[1]), dtype=self.cp.float32)
        return self.sample_rows_device(logits, rows, params, uniforms, probs), probs

    def specinfer_rows(self, logits, rows, params, uniforms, q, q_rows, children, residual_uniforms):
        """SpecInfer's test at chain nodes (kernels/sampling_draw.cu, specinfer_rows), left on the device (int32 [R], not
        waited for): -1 where row rows[r]'s child children[r], drawn from q[q_rows[r]] (kept e units, draw_rows'),
        is accepted at uniforms[r]; else the residual's draw at residual_uniforms[r]; where q_rows[r] < 0 (a chain's
        last node), p's draw at uniforms[r]. p: the row under params[r]."""
        cp = self.cp
        logits = cp.ascontiguousarray(logits)
        R, V = len(rows), logits.shape[1]
        tokens = cp.empty(R, dtype=cp.int32)
        settings = self.put([(row, p.temperature, p.top_k, p.top_p, p.min_p, u, j, c, w)
                             for row, p, u, j, c, w in zip(rows, params, uniforms, q_rows, children, residual_uniforms)], np.float64)
        kernel, shared = self.sampling_kernel("specinfer_rows", V)
        self.launch(kernel, (SAMPLE_CLUSTER, R), (SAMPLE_THREADS,), (logits, settings, cp.ascontiguousarray(q), tokens, np.int32(V)), shared)
        return tokens

    def sample_settings(self, rows, params, uniforms):
        """sample_rows' settings on the device: a row (logits row, temperature, top_k, top_p, min_p, u) a draw,
        float64 [R, 6] (the u column is unused where the kernel computes u from a key and positions)."""
        return self.put([(row, p.temperature, p.top_k, p.top_p, p.min_p, u) for row, p, u in zip(rows, params, uniforms)],
                        np.float64)

    def sampling_kernel(self, name: str, V: int):
        """A kernels/sampling_draw.cu kernel that spreads a row of V logits over a cluster of SAMPLE_CLUSTER blocks, and
        the dynamic shared memory of a block's slice."""
        shared = -(-V // SAMPLE_CLUSTER) * 4
        if shared > self.max_shared - SAMPLE_STATIC_SHARED:
            raise MinispecError(f"sampling: a vocabulary of {V} tokens is over the {SAMPLE_CLUSTER} shared-memory slices the kernel holds")
        kernel = self.kernel("sampling_draw.cu", name)
        allow_shared(kernel, shared)
        return kernel, shared
