"""A step on the GPU: its plan's arrays on the device (DevicePlan), the context bucket that shapes a captured
graph, one captured forward (CapturedStep), and a small output's copy to the host (HostRead)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..step import StepPlan, pack_plan, packed_offsets, pow2_bucket


def context_bucket(kv_len: int) -> int:
    """A captured graph's context bucket (attention's launch shape follows it)."""
    return max(256, pow2_bucket(kv_len))


@dataclass
class DevicePlan:
    """StepPlan arrays on the GPU plus the host facts launchers need (frozen into a captured graph)."""

    num_tokens: int  # N (padded to the bucket in a graph)
    batch_size: int  # B
    max_position: int
    max_kv_len: int  # longest context in the step (a power-of-two bucket in a captured graph)
    all_logits: bool
    has_causal: bool  # a prefill chunk is in the step (the fused-layers kernel takes decode and trees only)
    tokens: object
    positions: object
    slots: object
    cu_q: object
    kv_len: object
    tree_start: object
    masks: object
    causal: object
    page_tables: object
    logit_rows: object


class CapturedStep:
    """One captured forward for (model, cache, B, N bucket, kind): static inputs in one device buffer, static logits.

    Two kinds: decode / tree-verify steps (every row's logits) and prefill steps (causal chunks, the logits of
    each chunk's last row: `logit_rows` holds B rows).
    Layout of `packed` (int32): step.packed_offsets; fill writes it with step.pack_plan.
    """

    def __init__(self, cp, B: int, N: int, W: int, max_position: int, context: int, prefill: bool = False, packed=None):
        """packed: the device buffer of the inputs (the device drafter's next plan, which its kernel writes), or None
        for one of the step's own."""
        self.B, self.N, self.W = B, N, W
        self.offsets = packed_offsets(B, N, W)  # Python ints: fill slices with them every step
        self.cp = cp
        self.host = np.zeros(self.offsets[-1], dtype=np.int32)
        self.packed = cp.zeros(self.offsets[-1], dtype=cp.int32) if packed is None else packed
        part = lambda i: self.packed[self.offsets[i] : self.offsets[i + 1]]  # noqa: E731
        self.plan = DevicePlan(
            num_tokens=N, batch_size=B, max_position=max_position, max_kv_len=context, all_logits=not prefill, has_causal=prefill,
            masks=part(0).view(cp.uint64), tokens=part(1), positions=part(2), slots=part(3),
            logit_rows=part(4)[:B] if prefill else part(4), cu_q=part(5), kv_len=part(6), tree_start=part(7), causal=part(8),
            page_tables=part(9).reshape(B, W),
        )
        self.graph = self.logits = self.ids = None  # logits [R, V] and their argmax ids [R], written by the graph
        self.tokens_read = None  # event: a host copy of the token input done (CudaBackend.replay), before a refill
        self.keep = []  # memory allocated during capture stays owned by the graph
        self.views = {}  # R -> (logits[:R], ids[:R]): a CuPy slice costs the host more than the lookup

    def outputs(self, R: int):
        if R not in self.views:
            self.views[R] = (self.logits[:R], self.ids[:R])
        return self.views[R]

    def fill(self, plan: StepPlan, stream) -> None:
        """Write the plan into the static inputs (step.pack_plan): into `host`, then one copy in `stream`'s order.

        The copy is from pageable memory: the driver takes the few KB at once, and on the GPU it costs ~1 µs between
        two graphs, where a copy from pinned memory (a DMA by a copy engine) cost decode one step ahead ~3%
        (3259-3288 against 3369-3393 tokens/s, H100, notes/host_tree_step_h100_stop31.log). One cudaMemcpyAsync
        call: CuPy's ndarray.set took the host 10.1 against 6.3 µs (notes/scripts/replay_host_probe.py)."""
        host = self.host
        pack_plan(plan, host, self.N, self.W, self.offsets)
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(self.packed.data.ptr, host.ctypes.data, host.nbytes, runtime.memcpyHostToDevice, stream.ptr)


class HostRead:
    """A small device array's copy to pinned host memory (CudaBackend.to_host_soon), started when the backend says."""

    def __init__(self, cp, array):
        import cupyx

        self.cp, self.array = cp, array
        self.host = cupyx.empty_pinned(array.shape, array.dtype)
        self.copied = None

    def same(self, tokens) -> bool:
        """tokens is this array's content at the same place (the ids that a replay takes as its token input)."""
        a = self.array
        return (isinstance(tokens, self.cp.ndarray) and tokens.data.ptr == a.data.ptr and tokens.nbytes == a.nbytes
                and tokens.dtype == a.dtype)

    def start(self, stream, source):
        """Copy `source` (this array, or a copy of it made in `stream`'s order) to the host on `stream`."""
        cp = self.cp
        cp.cuda.runtime.memcpyAsync(self.host.ctypes.data, source.data.ptr, self.array.nbytes, cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        self.copied = cp.cuda.Event(disable_timing=True)
        self.copied.record(stream)
        return self.copied

    def wait_from(self, backend):
        def wait():
            if self.copied is None:  # still deferred: start it now
                backend.flush_host_read()
            self.copied.synchronize()
            self.array = None  # the device array stays alive until the copy is done
            return self.host

        return wait
