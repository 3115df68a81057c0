"""The CUDA backend: CuPy arrays and the project's own kernels from `kernels/`.

Weights and KV pages are bf16 (stored as uint16 bit patterns: CuPy has no
bfloat16 dtype) or float32 for exactness checks; activations are float32.
Each kernel has one launcher here that checks shapes, dtypes and contiguity
and casts scalars (CuPy passes Python ints as 64-bit and floats as doubles).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import MinispecError
from ..step import StepPlan, pack_plan, packed_offsets, pow2_bucket
from . import CUDA_CAPABILITY, driver, tensor_map

KERNELS = Path(__file__).resolve().parent.parent.parent / "kernels"
INCLUDE = re.compile(r'#include "(\w+\.cuh)"')  # a kernels/ header, inlined by kernel_source
# Files whose instances come per head dim (kernels/head_dim.cuh): each is compiled for one head dim of HEAD_DIMS at a
# time (kernel()'s head_dim), about half the compile of a machine's first run.
HEAD_DIMS = (64, 128)
PER_HEAD_DIM = {"attention_mma.cu", "attention_wgmma.cu", "cluster_decode.cu", "cluster_tree.cu", "fused_layers_r1.cu", "fused_layers_r1_block.cu",
                "fused_layers_r4.cu", "fused_layers_r4_block.cu", "fused_layers_r16.cu", "fused_layers_r16_block.cu"}
COMPILING = weakref.WeakSet()  # the Futures of every precompile of this process (finish_compiles)
STREAM_ROWS = 128  # gemm_stream's weight rows per block
TOP_K_MAX, TOP_THREADS, TOP_SHARES = 8, 256, 64  # kernels/sampling.cu's top_share / top_merge
TOP_LAUNCHES_KEPT = 16  # top_logprobs' packed launches kept (a draft model's level buckets and the rows ranked)
# gemm_wgmma's ring depth by (consumer warpgroups, staged x rows) (kernels/gemm_wgmma.cu, GEMM_WGMMA_CLUSTERS)
WGMMA_GEMM_STAGES = {(1, 64): 13, (1, 32): 18, (1, 16): 22, (2, 64): 4}
WGMMA_TILES = {(2, 64)}  # gemm_wgmma_tiles_w{G}_x{X} kernels (the ring of gemm_wgmma_w{G}_x{X})
WGMMA_GLU_STAGES = {2: 4, 4: 5}  # gemm_wgmma_glu_w{G}'s ring depth by warpgroups a block (x in 64-row boxes)
SAMPLE_CLUSTER, SAMPLE_THREADS = 8, 1024  # blocks a row of sampling spreads over, and their threads (kernels/sampling.cu)
SAMPLE_STATIC_SHARED = 40 << 10  # its blocks' static shared memory (SampleShared), rounded up
FUSED_MAX_LAYERS = 64  # the fused kernel's layer table in shared memory (kernels/fused_layers.cuh, step_in_shared)
FUSED_STATIC_SHARED = 6 << 10  # its static shared memory (that table, the step's small inputs), rounded up
FUSED_SLOT_BYTES = 16 * 8 * 32 * 16  # the fused decode instance's weight slots: 16 warps x SLOT_CHUNKS x 16 bytes
# Steps whose attention takes at most this many key shares (up to 256 keys: context_bucket // 32) run the fused
# instances that merge them in shared memory, a block per (sequence, KV head, row group). Measured on the default
# model's shapes (H100, notes/fused_block_h100_stop23.log), decode: kernel span at 100 keys 561 -> 492 µs, at 8 full
# shares (255 keys) 548 -> 512; a T = 16 tree at 100 keys 782 -> 718. 16 shares (the 512 bucket) were level over the
# bucket for decode: 528 against ~550 µs at 300 keys, 571 against ~550 at 500.
FUSED_BLOCK_SPLITS = 8
# packed (node, head) rows per attention unit of a tree step: split keys, and the block instances (kernels/fused_layers.cuh,
# GROUP_ROWS and BLOCK_GROUP_ROWS)
FUSED_GROUP_ROWS, FUSED_BLOCK_GROUP_ROWS = 4, 2
CLUSTER_DECODE_BLOCKS = 8  # blocks per cluster of kernels/cluster_decode.cu (CD_CLUSTER)
CLUSTER_DECODE_MAX_PARTIALS = 24  # partial sums of each role at most (CD_MAX_PARTIALS: the polled slices' buffer)
CLUSTER_DECODE_ROWS = (1, 2, 4)  # cluster_decode.cuh's instances: rows a step at most (cluster_tree.cu: trees of up to 4 nodes)


def stream_shape(R: int, K: int, S: int = 1) -> tuple[int, int]:
    """gemm_stream's (k per stage, ring depth) for R staged x rows and S blocks per cluster, as instantiated in
    kernels/gemm.cu: k 128 x 3 up to 16 rows where K / S allows it, else k 64 x 4 (notes/gemm_stages_h100.log)."""
    return (128, 3) if R <= 16 and K % (128 * S) == 0 else (64, 4)


def wgmma_xrows(M: int, G: int) -> int:
    """gemm_wgmma's staged x rows (the N side of its wgmma) for M rows and G warpgroups a block: at one warpgroup 16
    up to 16 rows, 32 up to 32, so that the ring holds 22 or 18 weight stages instead of 13 (these products run on
    the weight bytes in flight: notes/gemm_xrows_ab_h100_stop37.log, 8B qkv at 24-32 rows 80-81% -> 87-89% of
    copy bandwidth); two warpgroups (two blocks an SM) keep 64."""
    if G == 2:
        return 64
    return 16 if M <= 16 else 32 if M <= 32 else 64


def wgmma_block_bytes(G: int, K: int, S: int) -> int:
    """The weight bytes a gemm_wgmma block streams: its 64 G rows over K / S, in bf16."""
    return 64 * G * (K // S) * 2


def stream_fits(N: int, K: int) -> bool:
    """Whether gemm_stream takes [N, K] weights: K in whole 64-wide stages, N K within its 32-bit element offsets."""
    return K % 64 == 0 and N * K < 1 << 32


def allow_shared(kernel, nbytes: int) -> None:
    """Let `kernel` take `nbytes` of dynamic shared memory (over 48 KiB needs the function's opt-in; set only when
    it grows, one driver call fewer per launch)."""
    if kernel.max_dynamic_shared_size_bytes < nbytes:
        kernel.max_dynamic_shared_size_bytes = nbytes


@contextmanager
def notice_if_slow(what: str, after: float = 1.0):
    """Say on stderr what the program waits for once it has waited `after` seconds, and how long it took: a
    machine's first run waits seconds for NVRTC (the GEMM and attention files a few each on an H200,
    notes/first_run_compile_h200_stop50.log), which would otherwise pass in silence; cached runs say nothing."""
    start, said = time.perf_counter(), threading.Event()

    def say():
        said.set()
        print(f"minispec: {what} ...", file=sys.stderr, flush=True)

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        timer.cancel()
        if said.is_set():
            print(f"minispec: {outcome} {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def finish_compiles() -> None:
    """Wait for the kernel files still compiling on precompile's threads, and say so once the wait passes half a
    second: a process's exit waits for them anyway (their threads are not daemons), and the CLI calls this before it
    returns, so a first run's pause after its answer is named. Their binaries land in CuPy's cache for later runs."""
    pending = [future for future in list(COMPILING) if not future.done()]
    if pending:
        with notice_if_slow("finishing the kernel compiles this run did not need (cached for later runs)", after=0.5):
            for future in pending:
                future.exception()  # waits; an error is raised where the module is needed, not here


def kernel_source(name: str) -> str:
    """A kernel file with its `#include "<header>.cuh"` lines (kernels/ headers, and theirs in turn) inlined, each
    header once: NVRTC gets one text, and CuPy's compile cache keys on it, so a header change recompiles."""
    inlined = set()

    def inline(match) -> str:
        header = match.group(1)
        if header in inlined:
            return ""
        inlined.add(header)
        return INCLUDE.sub(inline, (KERNELS / header).read_text().replace("#pragma once", ""))

    return INCLUDE.sub(inline, (KERNELS / name).read_text())


class IdentityTable:
    """Values keyed by live objects (by identity, held weakly) plus plain values (sizes, settings).

    An entry goes when one of its objects is freed: an object made later at a freed one's address (and so with
    its id) never finds that entry, and the table keeps nothing alive (a captured graph or pointer table must not
    hold its model or cache, or the backend that holds the table would keep both, and their GPU memory, forever).
    """

    def __init__(self):
        self.entries = {}

    def get(self, objects: tuple, extra=()):
        return self.entries.get((tuple(map(id, objects)), extra))

    def put(self, objects: tuple, extra, value):
        key = (tuple(map(id, objects)), extra)
        self.entries[key] = value
        for owner in objects:
            weakref.finalize(owner, self.entries.pop, key, None)
        return value

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()


# Prefill steps of up to this many rows replay a captured graph: a prompt (or a chat turn) of that size is
# launch-bound when run layer by layer (~7 ms of launches for 30 layers, against ~1 ms of GPU work on the
# default model); larger chunks run eagerly, where each bucket's activations would cost a graph its memory.
# Models with small layers (CudaBackend.small_layers) replay chunks of up to SMALL_PREFILL_GRAPH_ROWS, the
# engine's whole prefill chunk: their activations at 512 rows are a few MB a graph.
PREFILL_GRAPH_ROWS = 128
SMALL_PREFILL_GRAPH_ROWS = 512


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


NORM_SPLIT_ROWS = 4  # the most rows for which linear_norm splits the norm across two products (norm_split)
# A product's part in a split norm (kernels/gemm.cuh, NormRole) as (its kernels' name suffix, their further arguments):
# a plain product has none ("_finish": NormedRows.finish; "_begin": linear_norm)
NO_NORM = ("", ())


@dataclass
class NormedRows:
    """An RMSNorm's output that the product before it left split (kernels/gemm.cuh, GemmNorm): x' = bf16(r weight)
    [M, K] and each row's partial sums of r^2 [M, blocks]; the product after it scales its rows by
    rsqrt(sum / K + eps). residual (r, fp32) and weight remain for a product that cannot (materialise)."""

    x: object
    partials: object
    eps: float
    residual: object
    weight: object

    @property
    def shape(self):
        return self.x.shape

    def finish(self) -> tuple:
        """The product after the norm: its kernel's suffix and NORM_PARAMS__finish."""
        return "_finish", (self.partials, np.int32(self.partials.shape[1]), np.float32(self.eps))

    def materialise(self, backend):
        """h in the storage type, as add_rmsnorm forms it from the residual (the same bits as the unsplit norm)."""
        return backend.add_rmsnorm(self.residual, None, self.weight, self.eps)[0]


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


_STREAM = None
_CUBLAS = None


def compute_stream(cp):
    """One stream for every backend in the process: launches from two models can never race."""
    global _STREAM
    if _STREAM is None:
        _STREAM = cp.cuda.Stream(non_blocking=True)
    _STREAM.use()
    return _STREAM


def process_cublas(cp, stream):
    """(handle, None) or (None, why): one cuBLAS handle (and workspace) per process, bound to the one stream;
    a handle per backend would leak a handle and 32 MiB for every model loaded."""
    global _CUBLAS
    if _CUBLAS is None:
        try:  # cuBLAS through ctypes: capturable, unlike CuPy's
            from .cublas import Cublas

            _CUBLAS = (Cublas(cp, stream), None)
        except (OSError, RuntimeError, AttributeError) as error:
            _CUBLAS = (None, f"{type(error).__name__}: {error}")
    return _CUBLAS


class CudaBackend:
    name = "cuda"

    def __init__(self, dtype: str = "bfloat16", kv_memory_fraction: float = 0.5, use_graphs: bool | None = None):
        import cupy as cp

        if dtype not in ("bfloat16", "float32"):
            raise MinispecError(f"dtype {dtype!r}: the CUDA backend runs bfloat16 or float32")
        if not 0 < kv_memory_fraction <= 0.95:
            raise MinispecError("kv_memory_fraction must be in (0, 0.95]")
        self.cp = cp
        self.bf16 = dtype == "bfloat16"
        use_graphs = self.bf16 if use_graphs is None else use_graphs  # float32 mode calls cuBLAS, which cannot be captured
        self.store_dtype = cp.uint16 if self.bf16 else cp.float32
        self.kv_memory_fraction = kv_memory_fraction
        self.modules = {}  # (kernel file, head dim or None) -> RawModule (compiled for this backend's storage type)
        self.compiling = {}  # (file, head dim or None) -> Future of its RawModule, compiled on a thread of its own
        self.functions = {}  # (file, head dim or None, kernel name) -> Function
        self.device_id = cp.cuda.Device().id
        self.graphs = IdentityTable()  # (model, cache), (B, N bucket, context bucket, launch settings) -> CapturedStep
        # which GEMM serves `linear`: None follows `own_gemm_serves` (measured by `bench gemm`); "own" or "cublas"
        # forces one (tests, benchmarks); the own kernel also serves when cuBLAS cannot be loaded
        self.gemm = None
        self.gemm_cluster = None  # gemm_stream's / gemm_wgmma's blocks per cluster along K (None: by their rules)
        self.gemm_wgmma_groups = None  # gemm_wgmma's 64-row warpgroups per block, 1 or 2 (None: wgmma_groups)
        self.glu_groups = None  # gemm_wgmma_glu's warpgroups a block, 2 or 4 (None: wgmma_glu_groups)
        self.gemm_wgmma_xrows = None  # gemm_wgmma's staged x rows, 16, 32 or 64 (None: wgmma_xrows)
        self.gemm_wgmma_tiles = None  # gemm_wgmma on persistent blocks, True / False (None: wgmma_persistent)
        self.gemm_l2_promotion = None  # bytes an L2 miss of gemm_wgmma's TMA boxes fetches (None: gemm_promotion)
        self.gemm_norm = None  # the RMSNorm split across the products around it, True / False (None: norm_split's rule)
        self.use_graphs = use_graphs
        self.prefill_graph_limit = None  # most rows of a prefill step replayed as a graph (None: prefill_graph_rows)
        self.stream = compute_stream(cp)  # every launch goes here, so steps can be captured
        self.cublas, self.cublas_error = process_cublas(cp, self.stream)  # None: the own kernel serves every M
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        if (props["major"], props["minor"]) < CUDA_CAPABILITY:  # the GEMMs and sampling.cu launch thread block clusters
            raise MinispecError(
                f"the CUDA backend needs a GPU of compute capability {'.'.join(map(str, CUDA_CAPABILITY))} or later (Hopper); "
                f"{props['name'].decode()} is {props['major']}.{props['minor']}: use --device cpu"
            )
        self.sm_count = props["multiProcessorCount"]
        # Hopper (compute capability 9.0): kernels compile for sm_90a, whose warpgroup MMA (wgmma) the 8-warp
        # tree attention uses
        self.hopper = (props["major"], props["minor"]) == (9, 0) and tensor_map.available()
        # programmatic dependent launch for every kernel but the fused one (driver.py, kernels/pdl.cuh): a GEMM
        # copies its first weight stages while the kernel ahead of it finishes (tests and benchmarks turn it off)
        self.pdl = self.hopper and driver.launch_available()
        self.tensor_maps = IdentityTable()  # (k_cache, v_cache) -> TMA descriptors of the wgmma attention; (weight) -> gemm_wgmma's
        self.rope_cache = IdentityTable()  # (inv_freq) -> (cos, sin) device tables [positions, D/2]
        self.layer_tables = IdentityTable()  # (weights, cache), (layers, 0 / 1 / 2: the fused kernel's / cluster decode's one-row / its tree instances') -> uint64 [L, 8] pointers
        self.cluster_layouts = IdentityTable()  # (weights) -> the O and down weights as cluster decode reads them (cluster_weights)
        # fused-layers kernel: one persistent launch per step for steps of at most this many rows (0: off;
        # None: measured defaults, see fused_row_limit)
        self.fused_max_rows = None
        # tensor-core attention's launch shape (None: chosen per step; tests and benchmarks set them):
        self.attention_warps = None  # 4 or 8 warps of 16 rows per block
        self.attention_splits = None  # key shares per block (see attention_split_count)
        self.attention_wgmma = None  # 8-warp blocks on wgmma (None: on Hopper from 2k keys; True / False: always / never)
        self.attention_producers = None  # TMA producer warps of the wgmma kernel, 1 or 2 (None: attention_producer_count)
        self.attention_keys = None  # the wgmma kernel's key tile, 64 or 128 (None: attention_tile_keys)
        self.attention_early_trigger = None  # tensor-core attention triggers the next launch first (None: attention_trigger_first)
        self.attention_cluster_merge = None  # the mma.sync kernel merges its key shares in a cluster (None: attention_merge_cluster)
        self.attention_l2_promotion = 128  # bytes an L2 miss of the wgmma attention's K/V boxes fetches (attention_tensor_maps)
        self.fused_blocks = self.sm_count  # one resident block per SM (tests shrink it to exercise the striding)
        self.fused_clock = None  # uint64 [1 + 6 L] device array: per-phase timestamps (`bench e2e` breakdown)
        self.cluster_clock = None  # uint64 [1 + 7 L + 3 x 64]: cluster_decode.cu's stamps (notes/scripts/step_anatomy.py)
        # one-sequence decode steps of small models on kernels/cluster_decode.cu where it applies (cluster_decode_shape);
        # False: the fused-layers kernel serves them (tests, the fused kernel's stamps)
        self.cluster_decode = self.hopper
        # tree steps of one sequence and up to this many nodes on cluster decode too (kernels/cluster_tree.cu; 0: the fused kernel)
        self.cluster_tree_rows = 4
        self.cluster_counts = {}  # (rows, shared bytes) -> clusters of cluster_decode.cu resident at once (the driver's answer)
        self.cluster_partials = {}  # hidden size -> cluster_decode.cu's tagged partial sums and epoch (cluster_decode_buffers)
        self.max_shared = props["sharedMemPerBlockOptin"] - 2048  # dynamic shared memory, less the kernel's static
        self.pointer_tables = {}  # the K and V cache pointers themselves -> the same as a uint64 device array
        self._host_read = None  # to_host_soon's copy, deferred to the next replay
        self.side_stream = None  # where a replay's token input is copied to the host (created on first use)
        self.top_launches = {}  # top_logprobs' packed launches by (logits address, R, V, k, pdl), least recently used first

    # ------------------------------------------------------------------ compilation
    def kernel(self, file: str, name: str, head_dim: int | None = None):
        """The compiled kernel `name` of kernels/`file` (module and function looked up once per process). head_dim:
        given for the files of PER_HEAD_DIM (and only for them), which are compiled for that head dim alone."""
        unit = (file, head_dim)
        if (*unit, name) not in self.functions:
            if unit not in self.modules:
                # CuPy keeps the binary in its cache: only a machine's first run waits (precompile shortens that)
                dim = f" for head dim {head_dim}" if head_dim else ""
                with notice_if_slow(f"compiling kernels/{file}{dim} (once per machine: CuPy caches the binary)"):
                    future = self.compiling.pop(unit, None)
                    self.modules[unit] = future.result() if future is not None else self.compile_module(*unit)
            self.functions[(*unit, name)] = self.modules[unit].get_function(name)
        return self.functions[(*unit, name)]

    def compile_module(self, file: str, head_dim: int | None = None):
        """kernels/`file` compiled for this backend (storage type, architecture; a head dim, for the files of
        PER_HEAD_DIM) and loaded, on any thread."""
        if (head_dim is None) == (file in PER_HEAD_DIM):
            raise ValueError(f"kernels/{file} is compiled {'per' if head_dim is None else 'without a'} head dim")
        source = kernel_source(file)
        options = ("-std=c++17", "-DSTORAGE_BF16") if self.bf16 else ("-std=c++17",)
        options += ("-arch=sm_90a",) if self.hopper else ()
        options += (f"-DHEAD_DIM={head_dim}",) if head_dim is not None else ()
        options += (f"-DSOURCE_HASH_{hashlib.sha1(source.encode()).hexdigest()[:12]}",)
        module = self.cp.RawModule(code=source, options=options)
        with self.cp.cuda.Device(self.device_id):  # a thread's own current device: the module loads in ours
            module.compile()
        return module

    def warm_up(self, config=None) -> None:
        """Start compiling the kernel files a model's first steps launch (precompile): those of every model, and,
        given its config, the tensor-core attention for its head dim and, for small layers, the one-launch decode
        (kernels/cluster_decode.cu). warm_up_trees adds speculation's (LLM.use_drafter); the rest compile when first
        used."""
        units = [(file, None) for file in ("gemm.cu", "gemm_fused.cu", "gemm_wgmma.cu", "attention.cu", "elementwise.cu", "kv_cache.cu", "sampling.cu")]
        if config is not None and config.head_dim in HEAD_DIMS:
            units += [("attention_mma.cu", config.head_dim), ("attention_wgmma.cu", config.head_dim)]
            if self.cluster_decode and self.small_layers(config):
                units.append(("cluster_decode.cu", config.head_dim))
        self.precompile(units)

    def warm_up_trees(self, model, ngram: bool) -> None:
        """Start compiling what speculation launches beyond plain decoding: on models that take fused steps, the
        fused-layers instances of 2-16 rows (their 4- and 16-row passes, with and without the attention in one
        phase) for its head dim, cluster decode's tree instances where they serve (Hopper), and the n-gram drafter's
        device step. Compiled when first used, they kept a fresh
        machine's first tree steps waiting one file after another (16.6 s in all in notes/bench_e2e_h200_stop49.log's
        first run)."""
        units = [("ngram_step.cu", None)] if ngram else []
        c, limit = model.config, self.fused_row_limit(model)
        if self.bf16 and limit > 1 and c.head_dim in HEAD_DIMS:
            for rows in sorted({self.fused_pass_rows(c, rows) for rows in (2, limit)}):
                units += [(f"fused_layers_r{rows}{block}.cu", c.head_dim) for block in ("", "_block")]
            if self.cluster_decode and self.cluster_tree_rows > 1:  # trees of up to 4 nodes (cluster_decode_shape)
                units.append(("cluster_tree.cu", c.head_dim))
        self.precompile(units)

    def precompile(self, units) -> None:
        """Compile kernel files side by side, each on a thread of its own (NVRTC releases the GIL), while the caller
        goes on (LLM loads the weights meanwhile); kernel() waits for a file still compiling. A tiny model's first
        answer on a fresh H200 took 19.6 s with the files compiled one after another, 8.5 s side by side
        (notes/first_run_compile_h200_stop42.log); the default model's, once the files had grown, 17.1 s, and 11.8 s
        with the GEMM and attention kernels split into a file per family (notes/first_run_compile_h200_stop49.log);
        7.2 s (12.7 for stop 49's code on the same machine) with the files compiled per head dim
        (notes/first_run_compile_h200_stop50.log).
        With CuPy's cache warm each takes milliseconds either way. units: (file, head dim or None) pairs, as
        kernel() names them.
        The threads are not daemons: a process whose answer came before a file it did not need had compiled ended
        with NVRTC still running, and crashed on its way out (free(): invalid size, or a segmentation fault; stop 49's
        code too, notes/first_run_compile_h200_stop50.log). Its exit now waits for the compile, whose binary then
        lands in CuPy's cache for the next run."""
        for unit in units:
            if unit in self.modules or unit in self.compiling:
                continue
            future = self.compiling[unit] = Future()
            COMPILING.add(future)

            def run(unit=unit, future=future):
                try:
                    future.set_result(self.compile_module(*unit))
                except BaseException as error:  # (kernel() raises it where the module is needed)
                    future.set_exception(error)

            threading.Thread(target=run, name=f"minispec-compile-{unit[0]}").start()

    def launch(self, kernel, grid, block, args, shared_mem: int = 0) -> None:
        """Launch a project kernel on the compute stream: with programmatic dependent launch where `pdl` is on
        (Hopper; every kernel launched here waits for the one ahead of it with pdl_wait), else through CuPy."""
        if self.pdl:
            driver.launch(kernel, grid, block, args, shared_mem, self.stream.ptr)
        else:
            kernel(grid, block, args, shared_mem=shared_mem)

    def prepared_launch(self, kernel, grid, block, args, shared_mem: int = 0):
        """launch(), to repeat with the same arguments: call the result to launch. Where `pdl` is on the arguments
        are packed once (driver.PreparedLaunch); CuPy's launch packs them each call."""
        if self.pdl:
            return driver.PreparedLaunch(kernel, grid, block, args, shared_mem, self.stream.ptr)
        return lambda: kernel(grid, block, args, shared_mem=shared_mem)

    def put(self, values, dtype):
        """A host value or array as a contiguous device array of `dtype`."""
        return self.cp.asarray(np.ascontiguousarray(values, dtype=dtype))

    def describe(self) -> str:
        cp = self.cp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        return f"{props['name'].decode()} ({'bf16' if self.bf16 else 'fp32'} weights)"

    # ------------------------------------------------------------------ memory
    def _device_bytes(self, shape) -> int:
        return int(np.prod(shape)) * (2 if self.bf16 else 4)

    def check_fits(self, config, tensors) -> None:
        needed = sum(self._device_bytes(t.shape) for t in tensors.values())
        free, total = self.cp.cuda.runtime.memGetInfo()
        if needed > 0.95 * free:
            raise MinispecError(
                f"the model needs {needed / 2**30:.1f} GiB of GPU memory for its weights, but only "
                f"{free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB is free: use a smaller model or dtype"
            )

    def default_kv_tokens(self, config, max_model_len: int) -> int:
        free, _ = self.cp.cuda.runtime.memGetInfo()
        per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * (2 if self.bf16 else 4)
        fits = int(self.kv_memory_fraction * free // per_token)
        if fits < 16:
            raise MinispecError(f"no GPU memory left for the KV cache ({free / 2**30:.2f} GiB free)")
        return min(fits, 64 * max_model_len)

    def convert(self, array: np.ndarray):
        if array.ndim == 1:  # norm weights: tiny, kept in float32
            return self.cp.asarray(np.asarray(array, dtype=np.float32))
        if self.bf16:
            host = np.ascontiguousarray(np.asarray(array).astype(ml_dtypes.bfloat16)).view(np.uint16)
            return self.cp.asarray(host)
        return self.cp.asarray(np.ascontiguousarray(array, dtype=np.float32))

    def empty_cache(self, shape):
        return self.cp.empty(shape, dtype=self.store_dtype)

    def to_host(self, array) -> np.ndarray:
        return self.cp.asnumpy(array)  # waits for everything launched so far

    def to_host_soon(self, array, defer: bool = False):
        """Copy a small device array to pinned host memory in stream order; returns a function that waits for that
        copy alone, not for work launched after it, and gives the host array (decode_ahead reads step k's tokens
        while step k + 1 runs).

        defer: the copy waits for the next replay, and the caller promises that nothing but a replay writes the
        array before then (a graph's ids, or a fresh array). Where that replay takes this very array as its tokens
        (decode ahead feeding step k's ids to step k + 1), the copy reads the step's token input on a stream of its
        own once the tokens are in, and the step's stream runs copy-free from one graph to the next: in stream order
        the ids' copy cost ~11 µs a step (H100, notes/step_gaps_h100_stop25.log). Any other replay, another
        to_host_soon or the wait itself first starts the copy in stream order."""
        self.flush_host_read()
        read = HostRead(self.cp, self.cp.ascontiguousarray(array))
        if defer:
            self._host_read = read
        else:
            read.start(self.stream, read.array)
        return read.wait_from(self)

    def flush_host_read(self) -> None:
        """Start the deferred host copy (to_host_soon) in stream order, behind everything queued so far."""
        read, self._host_read = self._host_read, None
        if read is not None:
            read.start(self.stream, read.array)

    # ------------------------------------------------------------------ step plan
    def prepare_plan(self, plan: StepPlan) -> DevicePlan:
        self.flush_host_read()  # an eager step: a deferred copy (to_host_soon) goes ahead of it, as a replay's would
        put = self.put
        return DevicePlan(
            num_tokens=plan.num_tokens, batch_size=plan.batch_size, max_position=int(plan.positions.max()),
            max_kv_len=plan.max_kv_len, all_logits=plan.all_logits, has_causal=plan.has_causal, tokens=put(plan.tokens, np.int32), positions=put(plan.positions, np.int32),
            slots=put(plan.slots, np.int32), cu_q=put(plan.cu_q, np.int32), kv_len=put(plan.kv_len, np.int32),
            tree_start=put(plan.tree_start, np.int32), masks=put(plan.masks, np.uint64), causal=put(plan.causal, np.int32),
            page_tables=put(plan.page_tables, np.int32), logit_rows=put(plan.logit_rows, np.int32),
        )

    # ------------------------------------------------------------------ CUDA graphs
    def can_replay(self, plan: StepPlan, model) -> bool:
        """Decode and tree-verify steps (no causal chunk, every row's logits, N <= 64) and prefill steps (causal
        chunks only, each one's last row's logits, N <= prefill_graph_rows) run as graphs."""
        if not self.use_graphs:
            return False
        if not plan.has_causal:
            return plan.num_tokens <= 64 and plan.all_logits
        return self.is_prefill(plan) and plan.num_tokens <= self.prefill_graph_rows(model)

    def prefill_graph_rows(self, model) -> int:
        """Most rows of a prefill step that replays a graph: the engine's whole chunk on small models."""
        if self.prefill_graph_limit is not None:
            return self.prefill_graph_limit
        return SMALL_PREFILL_GRAPH_ROWS if self.small_layers(model.config) else PREFILL_GRAPH_ROWS

    @staticmethod
    def is_prefill(plan: StepPlan) -> bool:
        """Every item a causal chunk that needs its last row's logits alone."""
        return bool(plan.causal.all()) and np.array_equal(plan.logit_rows, plan.cu_q[1:] - 1)

    def replay(self, model, plan: StepPlan, cache, tokens=None):
        """Fill the bucket's static inputs, launch its graph (capturing it the first time); (logits [R, V], the
        argmax ids of those rows [R] int32), both the graph's static outputs: the next replay overwrites them.
        tokens: a device array that replaces the plan's tokens (copied in stream order, after the fill)."""
        cp = self.cp
        N, B = plan.num_tokens, plan.batch_size
        bucket = pow2_bucket(N)
        context = context_bucket(plan.max_kv_len)  # attention splits follow the context
        prefill = plan.has_causal
        key = (B, bucket, context, prefill, self.launch_settings())
        step = self.graphs.get((model, cache), key)
        if step is None:
            W = cache.pages_for(model.config.max_position_embeddings + 128) + 1  # a sequence's page-table entries
            step = CapturedStep(cp, B, bucket, W, self.graph_positions(model), context, prefill)
            step.fill(plan, self.stream)
            self.capture(step, model, cache)
            self.graphs.put((model, cache), key, step)
        read = self._host_read  # to_host_soon's deferred copy
        if read is not None and not read.same(tokens):
            self.flush_host_read()  # in stream order, before this replay can overwrite it
            read = None
        self._host_read = None
        if step.tokens_read is not None:  # the fill overwrites the token input a side copy reads
            self.stream.wait_event(step.tokens_read)
            step.tokens_read = None
        step.fill(plan, self.stream)
        if tokens is not None:
            step.plan.tokens[: plan.num_tokens] = tokens
            if read is not None:  # the tokens' host copy from the step's own input, off this stream
                filled = cp.cuda.Event(disable_timing=True)
                filled.record(self.stream)
                if self.side_stream is None:
                    self.side_stream = cp.cuda.Stream(non_blocking=True)
                self.side_stream.wait_event(filled)
                step.tokens_read = read.start(self.side_stream, step.plan.tokens[: plan.num_tokens])
        step.graph.launch(self.stream)
        return step.outputs(len(plan.logit_rows))

    def launch_settings(self) -> tuple:
        """The launch settings, part of a graph's key: changing one (tests, benchmarks) must capture anew."""
        return (self.fused_max_rows, self.fused_blocks, id(self.fused_clock), id(self.cluster_clock), self.attention_warps,
                self.attention_splits, self.attention_wgmma, self.attention_early_trigger, self.attention_cluster_merge, self.pdl,
                self.cluster_decode, self.cluster_tree_rows,
                self.gemm_wgmma_tiles, self.gemm_l2_promotion, self.attention_l2_promotion, self.gemm_norm, self.gemm,
                self.gemm_cluster, self.gemm_wgmma_groups, self.gemm_wgmma_xrows, self.glu_groups)

    def graph_positions(self, model) -> int:
        """RoPE positions a captured graph's tables cover (sized once: a graph keeps their pointer)."""
        limit = model.config.max_position_embeddings + 128
        self.rope_tables(model.inv_freq, limit)
        return limit

    def capture(self, step: CapturedStep, model, cache) -> None:
        """Run the step once (compiles kernels, leaves pool blocks of the right sizes), then capture it as a graph; the
        inputs in step.packed are those of a real step (the warm-up writes K/V where the step itself will)."""
        cp = self.cp
        self.argmax_device(model.compute(step.plan, cache))
        previous = cp.cuda.get_allocator()
        pool = cp.get_default_memory_pool()

        def keep_alive(size):
            memory = pool.malloc(size)
            step.keep.append(memory)
            return memory

        cp.cuda.set_allocator(keep_alive)
        try:
            self.stream.begin_capture()
            step.logits = model.compute(step.plan, cache)
            # every row's argmax in the graph too: a greedy step's host then only copies ids; two launches
            # from Python cost the host more than the GPU time a sampled step spends on them (0.7% of the
            # default model's sampled decode, notes/step_ab_h100_stop18.log)
            step.ids = self.argmax_device(step.logits)
            step.graph = self.stream.end_capture()
        finally:
            cp.cuda.set_allocator(previous)

    # ------------------------------------------------------------------ launchers
    @staticmethod
    def _check(array, dtype, ndim, name):
        if array.dtype != dtype or array.ndim != ndim or not array.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous {ndim}-d {np.dtype(dtype).name} array, got {array.dtype} {array.shape}")

    def embedding(self, table, tokens):
        cp = self.cp
        self._check(table, self.store_dtype, 2, "embedding table")
        out = cp.empty((len(tokens), table.shape[1]), dtype=cp.float32)  # [N, hidden]
        self.launch(self.kernel("elementwise.cu", "embedding"), (len(tokens),), (256,), (table, tokens, out, np.int32(table.shape[1])))
        return out

    def add_rmsnorm(self, x, residual, weight, eps):
        """x: fp32 [N, C] -> (normalised [N, C] in the storage type, residual fp32 [N, C])."""
        cp = self.cp
        self._check(x, cp.float32, 2, "add_rmsnorm input")
        N, C = x.shape
        has_residual = residual is not None
        residual = residual if has_residual else cp.empty((N, C), dtype=cp.float32)
        out = cp.empty((N, C), dtype=self.store_dtype)
        self.launch(self.kernel("elementwise.cu", "add_rmsnorm"),
            (N,), (1024,), (x, residual, np.int32(has_residual), weight, out, np.int32(C), np.float32(eps))
        )
        return out, residual

    def linear_norm(self, x, weight, residual, norm_weight, eps):
        """add_rmsnorm(linear(x, weight), residual, norm_weight, eps) -> (h, the new residual fp32 [M, N]). Where
        norm_split serves, h is NormedRows: the product adds the residual and leaves x' and the rows' partial sums
        (kernels/gemm.cuh, GemmNorm), and the product after it (linear, gate_up_silu) finishes the norm; the norm's
        launch is saved. Else the two ops."""
        M, K = x.shape
        N = weight.shape[0]
        if not self.norm_split(M, N, K):
            return self.add_rmsnorm(self.linear(x, weight), residual, norm_weight, eps)
        cp = self.cp
        self._check(x, self.store_dtype, 2, "linear_norm input")
        if weight.shape[1] != K:
            raise ValueError(f"linear_norm: x has K = {K}, weight is {weight.shape}")
        G, S = self.wgmma_shape(N, K, M)
        h, residual_out = cp.empty((M, N), dtype=self.store_dtype), cp.empty((M, N), dtype=cp.float32)
        partials = cp.empty((M, -(-N // 64) * S), dtype=cp.float32)
        begin = ("_begin", (np.uint64(0) if residual is None else residual, residual_out, norm_weight, h, partials))
        self.gemm_wgmma(x, weight, np.uint64(0), begin)
        return NormedRows(h, partials, eps, residual_out, norm_weight), residual_out

    def norm_split(self, M: int, N: int, K: int) -> bool:
        """Whether linear_norm splits the RMSNorm across the products around it: up to NORM_SPLIT_ROWS rows, where
        linear takes gemm_wgmma of one warpgroup a block (wgmma_takes_norm), bf16 (the 8B O and down products of a
        decode step). Measured on an H200, 8B step at 512 keys, by turns (notes/norm_split_h200_stop48.log): plain
        decode 4.300 -> 4.115 ms, one step ahead 4.236 -> 4.085, a decode step of 4 sequences 4.557 -> 4.375; split
        up to 16 rows too, a T = 16 tree step 4.573 -> 4.705 (each block of the product after loads 16 x 128
        partials at its end). gemm_norm forces it off, or on wherever wgmma_takes_norm (tests)."""
        if self.gemm_norm is False or not (self.bf16 and self.hopper):
            return False
        if self.gemm_norm is None and not (M <= NORM_SPLIT_ROWS and self.own_gemm_chosen(M, N, K) and self.own_kernel(M, N, K) == "wgmma"):
            return False
        return self.wgmma_takes_norm(M, N, K)

    def wgmma_takes_norm(self, M: int, N: int, K: int) -> bool:
        """Whether gemm_wgmma for x [M, K], W [N, K] has kernels that begin or finish a split norm (kernels/gemm_wgmma.cu
        builds them for one warpgroup a block in 16-row x boxes, one pass of blocks)."""
        if not (0 < M <= 16 and K % 64 == 0):
            return False
        G, S = self.wgmma_shape(N, K, M)
        X = self.gemm_wgmma_xrows or wgmma_xrows(M, G)
        return (G, X) == (1, 16) and K % (64 * S) == 0 and not self.wgmma_persistent(-(-N // 64), G, X, S)

    def linear(self, x, weight):
        """y fp32 [M, N] = x[M, K] W[N, K]^T: the own weight-streaming kernel or cuBLAS (bf16), cuBLAS through CuPy
        (float32). x may be NormedRows (linear_norm): the kernels that can (finishes_norm) finish the norm in their
        end, others take it materialised."""
        cp = self.cp
        M, K = x.shape
        N = weight.shape[0]
        kernel = self.own_kernel(M, N, K) if self.bf16 and self.own_gemm_chosen(M, N, K) else "cublas"
        norm = NO_NORM
        if isinstance(x, NormedRows):
            x, norm = (x.x, x.finish()) if self.finishes_norm(kernel, M, N, K) else (x.materialise(self), NO_NORM)
        self._check(x, self.store_dtype, 2, "linear input")
        if weight.shape[1] != K:
            raise ValueError(f"linear: x has K = {K}, weight is {weight.shape}")
        if not self.bf16:
            return cp.matmul(x, weight.T)
        y = cp.empty((M, N), dtype=cp.float32)
        if kernel == "cublas":
            self.cublas.gemm_bf16(x, weight, y)
        elif kernel == "wgmma":
            self.gemm_wgmma(x, weight, y, norm)
        elif kernel == "stream":
            self.gemm_stream(x, weight, y, norm)
        elif K % 16 == 0:
            self.launch(self.kernel("gemm.cu", "gemm_bf16"), ((N + 31) // 32, (M + 63) // 64), (128,), (x, weight, y, np.int32(M), np.int32(N), np.int32(K)))
        else:
            raise ValueError(f"linear: K = {K} must be a multiple of 16 for the tensor-core kernel")
        return y

    def own_kernel(self, M: int, N: int, K: int) -> str:
        """The own kernel `linear` takes for x [M, K] and W [N, K] where the own kernels serve: "wgmma", "stream"
        (K in whole 64-wide stages), else "bf16"."""
        if self.wgmma_gemm_fits(M, N, K):
            return "wgmma"
        return "stream" if stream_fits(N, K) else "bf16"

    def own_gemm_chosen(self, M: int, N: int, K: int) -> bool:
        """Whether this product runs on the own kernels: forced (`gemm`), by own_gemm_serves, or for want of cuBLAS."""
        return self.cublas is None or self.gemm == "own" or (self.gemm is None and self.own_gemm_serves(M, N, K))

    def own_gemm_serves(self, M: int, N: int, K: int) -> bool:
        """Whether the own kernels serve rather than cuBLAS (`bench gemm`): gemm_wgmma wherever it takes the product
        (wgmma_gemm_fits), and gemm_stream elsewhere up to 16 rows where K is a multiple of 128, or where the weight
        has a 128-row tile for every SM (the default model's LM head, 20.7 / 21.2 / 23.3 µs against cuBLAS's 22.6 /
        23.0 / 24.1 at 1 / 4 / 16 rows, notes/graph_tail_h100_stop24.log). gemm_wgmma takes 17-64 rows where the
        weight has a tile for every SM (the 8B gate/up and LM head: 2% and 8% faster), or where each block streams at
        least 512 KB of weights (stop 37, notes/gemm_xrows_ab_h100_stop37.log: 8B qkv 82-89% of copy bandwidth
        against cuBLAS's 77-81%, O 77-82% against 74-77%, down 89-94% against 84-87%; shorter streams gave way to
        cuBLAS at stop 34, when O's blocks streamed 256 KB: 69-74% against 74-76%)."""
        if self.wgmma_gemm_fits(M, N, K):
            return M <= 16 or self.wgmma_shape(N, K, M)[0] == 2 or self.wgmma_tile_bytes(N, K) >= 512 << 10
        return M <= 16 and stream_fits(N, K) and (K % 128 == 0 or -(-N // STREAM_ROWS) >= self.sm_count)

    def gemm_stream(self, x, weight, y, norm: tuple = NO_NORM) -> None:
        """gemm_stream_r{R}_k{BK}_s{S} (kernels/gemm.cu) into y fp32 [M, N]: R staged x rows (one launch
        row-tile), BK k per ring stage, S blocks of a cluster share K and sum their parts on chip. norm: its part in
        a split norm (NO_NORM, or NormedRows.finish: the rows' norm finished at the end)."""
        self.launch_stream("gemm_stream", x, weight, y, weight.shape[0], norm)

    def stream_launch_shape(self, M: int, N: int, K: int) -> tuple[int, int, int, int]:
        """gemm_stream's (staged x rows R, blocks a cluster S, k a stage BK, ring stages) for x [M, K], W [N, K]."""
        R = min(64, max(8, pow2_bucket(M)))
        S = self.gemm_cluster or self.stream_cluster_size(-(-N // STREAM_ROWS) * -(-M // R), K, stream_shape(R, K)[0])
        return (R, S, *stream_shape(R, K, S))

    def launch_stream(self, name: str, x, weight, out, columns: int, norm: tuple = NO_NORM) -> None:
        """A gemm_stream kernel (plain or gated) on x [M, K] and W [N, K] into out [M, columns]: grid (N / 128
        weight tiles, S, x row tiles). norm: its part in a split norm (NO_NORM, or NormedRows.finish)."""
        M, K = x.shape
        N = weight.shape[0]
        if not stream_fits(N, K):
            raise ValueError(f"{name}: [{N}, {K}] weights need K % 64 == 0 and N K < 2^32")
        R, S, BK, stages = self.stream_launch_shape(M, N, K)
        if K % (BK * S):
            raise ValueError(f"{name}: K = {K} is not a multiple of {BK} x {S} blocks per cluster")
        suffix, norm_args = norm
        if suffix and BK != 128:
            raise ValueError(f"{name}: only the k 128 kernels take a split norm (R = {R}, k {BK})")
        shared = stages * (STREAM_ROWS + R) * BK * 2
        plain = name == "gemm_stream" and not suffix  # (gemm.cu; a fused epilogue's instances are in gemm_fused.cu)
        kernel = self.kernel("gemm.cu" if plain else "gemm_fused.cu", f"{name}_r{R}_k{BK}_s{S}{suffix}")
        allow_shared(kernel, shared)
        args = (x, weight, out, np.int32(M), np.int32(columns), np.int32(K), *norm_args)
        self.launch(kernel, (-(-N // STREAM_ROWS), S, -(-M // R)), (256,), args, shared)

    def wgmma_gemm_fits(self, M: int, N: int, K: int) -> bool:
        """Whether `linear` takes gemm_wgmma for x [M, K] and W [N, K]: Hopper, K in whole 64-wide stages, and 17-64
        rows, or up to 16 where the block has one warpgroup and streams 512 KB or more of weights (8B qkv, O and down:
        x in 16-row boxes leaves room for 22 weight stages; 87-89%, 94-95% and 96-97% of copy bandwidth at 1-16 rows
        against gemm_stream's 81-83%, 89-94% and 89-92%, notes/gemm_xrows_ab_h100_stop37.log). Up to 16 rows
        elsewhere (the 8B gate/up and LM head, two warpgroups a block) gemm_stream serves."""
        if not (self.hopper and 0 < M <= 64 and K % 64 == 0):
            return False
        if M > 16:
            return True
        G = self.wgmma_shape(N, K, M)[0]
        return G == 1 and (G, wgmma_xrows(M, G)) in WGMMA_GEMM_STAGES and self.wgmma_tile_bytes(N, K) >= 512 << 10

    def wgmma_tile_bytes(self, N: int, K: int) -> int:
        """The weight bytes of a gemm_wgmma tile over the whole of K (a block's stream without split-K): what decides
        whether the kernel serves, whatever clusters split it (wgmma_cluster_size)."""
        return wgmma_block_bytes(self.wgmma_shape(N, K)[0], K, 1)

    def gemm_wgmma(self, x, weight, y, norm: tuple = NO_NORM) -> None:
        """gemm_wgmma_w{G}_x{X}_s{S} (kernels/gemm_wgmma.cu) into y fp32 [M, N]: G warpgroups of 64 weight rows a block, x
        in X-row boxes (wgmma_xrows), S blocks of a cluster share K and sum their parts on chip; W and x reach shared
        memory by TMA. norm: its part in a split norm (NO_NORM; NormedRows.finish; linear_norm's begin), where
        wgmma_takes_norm."""
        M, K = x.shape
        N = weight.shape[0]
        if not (self.hopper and 0 < M <= 64 and K % 64 == 0):
            raise ValueError(f"gemm_wgmma: x [{M}, {K}] needs Hopper, 1-64 rows and K % 64 == 0")
        G, S = self.wgmma_shape(N, K, M)
        if K % (64 * S):
            raise ValueError(f"gemm_wgmma: K = {K} is not a multiple of 64 x {S} blocks per cluster")
        X = self.gemm_wgmma_xrows or wgmma_xrows(M, G)
        if M > X or (G, X) not in WGMMA_GEMM_STAGES:
            raise ValueError(f"gemm_wgmma: no kernel of {G} warpgroups a block takes {M} rows in {X}-row x boxes")
        if norm != NO_NORM and not self.wgmma_takes_norm(M, N, K):
            raise ValueError(f"gemm_wgmma: no kernel of {G} warpgroups in {X}-row x boxes takes a split norm")
        tiles = -(-N // (64 * G))
        if self.wgmma_persistent(tiles, G, X, S):
            name, grid = f"gemm_wgmma_tiles_w{G}_x{X}", (min(tiles, 2 * self.sm_count),)
        else:
            name, grid = f"gemm_wgmma_w{G}_x{X}_s{S}", (tiles, S)
        self.launch_wgmma(name, G, X, grid, x, weight, 64 * G, y, N, norm=norm)

    def finishes_norm(self, kernel: str, M: int, N: int, K: int) -> bool:
        """Whether linear's kernel for x [M, K], W [N, K] can finish a split norm (NormedRows) at its end: gemm_stream
        in k 128 stages (up to 16 rows), and gemm_wgmma where wgmma_takes_norm (kernels/gemm.cu and gemm_wgmma.cu
        build no others)."""
        if kernel == "stream":
            return self.stream_launch_shape(M, N, K)[2] == 128
        return kernel == "wgmma" and self.wgmma_takes_norm(M, N, K)

    def wgmma_persistent(self, tiles: int, G: int, X: int, S: int) -> bool:
        """Whether gemm_wgmma runs as gemm_wgmma_tiles (persistent blocks, two an SM, each over several tiles): forced
        (gemm_wgmma_tiles), else where the product has no split-K and more tiles than one wave of two blocks an SM
        (the LM heads at 17-64 rows)."""
        if (G, X) not in WGMMA_TILES:
            return False
        if self.gemm_wgmma_tiles is not None:
            return self.gemm_wgmma_tiles and S == 1
        return S == 1 and tiles > 2 * self.sm_count

    def wgmma_shape(self, N: int, K: int, M: int = 64) -> tuple[int, int]:
        """gemm_wgmma's (warpgroups a block G, blocks a cluster S) for [N, K] weights and M rows: forced
        (gemm_wgmma_groups, gemm_cluster), else by wgmma_groups and wgmma_cluster_size."""
        G = self.gemm_wgmma_groups or self.wgmma_groups(N)
        return G, self.gemm_cluster or self.wgmma_cluster_size(-(-N // (64 * G)), K, G, M)

    def launch_wgmma(self, name: str, G: int, X: int, grid, x, weight, box_rows: int, out, N: int, stages: int = 0,
                     norm: tuple = NO_NORM) -> None:
        """A gemm_wgmma kernel (G warpgroups a block) on x [M, K] and a weight read in box_rows-row TMA boxes (its
        descriptor made once per weight), into out; x's descriptor per call (a captured graph keeps it). norm: its
        part in a split norm (kernels/gemm.cuh's NormRole: the kernel's name suffix and further arguments)."""
        M, K = x.shape
        promotion = self.gemm_promotion(M, G)
        w_map = self.tensor_maps.get((weight,), (box_rows, promotion))
        if w_map is None:
            w_map = self.tensor_maps.put((weight,), (box_rows, promotion),
                                         tensor_map.swizzled_rows(weight, weight.shape[0], K, box_rows, promotion=promotion))
        x_map = tensor_map.swizzled_rows(x, M, K, X, promotion=promotion)  # X-row boxes, rows past M read as zeros
        kernel = self.kernel("gemm_wgmma.cu", name + norm[0])
        stages = stages or WGMMA_GEMM_STAGES[G, X]
        shared = stages * (64 * G + X) * 64 * 2 + 1024 + 16 * stages  # the ring (W and x stages), alignment, barriers
        allow_shared(kernel, shared)
        self.launch(kernel, grid, (128 * G + 32,), (w_map, x_map, out, np.int32(M), np.int32(N), np.int32(K), *norm[1]), shared)

    def gemm_promotion(self, M: int, G: int = 1) -> int:
        """The bytes an L2 miss of gemm_wgmma's TMA boxes (64-128 weight rows of 128 bytes, 2K bytes apart) fetches at
        least, for M rows and G warpgroups a block: 128, a box row, up to 32 rows at one warpgroup (qkv, O, down); 256
        (the driver's usual: the row and the next stage's 128 bytes of it) above, and at two or four warpgroups.
        Measured on an H200: alone as bench gemm times them (notes/gemm_bound_h200_stop44.log), 128 took the 8B qkv
        from 14.7 to 14.1 µs at one row, down 29.8 -> 28.4, O 11.1 -> 10.9, and at 64 rows qkv 16.9 -> 16.4, gate/up
        63.4 -> 62.3, down 32.5 -> 32.0; in the 8B step (notes/gemm_promotion_h200_stop44.log) decode one step ahead
        4.276 -> 4.243 ms, T = 16 4.618 -> 4.571, but T = 64 slower in six paired rounds of six (by 4-43 µs): 256
        stays from 33 rows, where a GEMM's first weight copies (issued during the kernel before it, kernels/pdl.cuh)
        bring twice the bytes into L2 while the longer kernels before it leave DRAM idle. No promotion measured as 128
        within 0.2 µs. The kernels of two or four warpgroups (gate/up, the LM heads: gemm_wgmma from 17 rows) lost
        with 128 at 32 rows (bench gemm: the 8B LM head 256.3 µs with 256, notes/bench_gemm_h200_stop43.log, 269.2
        with 128, notes/bench_gemm_h200_stop45.log; the 8B T = 32 step 4.917 -> 4.885 ms with 256 for them, in 4 of 4
        paired rounds, notes/gemm_promotion_groups_h200_stop45.log)."""
        if self.gemm_l2_promotion is not None:
            return self.gemm_l2_promotion
        return 128 if M <= 32 and G == 1 else 256

    def wgmma_groups(self, N: int) -> int:
        """gemm_wgmma's warpgroups a block: 2 (128 rows) where that gives every SM a tile without splitting K,
        else 1, so that split-K clusters keep more k stages a block."""
        return 2 if -(-N // 128) >= self.sm_count else 1

    def wgmma_cluster_size(self, tiles: int, K: int, G: int = 1, M: int = 64) -> int:
        """The most blocks per cluster (1, 2, 4, 8) that keep the grid within one block per SM, with at least 4
        stages of K per block (notes/gemm_wgmma_sweep_h100.log; filling two blocks an SM took down from 46 to 52 µs,
        O from 17 to 21), and, from 33 rows, that cut no block's weight stream of 512 KB or more below that: a
        block's first ring fill is a burst of a third of it, so fewer, longer streams beat more SMs (8B O at 32 rows,
        64 blocks of 512 KB 82.8% of copy bandwidth against 128 of 256 KB 77.6%, alone on an H100;
        notes/gemm_xrows_ab_h100_stop37.log). Up to 32 rows more blocks win inside the step since attention lets
        the O GEMM's blocks be placed while it runs (8B O in 128 blocks of 256 KB against 64 of 512 KB, H200, by
        turns: plain decode 4.456 -> 4.307 ms, one step ahead 4.350 -> 4.275, T = 16 / 32 0.6-0.8% faster,
        notes/o_clusters_h200_stop42.log); from 33 rows they do not (T = 64 5.041 -> 5.075 ms with 128 blocks,
        notes/o2wide_h200_stop42.log)."""
        S = 1
        while (S < 8 and tiles * S * 2 <= self.sm_count and K % (64 * S * 2) == 0 and K // (S * 2) >= 256
               and (M <= 32 or wgmma_block_bytes(G, K, S) < 512 << 10 or wgmma_block_bytes(G, K, 2 * S) >= 512 << 10)):
            S *= 2
        return S

    def stream_cluster_size(self, tiles: int, K: int, BK: int) -> int:
        """The most blocks per cluster (1, 2, 4, 8) that keep the grid within 1.5 blocks per SM, and at least 4 where
        K allows: measured best or within 5% of it on 8B shapes at M = 1..64 (notes/gemm_sweep_h100.log); more
        blocks pay more ring fill and on-chip reduction than they gain. The floor of 4 serves weights with many
        tiles (gate/up, the 8B LM head): since stop 34's trigger, blocks streaming a quarter of K spread over the
        SMs more evenly than whole rows did (8B gate/up at one row 80.6 -> 77.1 µs, the LM head 345 -> 336;
        notes/gemm_sweep_rotated_h100_stop34.log)."""
        S = 1
        while S < 8 and (S < 4 or tiles * S * 2 <= 1.5 * self.sm_count) and K % (BK * S * 2) == 0:
            S *= 2
        return S

    def logits(self, h, lm_head):
        return self.linear(self.cp.ascontiguousarray(h), lm_head)

    def gate_up_silu(self, h, w_gate_up):
        """silu(h W_gate^T) * (h W_up^T) [N, I] in the storage type, from the fused [2I, K] weight: one gated
        launch where linear would take gemm_wgmma in one pass (two warpgroups a block, no split-K: gemm_wgmma_glu_w2,
        or its four-warpgroup form by wgmma_glu_groups) or gemm_stream with 128-wide k stages (gemm_stream_glu), so
        the fp32 [N, 2I] product never reaches memory and silu_mul's launch is saved, with the same bits; else
        linear, then silu_mul."""
        M, K = h.shape
        N2 = w_gate_up.shape[0]
        glu = self.glu_kernel(M, N2, K)
        if glu is None:
            return self.silu_mul(self.linear(h, w_gate_up))
        h, norm = (h.x, h.finish()) if isinstance(h, NormedRows) else (h, NO_NORM)  # (both gated kernels finish it)
        self._check(h, self.store_dtype, 2, "gate_up_silu input")
        I = N2 // 2
        act = self.cp.empty((M, I), dtype=self.store_dtype)
        if glu == "wgmma":
            self.launch_wgmma_glu(h, w_gate_up, act, self.glu_groups or self.wgmma_glu_groups(I), norm)
        else:
            self.launch_stream("gemm_stream_glu", h, w_gate_up, act, I, norm)
        return act

    def launch_wgmma_glu(self, h, w_gate_up, act, G: int, norm: tuple = NO_NORM) -> None:
        """gemm_wgmma_glu_w{G} into act [M, I]: 32 G gate columns a block, gate and up read in 64-row boxes."""
        I = w_gate_up.shape[0] // 2
        self.launch_wgmma(f"gemm_wgmma_glu_w{G}", G, 64, (-(-I // (32 * G)),), h, w_gate_up, 64, act, I, WGMMA_GLU_STAGES[G],
                          norm)

    def wgmma_glu_groups(self, I: int) -> int:
        """gemm_wgmma_glu's warpgroups a block for I gate columns: 4 (128 gate and 128 up rows, one block an SM with a
        5-stage ring) where that leaves no SM two blocks, else 2 (two blocks an SM, 4 stages each). The bits are the
        same. Measured on an H200 (notes/glu_groups_h200_stop41.log), 8B gate/up: 17 rows 71.3 -> 63.0 µs, 32 rows
        65.4 -> 63.6, 64 rows level at 64.1; the T = 32 step 4.868 -> 4.841 ms, T = 64 level."""
        return 4 if -(-I // 128) <= self.sm_count else 2

    def glu_kernel(self, M: int, N2: int, K: int):
        """gate_up_silu's gated kernel for h [M, K] and the [N2 = 2I, K] weight: "wgmma", "stream", or None (linear,
        then silu_mul). The gated kernels run the product linear would (the same kernel, blocks and cluster sums),
        so they are taken only where linear takes one of them in a shape they have: bf16, the own kernels chosen,
        and gemm_wgmma of one pass of two warpgroups, or gemm_stream up to 16 rows with 128-wide k stages."""
        if not (self.bf16 and N2 % 2 == 0 and self.own_gemm_chosen(M, N2, K)):
            return None
        kernel = self.own_kernel(M, N2, K)
        if kernel == "wgmma":
            return "wgmma" if self.wgmma_shape(N2, K) == (2, 1) else None
        if kernel == "stream" and M <= 16 and self.stream_launch_shape(M, N2, K)[2] == 128:
            return "stream"
        return None

    def silu_mul(self, gate_up):
        """gate_up fp32 [N, 2I] -> silu(gate) * up [N, I] in the storage type."""
        cp = self.cp
        self._check(gate_up, cp.float32, 2, "silu_mul input")
        N, I = gate_up.shape[0], gate_up.shape[1] // 2
        out = cp.empty((N, I), dtype=self.store_dtype)
        self.launch(self.kernel("elementwise.cu", "silu_mul"), (N, (I + 255) // 256), (256,), (gate_up, out, np.int32(I)))
        return out

    def rope_tables(self, inv_freq, max_position: int):
        cached = self.rope_cache.get((inv_freq,))
        if cached is None or cached[0].shape[0] <= max_position:
            size = max(4096, 1 << int(max_position).bit_length())
            angle = np.arange(size, dtype=np.float64)[:, None] * inv_freq[None, :]  # float64 like the reference
            cached = self.rope_cache.put((inv_freq,), (), (self.cp.asarray(np.cos(angle).astype(np.float32)), self.cp.asarray(np.sin(angle).astype(np.float32))))
        return cached

    def rope_write_kv(self, qkv, plan: DevicePlan, inv_freq, k_cache, v_cache, H, Hkv, D):
        """qkv fp32 [N, (H + 2 Hkv) D] -> rotated q fp32 [N, H, D]; rotated k and v go to their cache slots."""
        cp = self.cp
        self._check(qkv, cp.float32, 2, "rope_write_kv input")
        N = qkv.shape[0]
        P = k_cache.shape[2]
        cos, sin = self.rope_tables(inv_freq, plan.max_position)
        q = cp.empty((N, H, D), dtype=cp.float32)
        items = (H + Hkv) * (D // 2) + Hkv * D  # rotated pairs of q and k, then v elements: a thread each
        self.launch(self.kernel("elementwise.cu", "rope_write_kv"),
            (N, -(-items // 256)), (256,),
            (qkv, plan.positions, cos, sin, plan.slots, q, k_cache, v_cache,
             np.int32(H), np.int32(Hkv), np.int32(D), np.int32(P)),
        )
        return q

    def attention(self, q, k_cache, v_cache, plan: DevicePlan, scale: float):
        cp = self.cp
        N, H, D = q.shape
        _, Hkv, P, _ = k_cache.shape
        if self.bf16 and D in (64, 128):
            return self.attention_mma(q, k_cache, v_cache, plan, scale)
        if D % 32 or D > 256:
            raise ValueError(f"attention: head dim {D} must be a multiple of 32 and <= 256")
        out = cp.empty((N, H * D), dtype=self.store_dtype)
        self.launch(self.kernel("attention.cu", "tree_attention"),
            (N, H), (32,),
            (q, k_cache, v_cache, plan.cu_q, plan.kv_len, plan.tree_start, plan.masks, plan.causal, plan.page_tables,
             np.int32(plan.page_tables.shape[1]), np.int32(plan.batch_size), out, np.int32(H), np.int32(Hkv), np.int32(P),
             np.int32(D), np.float32(scale)),
        )
        return out

    def attention_mma(self, q, k_cache, v_cache, plan: DevicePlan, scale: float):
        """Tensor-core paged tree attention with split-KV, then the merge of the splits."""
        cp = self.cp
        N, H, D = q.shape
        _, Hkv, P, _ = k_cache.shape
        B, G = plan.batch_size, H // Hkv
        # The launch shape changes the order of the softmax sums, so it follows the buckets a captured graph is
        # keyed by (N, context), not the exact step: eager launches and graph replays give the same bits.
        rows = -(-pow2_bucket(N) // B) * G  # rows per sequence's KV head (mean over the step)
        context = context_bucket(plan.max_kv_len)
        warps, wgmma = self.attention_kernel(rows, context, B, Hkv, D)
        # sum over b of ceil(T_b G / R) <= ceil(N G / R) + B - 1 (each ceil adds less than 1): one step's exact
        # count when B = 1, an upper bound otherwise (blocks past the last row tile leave at once)
        row_tiles = -(-N * G // (16 * warps)) + B - 1
        splits = self.attention_splits or self.attention_split_count(B * -(-rows // (16 * warps)) * Hkv, context, warps, wgmma)
        splits = min(64, splits)  # the merge takes at most 64
        cluster = 0 if wgmma else self.attention_merge_cluster(splits)
        splits = cluster or splits
        out = cp.empty((N, H * D), dtype=self.store_dtype)
        o_part = cp.empty((splits, N, H, D), dtype=cp.float32) if splits > 1 and not cluster else out
        ml_part = cp.empty((splits, N, H, 2), dtype=cp.float32) if splits > 1 and not cluster else out
        args = (plan.cu_q, plan.kv_len, plan.tree_start, plan.masks, plan.causal, plan.page_tables,
                np.int32(plan.page_tables.shape[1]), np.int32(B), o_part, ml_part, out, np.int32(N), np.int32(H),
                np.int32(Hkv), np.int32(P), np.float32(scale))
        if wgmma:
            k_map, v_map, box_rows = self.attention_tensor_maps(k_cache, v_cache)
            producers = self.attention_producers or self.attention_producer_count(rows)
            keys = self.attention_tile_keys(context // splits, D, box_rows, producers)
            ring = min(6, 196608 // (4 * keys * D))  # attention_ring in kernels/attention_wgmma.cu
            # RING x (K, V) x keys x D, bf16, swizzled; 1024 to align them; 2 RING barriers
            kernel, shared = self.kernel("attention_wgmma.cu", f"tree_attention_wgmma_d{D}_k{keys}", D), 2 * ring * keys * D * 2 + 1024 + 16 * ring
            args = (q, k_cache, v_cache, k_map, v_map, np.int32(box_rows)) + args + (np.int32(producers),)
            threads = 384
        else:  # STAGES x (K, V) x keys per tile (32 or 64) x padded row, bf16
            name = f"tree_attention_mma_d{D}_w{warps}" + (f"_c{cluster}" if cluster else "")
            kernel, shared = self.kernel("attention_mma.cu", name, D), 4 * 2 * 8 * warps * (D + 8) * 2
            args, threads = (q, k_cache, v_cache) + args, 32 * warps
        args += (np.int32(self.attention_trigger_first(row_tiles * Hkv * splits, warps)),)
        allow_shared(kernel, shared)
        self.launch(kernel, (row_tiles, Hkv, splits), (threads,), args, shared)
        if splits == 1 or cluster:
            return out
        warps, rows = self.merge_shape(N * H, splits)
        self.launch(self.kernel("attention.cu", "attention_merge"),
            (-(-N * H // rows),), (32 * warps, rows),
            (o_part, ml_part, plan.cu_q, np.int32(B), out, np.int32(N), np.int32(H), np.int32(D), np.int32(splits)),
            rows * warps * 32 * 16)
        return out

    def attention_trigger_first(self, blocks: int, warps: int) -> bool:
        """Whether the tensor-core attention lets the next kernel launch first thing (trigger_first), so that the
        split merge's blocks and then the O GEMM's are placed during attention and the GEMM copies its first weights
        there. The next kernel launches only once every attention block has started, so none of them waits behind
        it; taken where the grid fits the GPU in one wave (attention_split_count's wave: the shapes measured) and
        left off for larger grids (long prefill chunks, big batches: unmeasured; there the GEMM's early weight
        copies would also share DRAM with attention's own stream). Measured on an H200, 8B step at 512 keys, by
        turns (notes/attention_trigger_h200_stop41.log): T = 64 5.124 -> 5.040 ms, T = 16 4.683 -> 4.630, T = 1
        4.379 -> 4.360; decode one step ahead level."""
        if self.attention_early_trigger is not None:
            return self.attention_early_trigger
        return self.pdl and blocks <= self.attention_wave(warps)

    def attention_merge_cluster(self, splits: int) -> int:
        """The cluster size (2, 4 or 8; 0: none) in which the mma.sync kernel's key shares merge themselves
        (kernels/attention_mma.cu, merge_in_cluster) instead of in attention_merge behind it: the largest power of two up
        to `splits` and 8, on Hopper, where the split rule gives 2-16 shares. Measured on an H200, 8B step
        (notes/attention_cluster_merge_h200_stop46.log): decode at 512 keys (16 shares run as 8) one step ahead
        0.4-0.7% faster; capping more shares at 8 lost far more than the merge's launch (decode at 2k / 4k / 8k keys,
        32 shares: 1.6 / 5.5 / 15% slower), and clusters of 16 (a non-portable size) were slower than 8."""
        if splits < 2 or splits > 16 or not self.hopper or self.attention_cluster_merge is False:
            return 0
        return min(8, 1 << (splits.bit_length() - 1))

    def attention_kernel(self, rows: int, context: int, B: int, Hkv: int, D: int) -> tuple[int, bool]:
        """(warps, wgmma) of attention_mma's kernel for `rows` query rows per sequence's KV head at a context
        bucket: the mma.sync kernel of 4 warps (64 rows) or 8, or the 8-warp kernel on wgmma (Hopper).
        Measured on an H100:
        - wgmma where both of a block's 64-row warpgroups have rows, or from 2k keys (notes/attention_splits.log):
          1.5-1.8x faster than mma.sync at 8B heads, T = 64, 8k-32k keys, 0-2 µs faster at T = 64, 512-2k keys;
          with 64 rows or fewer mma.sync is 2 µs faster below 2k keys;
        - decode-like steps (16 rows or fewer) on 4 warps, except where the wgmma kernel's TMA stream wins with a
          block per SM (notes/decode_dispatch_h100_stop21.log, every batch size and context; one consumer
          warpgroup idles): from the 16k-key bucket (more than 8192 keys: 8B heads, batch 1, 8193 keys 13.0 µs,
          0.86 of the K/V floor; the default model's heads at batch 4, 32k keys 43.2 -> 40.5), and from the
          2k-key bucket (more than 1024 keys) with 32 (sequence, KV head) pairs or more (8B heads, batch 4, 1025
          keys 10.4 -> 9.2 µs, 2049 keys 15.5 -> 12.7; the default model's heads, batch 16, 4097 keys 27.1 -> 24.3,
          within 2% below that). With fewer pairs below 16k keys the 4-warp kernel stays faster (8B heads, batch 1,
          4097 keys: 10.7 against 11.8 µs)."""
        long_decode = self.hopper and rows <= 16 and (context >= 16384 or (B * Hkv >= 32 and context >= 2048))
        warps = self.attention_warps or (8 if rows > 16 or long_decode else 4)
        auto_wgmma = self.hopper and (rows > 64 or context >= 2048)
        wgmma = warps == 8 and (auto_wgmma if self.attention_wgmma is None else self.attention_wgmma)
        if wgmma and not self.hopper:
            raise MinispecError("attention_wgmma: warpgroup MMA needs a Hopper GPU (compute capability 9.0)")
        return warps, wgmma

    @staticmethod
    def attention_producer_count(rows: int) -> int:
        """TMA producer warps of tree_attention_wgmma for `rows` query rows per sequence's KV head. One warp issues a
        tile's 16 boxes (P = 16, D = 128) in turn; two issue them side by side. Measured on an H100 (stop 21,
        notes/attention_splits.log): two take 8B heads at T = 64 from 75 to 73 µs at 32k keys and one split at 8k
        from 132 to 121; decode-like steps (16 rows or fewer, one consumer warpgroup idle) are faster with one
        (8193 keys, batch 1: 13.5 against 14.5 µs)."""
        return 1 if rows <= 16 else 2

    def attention_tile_keys(self, share_keys: int, D: int, box_rows: int, producers: int) -> int:
        """Key positions per tile of tree_attention_wgmma, 64 or 128, for shares of `share_keys` (the context bucket
        over the split count, so graph replays keep the shape). 128-key tiles halve the loop's per-tile work but
        leave 3 ring slots at D = 128 and make short shares coarser. Measured on an H100 (stop 21,
        notes/attention_keys_h100_stop21.log, both in one call), 8B heads: 128 from 8192 keys a share (T = 64 at
        32k keys 72.5-73.3 -> 69.3-69.5 µs; batch 16 at 8k: T = 1 195 -> 184, T = 16 196 -> 190.5, T = 64
        274-292 -> 263-269), 64 below (T = 64 at 512 keys 128 gave 15.3 against 12.8 µs, T = 16 at 8k 20 against
        17.7). The default model's heads (D = 64) keep 64: at batch 16, 8k keys, 128 was faster at T = 64 (99
        against 106-114 µs) but slower at T = 16 (50 against 47-48). A tile's TMA boxes must fit a lane each:
        (keys / box_rows) x 2 x D / 64 <= 32 x producers."""
        keys = self.attention_keys or (128 if share_keys >= 8192 and D == 128 else 64)
        if keys not in (64, 128):
            raise ValueError(f"attention_keys: {keys} (64 or 128)")
        if box_rows and keys // box_rows * 2 * (D // 64) > 32 * producers:
            if self.attention_keys:
                raise ValueError(f"attention_keys = {keys}: {keys // box_rows * 2 * (D // 64)} TMA boxes a tile at page size {box_rows}, more than {32 * producers}")
            keys = 64
        return keys

    @staticmethod
    def merge_shape(rows: int, splits: int) -> tuple[int, int]:
        """attention_merge's (warps per row, rows per block): about 4096 warps in all, at most a warp per two
        shares (decode's few rows: one round trip to L2 each) and at least one per row (many rows); blocks of at
        least 4 warps. Measured on an H100 (notes/attention_parts_h100_stop19.log): 8B heads, T = 1 at 8k keys (32
        rows, 32 shares, 16 warps a row) 7.5 -> 3.0 µs; T = 64 (2048 rows, 8 shares, 2 warps a row) 4.4 -> 3.6 µs;
        B = 4, T = 64 (8192 rows, 2 shares, one warp) level; a block per row at every size had doubled that one."""
        warps = max(1, min(-(-splits // 2), 4096 // rows))
        return warps, max(1, 4 // warps)

    def attention_tensor_maps(self, k_cache, v_cache):
        """(k map, v map, box rows) of one layer's caches for tree_attention_wgmma: [NP Hkv P, D] read a page
        segment (P rows of one head) per box when P divides the 64-key tile and is at least 8, else box rows 0
        (the kernel then copies every row by cp.async; the maps are made with 1-row boxes and not read). An L2 miss of a
        box row fetches attention_l2_promotion bytes: 128 (the box row, one 64-dim atom of a K or V row at D = 128)
        rather than the driver's usual 256, measured on an H200 (8B heads, K/V past L2,
        notes/attention_promotion_h200_stop44.log): decode at 32k keys 37.2 -> 34.4 µs (0.86 -> 0.93 of the K/V
        floor), batch 4 at 8k 37.9 -> 35.8, T = 64 at 32k 69.9 -> 65.0, T = 16 / 64 at 8k level."""
        promotion = self.attention_l2_promotion
        maps = self.tensor_maps.get((k_cache, v_cache), promotion)
        if maps is None:
            NP, Hkv, P, D = k_cache.shape
            box_rows = P if 64 % P == 0 and P >= 8 else 0
            maps = self.tensor_maps.put((k_cache, v_cache), promotion, tuple(
                tensor_map.swizzled_rows(cache, NP * Hkv * P, D, box_rows or 1, promotion=promotion)
                for cache in (k_cache, v_cache)) + (box_rows,))
        return maps

    def attention_split_count(self, blocks: int, context: int, warps: int, wgmma: bool = False) -> int:
        """Key shares per (row tile, KV head) block. Measured on an H100 (notes/attention_splits.log): one wave of
        blocks is best (2 per SM of 4 warps, 1 of 8); a second, partial wave costs a whole block's time, so the
        count rounds down. Each share keeps at least 2 key tiles: 8 shares of 2 tiles beat 4 of 4 at 8B heads,
        T = 16, 512 keys (9.1 against 10.8 µs at stop 17; the older sweep, attention_sweep_short_h100.log, had
        shown 9.6 against 11.7); beyond 32 shares the merge costs more than the parallelism gains."""
        return max(1, min(self.attention_wave(warps) // blocks, context // (128 if wgmma else 16 * warps), 32))

    def attention_wave(self, warps: int) -> int:
        """Tensor-core attention blocks resident at once: two an SM of 4 warps, one of 8 (their shared memory)."""
        return self.sm_count * (2 if warps == 4 else 1)

    # ------------------------------------------------------------------ fused layers
    def fused_row_limit(self, model) -> int:
        """Most rows a step may have to run fused: only models with small layers (launch-bound) run fused, up to 4
        rows on the CUDA-core GEMV, up to 16 where the GEMV inputs suit the tensor-core instance (fused_pass_rows).
        Large models run layer by layer: on 8B shapes the layer-by-layer graph (with programmatic dependent launch
        since stop 16 and tensor-core attention) beat the fused decode at every context in stop 18's A/B
        (notes/fused_vs_layered_stop18.log: 513 / 2049 / 4100 keys, H100 -0.2 / -1.0 / -2.3%, H200 -3.8 / -5.1 /
        -6.8%); the fused kernel had won 1-2 rows there before those (an H200, notes/fused_layers.log). Models
        between the two sizes measured (layers over 16 MiB, under 8B's ~430 MiB) were measured under neither rule."""
        if model.num_layers > FUSED_MAX_LAYERS:
            return 0
        if self.fused_max_rows is not None:
            return min(16, self.fused_max_rows)
        if not self.small_layers(model.config):
            return 0
        c = model.config
        return 16 if self.fused_tensor_ok(c) and self.fused_shared_bytes(c, 16) <= self.max_shared - FUSED_STATIC_SHARED else 4

    @staticmethod
    def fused_tensor_ok(c) -> bool:
        """The 16-row instance's tensor-core GEMV swizzles its staged rows in 64-column groups."""
        return all(k % 64 == 0 for k in (c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size))

    @classmethod
    def fused_pass_rows(cls, c, rows: int) -> int:
        """Rows per GEMV pass of the fused kernel instance for a step of `rows` (staged) rows: 1 (decode), 16 (the
        tensor-core GEMV, steps of 5-16 rows where it applies), else 4 (CUDA cores, one pass per 4 rows)."""
        if rows == 1:
            return 1
        return 16 if rows > 4 and cls.fused_tensor_ok(c) else 4

    def small_layers(self, c) -> bool:
        """A layer's weights (config c) are at most 16 MiB: launch-bound, and the next layer's fit in L2 beside them."""
        elements = c.hidden_size * (c.qkv_size + c.num_heads * c.head_dim + 3 * c.intermediate_size)
        return elements * (2 if self.bf16 else 4) <= 16 << 20

    def fused_rows(self, model, plan: DevicePlan) -> int:
        """The step's rows rounded up to a power of two (the staged rows of the fused-layers kernel), or 0 when
        the step runs layer by layer."""
        c = model.config
        N = plan.num_tokens
        if not self.bf16 or plan.has_causal or N > self.fused_row_limit(model) or c.head_dim not in (64, 128):
            return 0
        if c.hidden_size % 8 or c.intermediate_size % 8:
            return 0
        rows = pow2_bucket(N)
        return rows if self.fused_shared_bytes(c, rows) <= self.max_shared - FUSED_STATIC_SHARED else 0

    @classmethod
    def fused_shared_bytes(cls, c, rows: int, block: bool = True) -> int:
        """Shared memory of the fused kernel: the staged GEMV input rows (the tensor-core instance: always 16,
        then 16 warps x 32 lanes x 4 fp32 of cross-warp sums), or 16 warps' attention tiles (q, p, key offsets;
        the block instances of more than one row then 16 splits x 4 rows of partials); the decode instance then
        has a slot per warp for its next GEMV's first weights (8 x 32 16-byte chunks). The attention tiles are sized
        for 4 rows, a bound on the group rows that the decode instance's slot offset assumes (fused_layers_body)."""
        widest = max(c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size)
        pass_rows = cls.fused_pass_rows(c, rows)
        staged = 16 * widest * 2 + 16 * 32 * 4 * 4 if pass_rows == 16 else rows * widest * 2
        partials = 16 * 4 * (c.head_dim + 2) * 4 if block and pass_rows > 1 else 0
        shared = max(staged, 16 * (4 * c.head_dim + 4 * 32 + 64) * 4 + partials)
        return shared + FUSED_SLOT_BYTES if pass_rows == 1 else shared

    def layer_table(self, model, cache, cluster: int = 0):
        """uint64 [L, 8] device pointers of each layer's norms, weights and K/V pages (made once per model and cache).
        cluster: the rows R of the cluster decode instance that reads it (0: the fused kernel), whose down weights, and
        for R = 1 O weights, are in the layouts kernels/cluster_decode.cuh reads (cluster_weights)."""
        key = (model.num_layers, min(cluster, 2))
        table = self.layer_tables.get((model.weights, cache), key)
        if table is None:
            layers = model.weights.layers[: model.num_layers]
            pairs = self.cluster_weights(model) if cluster else [(layer.wo, layer.w_down) for layer in layers]
            rows = [
                [a.data.ptr for a in (layer.attn_norm, layer.wqkv, layer.wo if cluster > 1 else wo, layer.mlp_norm, layer.w_gate_up, down, k, v)]
                for layer, (wo, down), k, v in zip(layers, pairs, cache.k, cache.v)
            ]
            table = self.layer_tables.put((model.weights, cache), key, self.cp.asarray(np.array(rows, dtype=np.uint64)))
        return table

    def cluster_weights(self, model) -> list:
        """(wo, w_down) of each of the model's layers as cluster decode reads them, made once per set of weights (a
        self-drafter's first layers share them), so that a block's slice of each is one contiguous run:
        - wo [C, H D] as bf16 [Hkv, C, G D] (element (c, j) at ((j / (G D)) C + c) G D + j % (G D)): attention block
          (KV head k, rank r) takes rows [r C / 8, (r + 1) C / 8) of head group k, one run of C / 8 x G D x 2 bytes
          where the [C, H D] rows took C / 8 runs of 2 G D bytes (72 of 384 bytes a block a layer on the default model):
          decode one step ahead 0.283 -> 0.278 ms at 100 keys, 0.334 -> 0.329 at 512. The one-row instance alone reads
          it: the 4-row instance's T = 4 forward ran 4-8% slower on it (notes/cluster_grouped_o_h200_stop53.log);
        - w_down [C, I] as bf16 [I / 8, C, 8] (element (c, i) at ((i / 8) C + c) 8 + i % 8): the indices an MLP block
          owns (whole groups of 8) are one run of 16 C bytes a group, where the [C, I] rows took C runs of 2 ni bytes
          (576 of 32 bytes a block a layer on the default model; notes/cluster_grouped_down_h200_stop52.log)."""
        pairs = self.cluster_layouts.get((model.weights,))
        if pairs is None:
            if self.stream.is_capturing():
                raise RuntimeError("cluster decode's weight layouts must be made before a graph capture (run the step eagerly first)")
            c, cp = model.config, self.cp
            C, I, Hkv, GD = c.hidden_size, c.intermediate_size, c.num_kv_heads, c.num_heads // c.num_kv_heads * c.head_dim
            pairs = [(cp.ascontiguousarray(layer.wo.reshape(C, Hkv, GD).transpose(1, 0, 2)),
                      cp.ascontiguousarray(layer.w_down.reshape(C, I // 8, 8).transpose(1, 0, 2))) for layer in model.weights.layers]
            self.cluster_layouts.put((model.weights,), (), pairs)
        return pairs[: model.num_layers]

    def fused_layers(self, model, plan: DevicePlan, cache, x, rows: int):
        """Every layer of a small step in one persistent launch; x: embeddings fp32 [N, C] -> residual stream."""
        cp, c = self.cp, model.config
        N, B = plan.num_tokens, plan.batch_size
        H, Hkv, D, C, I = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size, c.intermediate_size
        P = cache.page_size
        # attention units take groups of a sequence's packed (node, head) rows (T_b <= rows): one row each in
        # a decode step's instance, FUSED_GROUP_ROWS in the others, FUSED_BLOCK_GROUP_ROWS in their block
        # instances (fused_layers.cuh, phase_attention)
        decode = self.fused_pass_rows(c, rows) == 1

        def shares(group_rows):  # (row groups, key shares)
            groups = -(-rows * (H // Hkv) // group_rows)
            # split the keys until every warp of the grid has a share, but no share under 32 keys; from the graph
            # buckets (rows, context), as in attention_mma, so eager launches and replays give the same bits
            return groups, max(1, min(256, self.fused_blocks * 16 // (B * Hkv * groups), context_bucket(plan.max_kv_len) // 32))

        groups, splits = shares(1 if decode else FUSED_GROUP_ROWS)
        # at most FUSED_BLOCK_SPLITS shares: a block per (sequence, KV head, row group) merges them in its shared
        # memory (fused_layers.cuh, BLOCK), so the split partials need no buffers (null pointers)
        block = splits <= FUSED_BLOCK_SPLITS
        if block and not decode:
            groups, splits = shares(FUSED_BLOCK_GROUP_ROWS)
        cos, sin = self.rope_tables(model.inv_freq, plan.max_position)
        q = cp.empty((N, H, D), dtype=cp.float32)
        o_part = np.uint64(0) if block else cp.empty((splits, N, H, D), dtype=cp.float32)
        ml_part = np.uint64(0) if block else cp.empty((splits, N, H, 2), dtype=cp.float32)
        attn = cp.empty((N, H * D), dtype=cp.uint16)
        act = cp.empty((N, I), dtype=cp.uint16)
        # the grid barrier's counter, then (the decode instance) a counter per qkv head, per attention row and one
        # for the merged rows, each on its own 128-byte line (fused_layers.cuh, head_done)
        barrier = cp.empty(32 * (2 + H + 2 * Hkv + N * H), dtype=cp.uint32)
        cp.cuda.runtime.memsetAsync(barrier.data.ptr, 0, barrier.nbytes, self.stream.ptr)
        prefetch = self.small_layers(model.config)  # the next layer's weights go to L2 during this one
        kv_bytes = 2 * B * plan.max_kv_len * Hkv * D * 2  # one layer's K and V pages of the step (upper bound)
        prefetch_kv = kv_bytes <= 8 << 20
        pass_rows = self.fused_pass_rows(c, rows)
        name = f"fused_layers_r{pass_rows}" + ("_block" if block else "")
        kernel = self.kernel(f"{name}.cu", f"{name}_d{D}", D)
        shared = self.fused_shared_bytes(c, rows, block)
        allow_shared(kernel, shared)
        i32 = np.int32
        kernel(
            (self.fused_blocks,), (512,),
            (self.layer_table(model, cache), i32(model.num_layers), x, plan.positions, plan.slots, cos, sin, plan.cu_q,
             plan.kv_len, plan.tree_start, plan.masks, plan.page_tables, i32(plan.page_tables.shape[1]), i32(B), q, o_part,
             ml_part, attn, act, barrier, i32(N), i32(C), i32(H), i32(Hkv), i32(I), i32(P), i32(groups), i32(splits),
             np.float32(c.rms_norm_eps), np.float32(model.scale), i32(prefetch), i32(prefetch_kv),
             np.uint64(0) if self.fused_clock is None else self.fused_clock),
            shared_mem=shared,
        )
        return x

    # ------------------------------------------------------------------ cluster decode
    @staticmethod
    def cluster_decode_shared_bytes(c, num_layers: int, mlp_blocks: int, span: int, page_size: int, rows: int = 1) -> int:
        """Dynamic shared memory of kernels/cluster_decode.cuh (its Layout, region by region, each rounded to 16 bytes)
        for MLP blocks over the intermediate groups, `span` keys a block at most and the instance of `rows` rows."""
        C, D, I = c.hidden_size, c.head_dim, c.intermediate_size
        G = c.num_heads // c.num_kv_heads
        pairs_block = -(-((G + 2) * D // 2) // CLUSTER_DECODE_BLOCKS)
        OC, OK = C // CLUSTER_DECODE_BLOCKS, G * D
        ni_max = 8 * -(-(I // 8) // mlp_blocks)
        R = rows
        polled = max(c.num_kv_heads, mlp_blocks // CLUSTER_DECODE_BLOCKS) * (C // 32) * 16  # a row's polled partials
        regions = [R * C * 4, R * C * 4, R * 8 * 4, R * max(C, OK) * 2, R * (G + 2) * D * 4, R * 8 * G * (D + 2) * 4,
                   R * G * -(-span // 32) * (D + 2) * 4, R * OK * 2, R * ni_max * 4, R * 8 * OC * 4, R * 16 * 4, R * polled,
                   R * pairs_block * 2 * 4, C * 4, C * 4, 6 * 8, num_layers * 64, (span // page_size + 2) * 4, R * 8]
        attention = [pairs_block * 2 * C * 2, OC * OK * 2, 2 * span * D * 2]  # the two roles' weights overlap
        mlp = [ni_max * 2 * C * 2, C * ni_max * 2]
        size = lambda rs: sum(-(-r // 16) * 16 for r in rs)  # noqa: E731
        return size(regions) + max(size(attention), size(mlp))

    def cluster_decode_shape(self, model, plan: DevicePlan, page_size: int):
        """(clusters, keys a block at most, shared bytes, rows of the instance) of kernels/cluster_decode.cuh for this step,
        or None where the fused-layers kernel serves it: decode steps of one sequence, and its tree steps of up to
        cluster_tree_rows nodes, on a model the fused kernel takes, whose shapes the kernel handles and whose attention
        share and weight slices fit one block's shared memory."""
        c = model.config
        N = plan.num_tokens
        if not (self.cluster_decode and plan.batch_size == 1 and 0 < N <= max(1, self.cluster_tree_rows) and not plan.has_causal):
            return None
        rows = pow2_bucket(N)
        if rows not in CLUSTER_DECODE_ROWS:
            return None
        if c.head_dim not in (64, 128) or c.hidden_size % (4 * CLUSTER_DECODE_BLOCKS) or c.intermediate_size % 8:
            return None
        if c.hidden_size > 1024:  # a lane's float4 of a slice of C / 8 (slice_partials)
            return None
        if c.num_kv_heads > CLUSTER_DECODE_MAX_PARTIALS or model.num_layers > FUSED_MAX_LAYERS:
            return None
        span = -(-plan.max_kv_len // CLUSTER_DECODE_BLOCKS)  # (a graph's context bucket: any step of the bucket fits)
        kernel = self.cluster_kernel(rows, c.head_dim)
        # every block must be resident at once (the polls would deadlock): ask the driver how many clusters fit,
        # which depends on the shared memory, which depends on how many MLP blocks share the intermediate groups
        clusters = self.sm_count // CLUSTER_DECODE_BLOCKS
        for _ in range(3):
            clusters = min(clusters, c.num_kv_heads + CLUSTER_DECODE_MAX_PARTIALS)
            if clusters < c.num_kv_heads + 1:
                return None
            shared = self.cluster_decode_shared_bytes(c, model.num_layers, CLUSTER_DECODE_BLOCKS * (clusters - c.num_kv_heads),
                                                      span, page_size, rows)
            if shared > self.max_shared:
                return None
            if (rows, shared) not in self.cluster_counts:
                allow_shared(kernel, shared)
                self.cluster_counts[rows, shared] = driver.max_active_clusters(kernel, 512, shared, CLUSTER_DECODE_BLOCKS)
            if self.cluster_counts[rows, shared] >= clusters:
                return clusters, span, shared, rows
            clusters = self.cluster_counts[rows, shared]
        return None

    def cluster_kernel(self, rows: int, head_dim: int):
        """cluster_decode.cuh's instance of `rows` rows: the decode step's in cluster_decode.cu, the tree steps' in
        cluster_tree.cu (a file of their own, so that a generation's first step does not wait for their compile)."""
        file = "cluster_decode.cu" if rows == 1 else "cluster_tree.cu"
        return self.kernel(file, f"cluster_decode_r{rows}_d{head_dim}", head_dim)

    def decode_in_one_launch(self, model, plan: DevicePlan, cache):
        """A one-sequence decode step's (or small tree step's) embeddings, every layer and the final norm in one launch
        of kernels/cluster_decode.cuh -> the LM head's input, bf16 [N, C]; None where the step takes the other paths
        (cluster_decode_shape)."""
        if not self.fused_rows(model, plan):
            return None
        shape = self.cluster_decode_shape(model, plan, cache.page_size)
        return None if shape is None else self.cluster_decode_layers(model, plan, cache, *shape)

    def cluster_decode_layers(self, model, plan: DevicePlan, cache, clusters: int, span: int, shared: int, rows: int = 1):
        """kernels/cluster_decode.cuh on a one-token decode step or a tree step of N <= rows nodes -> the final norm of the
        residual stream after the last layer, bf16 [N, C]. (The kernel also writes that residual stream, fp32, for probes
        that compare it with the fused kernel's: notes/scripts/cluster_decode_probe.py.)"""
        cp, c, w = self.cp, model.config, model.weights
        C, Hkv, N = c.hidden_size, c.num_kv_heads, plan.num_tokens
        normed = cp.empty((N, C), dtype=self.store_dtype)
        resid = cp.empty((N, C), dtype=cp.float32)
        opart, dpart, epoch = self.cluster_decode_buffers(C)
        cos, sin = self.rope_tables(model.inv_freq, plan.max_position)
        kernel = self.cluster_kernel(rows, c.head_dim)
        allow_shared(kernel, shared)
        i32 = np.int32
        kernel(
            (CLUSTER_DECODE_BLOCKS * clusters,), (512,),
            (self.layer_table(model, cache, cluster=rows), i32(model.num_layers), plan.tokens, w.embed, w.final_norm, normed,
             resid, plan.positions, plan.slots, plan.kv_len, plan.page_tables, plan.masks, plan.tree_start, plan.cu_q, i32(N), cos, sin,
             opart, dpart, epoch, i32(C), i32(c.num_heads), i32(Hkv), i32(c.intermediate_size), i32(cache.page_size),
             i32(span), np.float32(c.rms_norm_eps), np.float32(model.scale),
             np.uint64(0) if self.cluster_clock is None else self.cluster_clock),
            shared_mem=shared,
        )
        return normed

    def cluster_decode_buffers(self, C: int):
        """kernels/cluster_decode.cuh's partial sums, tagged with (epoch, layer): uint64 [2 layers, MAX_PARTIALS, rows, C]
        of each role (room for the most rows an instance takes), and the epoch (uint32 [1]), which each launch counts
        up. They outlive launches and graphs: a launch tells its values from the last one's by the epoch alone, so they
        are made once, outside any capture (a captured zero fill would reset the epoch at every replay), by the eager
        warm-up before it."""
        if C not in self.cluster_partials:
            if self.stream.is_capturing():
                raise RuntimeError("cluster_decode.cu's buffers must be made before a graph capture (run the step eagerly first)")
            cp = self.cp
            parts = cp.zeros((2, 2, CLUSTER_DECODE_MAX_PARTIALS, max(CLUSTER_DECODE_ROWS), C), dtype=cp.uint64)
            epoch = cp.ones(1, dtype=cp.uint32)  # (tags of epoch 0, layer 0 would pass the zeros); both in stream order
            self.cluster_partials[C] = (parts[0], parts[1], epoch)
        return self.cluster_partials[C]

    def argmax_device(self, logits):
        """int32 [R] argmax of each row, left on the device (the host copy waits for the step)."""
        cp = self.cp
        logits = cp.ascontiguousarray(logits)
        R, V = logits.shape
        S = self.row_shares(R, V)
        best_value = cp.empty((R, S), dtype=cp.float32)
        best_index = cp.empty((R, S), dtype=cp.int32)
        ids = cp.empty(R, dtype=cp.int32)
        self.launch(self.kernel("sampling.cu", "argmax_share"), (S, R), (256,), (logits, best_value, best_index, np.int32(V)))
        self.launch(self.kernel("sampling.cu", "argmax_merge"), (R,), (32,), (best_value, best_index, ids, np.int32(S)))
        return ids

    def row_shares(self, R: int, V: int) -> int:
        """How many shares argmax_share / top_share cut each of R rows of V logits into: shares of at least 2048
        logits, about two blocks per SM in all."""
        return max(1, min(-(-V // 2048), -(-2 * self.sm_count // R)))

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

    def gather(self, array, index: list[int]):
        """array[index] on the device, in stream order (rows of a step's tokens for the next step)."""
        return self.cp.take(array, self.put(index, np.int64))

    def concat(self, arrays):
        """The arrays end to end on the device, in stream order (the sequences' first tokens for their first step);
        one array is itself."""
        return arrays[0] if len(arrays) == 1 else self.cp.concatenate(arrays)

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
        """SpecInfer's test at chain nodes (kernels/sampling.cu, specinfer_rows), left on the device (int32 [R], not
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
        """A kernels/sampling.cu kernel that spreads a row of V logits over a cluster of SAMPLE_CLUSTER blocks, and
        the dynamic shared memory of a block's slice."""
        shared = -(-V // SAMPLE_CLUSTER) * 4
        if shared > self.max_shared - SAMPLE_STATIC_SHARED:
            raise MinispecError(f"sampling: a vocabulary of {V} tokens is over the {SAMPLE_CLUSTER} shared-memory slices the kernel holds")
        kernel = self.kernel("sampling.cu", name)
        allow_shared(kernel, shared)
        return kernel, shared

    def cache_pointers(self, ks, vs):
        """Device table of every layer's K and V cache pointers (one per KVCache, made once)."""
        key = tuple(c.data.ptr for c in (*ks, *vs))  # the table is its key: a new cache at the same addresses may share it
        if key not in self.pointer_tables:
            self.pointer_tables[key] = self.cp.asarray(np.array(key, dtype=np.uint64))
        return self.pointer_tables[key]

    # ------------------------------------------------------------------ n-gram speculation on the device
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

    def copy_page(self, ks, vs, source: int, destination: int) -> None:
        P = ks[0].shape[2]
        rows = np.arange(P)
        self.move_slots(ks, vs, source * P + rows, destination * P + rows)

    def move_slots(self, ks, vs, source_slots, destination_slots) -> None:
        """KV commit for all layers in two launches: gather every source row, then scatter (they overlap)."""
        cp = self.cp
        source, destination = self.put(source_slots, np.int32), self.put(destination_slots, np.int32)
        _, Hkv, P, D = ks[0].shape
        caches = self.cache_pointers(ks, vs)
        buffer = cp.empty((len(caches), len(source), Hkv, D), dtype=self.store_dtype)
        grid = (len(source), len(caches))
        args = (np.int32(Hkv), np.int32(P), np.int32(D))
        self.launch(self.kernel("kv_cache.cu", "gather_slots"), grid, (128,), (caches, source, buffer, *args))
        self.launch(self.kernel("kv_cache.cu", "scatter_slots"), grid, (128,), (caches, destination, buffer, *args))
