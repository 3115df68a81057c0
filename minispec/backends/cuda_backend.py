"""The CUDA backend: CuPy arrays and the project's own kernels from `kernels/`.

Weights and KV pages are bf16 (stored as uint16 bit patterns: CuPy has no
bfloat16 dtype) or float32 for exactness checks; activations are float32.
Each kernel has one launcher that checks shapes, dtypes and contiguity
and casts scalars (CuPy passes Python ints as 64-bit and floats as doubles).

This file holds the backend's core: compiling kernels/ with NVRTC, launching
(with programmatic dependent launch), memory, CUDA graphs, the elementwise
and KV-cache launchers. The launchers of each subject live beside it, one
file each, and CudaBackend takes them in as mixins:
  cuda_gemm.py       GEMM dispatch (own small-M kernels or cuBLAS) and the gated MLP product
  cuda_attention.py  RoPE + K/V write, paged tree attention's kernels and launch shapes
  cuda_fused.py      steps in one launch for small models (fused layers, cluster decode)
  cuda_sampling.py   argmax, top-k log-probabilities, sampling
  cuda_ngram.py      the n-gram drafter's tree steps on the device
  cuda_steps.py      a step's device plan, captured graphs, host reads
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
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import MinispecError
from ..step import StepPlan, pow2_bucket
from . import CUDA_CAPABILITY, driver, tensor_map
from .cuda_attention import AttentionLaunchers
from .cuda_fused import FusedLaunchers
from .cuda_gemm import GemmLaunchers
from .cuda_ngram import NgramLaunchers
from .cuda_sampling import SamplingLaunchers
from .cuda_steps import CapturedStep, DevicePlan, HostRead, context_bucket

KERNELS = Path(__file__).resolve().parent.parent.parent / "kernels"
INCLUDE = re.compile(r'#include "(\w+\.cuh)"')  # a kernels/ header, inlined by kernel_source
# Files whose instances come per head dim (kernels/head_dim.cuh): each is compiled for one head dim of HEAD_DIMS at a
# time (kernel()'s head_dim), about half the compile of a machine's first run.
HEAD_DIMS = (64, 128)
PER_HEAD_DIM = {"attention_mma.cu", "attention_wgmma.cu", "attention_wgmma_tree.cu", "cluster_decode.cu", "cluster_decode_passes.cu",
                "cluster_tree.cu", "fused_layers_r1.cu", "fused_layers_r1_block.cu", "fused_layers_r4.cu", "fused_layers_r4_block.cu",
                "fused_layers_r16.cu", "fused_layers_r16_block.cu"}
COMPILING = weakref.WeakSet()  # the Futures of every precompile of this process (finish_compiles)


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


class CudaBackend(GemmLaunchers, AttentionLaunchers, FusedLaunchers, SamplingLaunchers, NgramLaunchers):
    """The operations model.py calls (backends/numpy_backend.py has the same ones in float32 NumPy), on the GPU.
    The settings below (None: the measured rules) are what tests and benchmarks force; the launchers of each subject
    come from the mixins (the file list above)."""

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
        # K/V rows a cluster_decode.cu block holds at once, at most (a multiple of 32; None: the share's, in passes only
        # where it does not fit: cluster_decode_shape; tests force passes at short contexts)
        self.cluster_pass_keys = None
        self.cluster_counts = {}  # (rows, shared bytes) -> clusters of cluster_decode.cu resident at once (the driver's answer)
        self.cluster_partials = {}  # hidden size -> cluster_decode.cu's tagged partial sums and epoch (cluster_decode_buffers)
        self.shared_optin = props["sharedMemPerBlockOptin"]  # a block's shared memory, static and dynamic
        self.max_shared = self.shared_optin - 2048  # dynamic shared memory, less the kernel's static
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
        given its config, the split norm's products where it takes them (splits_norms: not the default model), the
        tensor-core attention for its head dim and, for small layers, the one-launch decode
        (kernels/cluster_decode.cu). warm_up_trees adds speculation's (LLM.use_drafter); the rest compile when first
        used (gemm_stream_wide.cu, whose instances no rule takes; cluster_decode_passes.cu, steps whose K/V shares do
        not fit a block whole: the default model's decode past 4,096 keys, its 2-node trees past 2,048)."""
        files = ["gemm.cu", "gemm_fused.cu", "gemm_wgmma.cu", "attention.cu", "elementwise.cu", "kv_cache.cu", "sampling.cu",
                 "sampling_draw.cu"]
        if config is not None and self.splits_norms(config):
            files += ["gemm_wgmma_begin.cu", "gemm_wgmma_finish.cu"]
        units = [(file, None) for file in files]
        if config is not None and config.head_dim in HEAD_DIMS:
            units += [(file, config.head_dim) for file in ("attention_mma.cu", "attention_wgmma.cu", "attention_wgmma_tree.cu")]
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
        (notes/first_run_compile_h200_stop50.log). Once the split norm's GEMM kernels had grown gemm_wgmma.cu to
        ~11 s, the first process waited 9 s past its answer for it; with them in files of their own it ends at 9.4 s
        instead of 19.0, and with the tree attention's _tree instances apart from the prefill's the answer comes at
        6.5 s instead of 8.8 (notes/first_run_compile_h200_stop64.log). With the files no rule of the default model
        takes left out of its warm-up (gemm_stream_wide.cu, the split norm's) and argmax apart from the sampled draws,
        by turns on one machine, the answer came 4.3-4.7 s into the process instead of 4.6-6.3 and it ended at
        4.8-5.0 s instead of 6.1-7.5 (notes/first_run_split_h200_stop65.log).
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
                self.cluster_decode, self.cluster_tree_rows, self.cluster_pass_keys,
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

    def gather(self, array, index: list[int]):
        """array[index] on the device, in stream order (rows of a step's tokens for the next step)."""
        return self.cp.take(array, self.put(index, np.int64))

    def concat(self, arrays):
        """The arrays end to end on the device, in stream order (the sequences' first tokens for their first step);
        one array is itself."""
        return arrays[0] if len(arrays) == 1 else self.cp.concatenate(arrays)

    def cache_pointers(self, ks, vs):
        """Device table of every layer's K and V cache pointers (one per KVCache, made once)."""
        key = tuple(c.data.ptr for c in (*ks, *vs))  # the table is its key: a new cache at the same addresses may share it
        if key not in self.pointer_tables:
            self.pointer_tables[key] = self.cp.asarray(np.array(key, dtype=np.uint64))
        return self.pointer_tables[key]

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
