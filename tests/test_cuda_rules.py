"""Host-side rules of the CUDA backend that need no GPU (CPU): which steps the fused-layers kernel may take, how a\ncaptured step's inputs are laid out."""

import ctypes
import re
from types import SimpleNamespace

import numpy as np
import pytest

from minispec.backends.cuda_backend import (
    CLUSTER_DECODE_BLOCKS, CLUSTER_DECODE_MAX_PARTIALS, FUSED_BLOCK_GROUP_ROWS, FUSED_GROUP_ROWS, FUSED_MAX_LAYERS, CapturedStep, CudaBackend,
    kernel_source)
from minispec.step import StepItem, build_plan
from minispec.tree import Tree


def test_models_past_the_fused_layer_table_run_layer_by_layer():
    """The fused tree instances copy the layer table into shared memory sized FUSED_MAX_LAYERS (a kernel that got
    more layers would trap): deeper models run layer by layer, even where a test or benchmark forces fused rows."""
    source = kernel_source("fused_layers_r16.cu")
    assert int(re.search(r"#define FUSED_MAX_LAYERS (\d+)", source).group(1)) == FUSED_MAX_LAYERS
    forced = SimpleNamespace(fused_max_rows=16)  # the rows CudaBackend.fused_row_limit is told to allow
    assert CudaBackend.fused_row_limit(forced, SimpleNamespace(num_layers=FUSED_MAX_LAYERS + 1)) == 0
    assert CudaBackend.fused_row_limit(forced, SimpleNamespace(num_layers=FUSED_MAX_LAYERS)) == 16
    assert CudaBackend.fused_row_limit(SimpleNamespace(fused_max_rows=4), SimpleNamespace(num_layers=30)) == 4


def test_fused_attention_groups_agree_with_the_kernel():
    """The backend counts a tree step's attention units in groups of FUSED_GROUP_ROWS packed rows (the block instances:
    FUSED_BLOCK_GROUP_ROWS), which the fused kernel's tree instances take per unit: a mismatch would leave rows
    unattended or attend past them."""
    source = kernel_source("fused_layers_r16_block.cu")
    define = lambda name: int(re.search(rf"#define {name} (\d+)", source).group(1))  # noqa: E731
    assert define("GROUP_ROWS") == FUSED_GROUP_ROWS <= 4
    assert define("BLOCK_GROUP_ROWS") == FUSED_BLOCK_GROUP_ROWS <= 4


def test_cluster_decode_constants_agree_with_the_kernel():
    """The backend launches kernels/cluster_decode.cu in clusters of CLUSTER_DECODE_BLOCKS and gives each role at most
    CLUSTER_DECODE_MAX_PARTIALS partial sums, for which the kernel's buffer of polled slices is sized."""
    source = kernel_source("cluster_decode.cu")
    define = lambda name: int(re.search(rf"#define {name} (\d+)", source).group(1))  # noqa: E731
    assert define("CD_CLUSTER") == CLUSTER_DECODE_BLOCKS
    assert define("CD_MAX_PARTIALS") == CLUSTER_DECODE_MAX_PARTIALS


def test_cluster_decode_takes_hidden_sizes_up_to_1024():
    """kernels/cluster_decode.cu holds a slice of C / 8 columns as one float4 a lane of a warp (slice_partials): a model
    wider than 1024 leaves one-sequence decode steps to the fused kernel, before any kernel is looked up."""

    class Looked(Exception):
        pass

    def kernel(*args):
        raise Looked  # past the shape rules: the backend asks for the kernel next

    backend = SimpleNamespace(cluster_decode=True, kernel=kernel)
    plan = SimpleNamespace(batch_size=1, num_tokens=1, has_causal=False, max_kv_len=100)

    def model(hidden):
        config = SimpleNamespace(head_dim=64, hidden_size=hidden, intermediate_size=4 * hidden, num_heads=hidden // 64,
                                 num_kv_heads=3)
        return SimpleNamespace(config=config, num_layers=30)

    assert CudaBackend.cluster_decode_shape(backend, model(1088), plan, 16) is None
    with pytest.raises(Looked):
        CudaBackend.cluster_decode_shape(backend, model(1024), plan, 16)


class HostOnlyCupy:
    """What CapturedStep needs of CuPy, without a GPU: its "device" buffer is host memory, its copy a memmove."""

    int32, uint64 = np.int32, np.uint64

    class Array(np.ndarray):
        @property
        def data(self):
            return SimpleNamespace(ptr=self.ctypes.data)

    def zeros(self, n, dtype):
        return np.zeros(n, dtype).view(self.Array)

    cuda = SimpleNamespace(runtime=SimpleNamespace(
        memcpyHostToDevice=1, memcpyAsync=lambda dst, src, size, kind, stream: ctypes.memmove(dst, src, size)))


def test_captured_step_fill_writes_the_documented_layout_and_pads_the_bucket():
    """CapturedStep.fill against the documented layout (step.packed_offsets), written here from scratch; a big plan then a smaller one into
    the same buffers, so stale values of the first must not survive into the second's padding."""
    rng = np.random.default_rng(3)
    B, N, W, page_size = 2, 16, 9, 4
    step = CapturedStep(HostOnlyCupy(), B, N, W, max_position=64, context=256)
    for sizes in [(9, 7), (3, 5), (1, 1)]:
        items = []
        for T in sizes:
            L = int(rng.integers(0, 10))
            table = [int(p) for p in rng.permutation(50)[: -(-(L + T) // page_size)]]
            tree = Tree(rng.integers(0, 100, T), [-1] + [int(rng.integers(0, i)) for i in range(1, T)])
            items.append(StepItem.tree(table, L, tree))
        plan = build_plan(items, page_size)
        step.fill(plan, SimpleNamespace(ptr=0))
        n = plan.num_tokens
        pad = lambda values, fill: np.concatenate([np.asarray(values, np.int64), np.full(N - len(values), fill)])  # noqa: E731
        masks = np.zeros(N, np.uint64)
        masks[:n] = plan.masks
        tables = np.full((B, W), -1)
        tables[:, : plan.page_tables.shape[1]] = plan.page_tables
        want = np.concatenate([masks.view(np.int32), pad(plan.tokens, 0), pad(plan.positions, 0), pad(plan.slots, -1),
                               np.concatenate([plan.logit_rows, np.arange(len(plan.logit_rows), N)]), plan.cu_q,
                               plan.kv_len, plan.tree_start, plan.causal, tables.reshape(-1)])
        assert np.array_equal(step.packed, want.astype(np.int32)), sizes
