"""Host-side rules of the CUDA backend that need no GPU (CPU): which steps the fused-layers kernel may take."""

import re
from types import SimpleNamespace

import pytest

from minispec.backends.cuda_backend import (
    CLUSTER_DECODE_BLOCKS, CLUSTER_DECODE_MAX_PARTIALS, FUSED_MAX_LAYERS, CudaBackend, kernel_source)


def test_models_past_the_fused_layer_table_run_layer_by_layer():
    """The fused tree instances copy the layer table into shared memory sized FUSED_MAX_LAYERS (a kernel that got
    more layers would trap): deeper models run layer by layer, even where a test or benchmark forces fused rows."""
    source = kernel_source("fused_layers_r16.cu")
    assert int(re.search(r"#define FUSED_MAX_LAYERS (\d+)", source).group(1)) == FUSED_MAX_LAYERS
    forced = SimpleNamespace(fused_max_rows=16)  # the rows CudaBackend.fused_row_limit is told to allow
    assert CudaBackend.fused_row_limit(forced, SimpleNamespace(num_layers=FUSED_MAX_LAYERS + 1)) == 0
    assert CudaBackend.fused_row_limit(forced, SimpleNamespace(num_layers=FUSED_MAX_LAYERS)) == 16
    assert CudaBackend.fused_row_limit(SimpleNamespace(fused_max_rows=4), SimpleNamespace(num_layers=30)) == 4


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
