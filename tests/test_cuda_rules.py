"""Host-side rules of the CUDA backend that need no GPU (CPU): which steps the fused-layers kernel may take, how a\ncaptured step's inputs are laid out."""

import ctypes
import re
from types import SimpleNamespace

import numpy as np
import pytest

from minispec.backends.cuda_backend import CudaBackend, finish_compiles, kernel_source, notice_if_slow
from minispec.backends.cuda_fused import (
    CLUSTER_DECODE_BLOCKS, CLUSTER_DECODE_MAX_PARTIALS, CLUSTER_DECODE_PASS_ROWS, CLUSTER_DECODE_ROWS, FUSED_BLOCK_GROUP_ROWS, FUSED_GROUP_ROWS, FUSED_MAX_LAYERS)
from minispec.backends.cuda_gemm import stream_file
from minispec.backends.cuda_steps import CapturedStep
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


def test_long_context_trees_leave_the_fused_kernel():
    """A sequence's tree steps run fused while their row bucket times the context bucket is at most FUSED_TREE_KEY_ROWS
    (16 rows up to the 1k-key bucket, 8 up to 2k, 4 up to 4k), layer by layer past it, where attention runs on tensor
    cores (measured: cuda_fused); decode, and batches of sequences, keep the fused kernel at any context."""
    from minispec.bench_gpu import smollm2_135m_config

    rules = SimpleNamespace(bf16=True, max_shared=227 * 1024, fused_row_limit=lambda model: 16,
                            fused_shared_bytes=CudaBackend.fused_shared_bytes)
    model = SimpleNamespace(config=smollm2_135m_config())

    def rows(N, keys, B=1):
        plan = SimpleNamespace(num_tokens=N, has_causal=False, batch_size=B, max_kv_len=keys)
        return CudaBackend.fused_rows(rules, model, plan)

    assert rows(16, 1000) == 16 and rows(16, 1030) == 0 and rows(9, 1100) == 0 and rows(12, 6000) == 0
    assert rows(8, 1000) == 8 and rows(8, 2000) == 8 and rows(8, 2100) == 0 and rows(5, 4000) == 0
    assert rows(4, 4000) == 4 and rows(3, 4100) == 0 and rows(2, 8000) == 2 and rows(2, 8200) == 0
    assert rows(1, 8000) == 1 and rows(1, 30000) == 1
    assert rows(16, 4000, B=4) == 16 and rows(8, 6000, B=8) == 8
    assert rows(17, 100) == 0  # past fused_row_limit


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
    from minispec.backends.cuda_backend import KERNELS

    source = kernel_source("cluster_decode.cu")
    define = lambda name: int(re.search(rf"#define {name} (\d+)", source).group(1))  # noqa: E731
    assert define("CD_CLUSTER") == CLUSTER_DECODE_BLOCKS
    assert define("CD_MAX_PARTIALS") == CLUSTER_DECODE_MAX_PARTIALS
    # an instance for each row count the backend picks, for both head dims
    # (the one-row instances in cluster_decode.cu, the tree steps' in cluster_tree.cu: CudaBackend.cluster_kernel)
    instance = r"HEAD_DIM_\d+\(CLUSTER_DECODE\((\d+), (\d+)\)\)"
    one, tree = (set(re.findall(instance, (KERNELS / file).read_text())) for file in ("cluster_decode.cu", "cluster_tree.cu"))
    assert one == {("1", "64"), ("1", "128")}
    # the instances that run a share in passes, of up to CLUSTER_DECODE_PASS_ROWS rows, in a file of their own
    passes = set(re.findall(r"HEAD_DIM_\d+\(CLUSTER_DECODE_PASSES\((\d+), (\d+)\)\)", (KERNELS / "cluster_decode_passes.cu").read_text()))
    pass_rows = [R for R in CLUSTER_DECODE_ROWS if R <= CLUSTER_DECODE_PASS_ROWS]
    assert passes == {(str(R), str(D)) for R in pass_rows for D in (64, 128)}
    looked = []
    for R in pass_rows:
        CudaBackend.cluster_kernel(SimpleNamespace(kernel=lambda *args: looked.append(args)), R, 64, passes=True)
    assert looked == [("cluster_decode_passes.cu", f"cluster_decode_passes_r{R}_d64", 64) for R in pass_rows]
    assert one | tree == {(str(R), str(D)) for R in CLUSTER_DECODE_ROWS for D in (64, 128)}
    picked = []  # and the backend looks each one up in its file
    for R in CLUSTER_DECODE_ROWS:
        for D in (64, 128):
            CudaBackend.cluster_kernel(SimpleNamespace(kernel=lambda *args: picked.append(args)), R, D)
    for (file, name, D), (R, D2) in zip(picked, [(R, D) for R in CLUSTER_DECODE_ROWS for D in (64, 128)]):
        assert name == f"cluster_decode_r{R}_d{D}" and D == D2
        assert (str(R), str(D)) in (one if file == "cluster_decode.cu" else tree if file == "cluster_tree.cu" else set()), (file, name)


def cluster_rules_backend(cluster_kernel, cluster_counts):
    """What CudaBackend.cluster_decode_shape asks of the backend, without a GPU: an H200's 132 SMs and 225 KB of dynamic
    shared memory a block, the rules' defaults, the kernel lookup and the driver's counts of resident clusters given."""
    return SimpleNamespace(cluster_decode=True, cluster_tree_rows=4, cluster_kernel=cluster_kernel, sm_count=132,
                           max_shared=225 * 1024, cluster_counts=cluster_counts, cluster_pass_keys=None,
                           cluster_decode_shared_bytes=CudaBackend.cluster_decode_shared_bytes)


def test_cluster_decode_takes_hidden_sizes_up_to_1024():
    """kernels/cluster_decode.cu holds a slice of C / 8 columns as one float4 a lane of a warp (slice_partials): a model
    wider than 1024 leaves one-sequence decode steps to the fused kernel, before any kernel is looked up."""

    class Looked(Exception):
        pass

    def kernel(*args):
        raise Looked  # past the shape rules: the backend asks for the kernel next

    backend = cluster_rules_backend(kernel, {})
    plan = SimpleNamespace(batch_size=1, num_tokens=1, has_causal=False, max_kv_len=100)

    def model(hidden):
        config = SimpleNamespace(head_dim=64, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=hidden // 64 // 3 * 3,
                                 num_kv_heads=3)
        return SimpleNamespace(config=config, num_layers=30)

    assert CudaBackend.cluster_decode_shape(backend, model(1088), plan, 16) is None
    with pytest.raises(Looked):
        CudaBackend.cluster_decode_shape(backend, model(1024), plan, 16)


def test_cluster_decode_takes_the_default_models_decode_up_to_its_longest_context():
    """The default model's decode fits cluster_decode.cu's blocks whole up to the 4096-key bucket (512 keys a block):
    its one-row instance copies the O slice into the qkv weights' region once the qkv products are done, so the two
    share their bytes (Layout's LATE_O, mirrored by cluster_decode_shared_bytes). The 8192 bucket (the model's longest
    context) runs its shares in two passes of 512 keys; the 16384 bucket, which four passes do not fit, goes to the
    fused kernel. The tree instances give the O slice a region of their own and hold more rows' partials: 2-node trees
    fit whole up to the 2048 bucket and in two passes of 256 keys in the 4096 bucket, 4-node trees whole up to the 1024
    bucket (in passes they were slower than the fused kernel)."""
    from minispec.bench_gpu import smollm2_135m_config

    config = smollm2_135m_config()

    class Counts(dict):  # the driver's count of resident clusters, as asked: 16 of 8 blocks (132 SMs) at any size here
        def __contains__(self, key):
            return True

        def __getitem__(self, key):
            return 16

    backend = cluster_rules_backend(lambda *args: None, Counts())
    model = SimpleNamespace(config=config, num_layers=config.num_layers)

    def shape(keys, rows=1):
        plan = SimpleNamespace(batch_size=1, num_tokens=rows, has_causal=False, max_kv_len=keys)
        return CudaBackend.cluster_decode_shape(backend, model, plan, 16)

    assert shape(4096) == (16, 512, CudaBackend.cluster_decode_shared_bytes(config, 30, 8 * 13, 512, 16), 1, 512)
    assert shape(8192) == (16, 1024, CudaBackend.cluster_decode_shared_bytes(config, 30, 8 * 13, 1024, 16, 1, 512), 1, 512)
    assert shape(16384) is None
    assert shape(2048, rows=2)[4] == 256 and shape(4096, rows=2)[4] == 256 and shape(8192, rows=2) is None
    assert shape(1024, rows=4)[4] == 128 and shape(2048, rows=4) is None
    backend.cluster_pass_keys = 64  # forced (tests): passes at any context, whole 32-key chunks
    assert shape(4096)[4] == 64 and shape(100)[4] == 13 and shape(2048, rows=2)[4] == 64 and shape(1024, rows=4)[4] == 128


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


class SlicedTokens(list):
    """A sequence's token list that notes where each slice taken of it starts (which tokens a load converts)."""

    def __init__(self, values):
        super().__init__(values)
        self.starts = []

    def __getitem__(self, index):
        if isinstance(index, slice):
            self.starts.append(index.start or 0)
        return super().__getitem__(index)


def test_a_stretch_load_sends_every_token_and_converts_only_the_new_ones():
    """CudaBackend.ngram_load on host memory (HostOnlyCupy): each load's one copy gives the "device" block the state,
    the tree rows, the plan and every token; a load for the sequence loaded last converts only the tokens it gained
    since (the staging keeps the rest), one for another sequence, or after another's, converts all. The staging past
    what was converted and the whole block are poisoned before each load."""
    from minispec.ngram_device import STATE_SIZE, NgramBuffers, state_row, tree_rows
    from minispec.step import build_plan_one, pack_plan, packed_offsets
    from minispec.tree import MAX_TREE_NODES

    rng = np.random.default_rng(8)
    cp, N, W, P, capacity = HostOnlyCupy(), 16, 12, 16, 200
    sizes = [STATE_SIZE, 2 * MAX_TREE_NODES, packed_offsets(1, N, W)[-1], capacity]
    at = np.cumsum([0, *sizes]).tolist()
    block = cp.zeros(at[-1], np.int32)
    event = SimpleNamespace(synchronize=lambda: None, record=lambda stream: None)
    buffers = NgramBuffers(N, W, block[at[3] :], block[: at[1]], block[at[1] : at[2]].reshape(2, MAX_TREE_NODES),
                           block[at[2] : at[3]], np.zeros((2, 8 + MAX_TREE_NODES), np.int32), None, block,
                           np.zeros(at[-1], np.int32), event)
    backend = CudaBackend.__new__(CudaBackend)  # what ngram_load uses of it: the CuPy module, the stream, no copy pending
    backend.cp, backend.stream, backend._host_read = cp, SimpleNamespace(ptr=0), None

    def load(tokens, owner):
        L = len(tokens) - 1
        tree = Tree(rng.integers(0, 50, 5), [-1, 0, 0, 1, 2])
        state, rows = state_row(L, len(tree), 3, 4, 5, 6), tree_rows(tree)
        plan = build_plan_one(StepItem.tree(list(range(-(-(L + 5) // P))), L, tree), P)
        buffers.staging[at[3] + buffers.staged :] = -9  # (past what the staging holds for the last sequence)
        block[:] = -7
        tokens.starts.clear()
        backend.ngram_load(buffers, tokens, state, rows, plan, owner=owner)
        packed = np.zeros(sizes[2], np.int32)
        pack_plan(plan, packed, N, W)
        assert block[: at[1]].tolist() == state.tolist() and np.array_equal(block[at[1] : at[2]], rows.reshape(-1))
        assert np.array_equal(block[at[2] : at[3]], packed)
        assert block[at[3] : at[3] + len(tokens)].tolist() == list(tokens) and block[at[3] + len(tokens)] == -7
        return list(tokens.starts)

    first, second = object(), object()
    a = SlicedTokens(rng.integers(0, 50, 60).tolist())
    assert load(a, first) == [0]
    a += rng.integers(0, 50, 9).tolist()  # decoded since (a stretch's records, plain steps)
    assert load(a, first) == [60]  # the 9 new tokens alone
    assert load(a, first) == [69]  # nothing new
    b = SlicedTokens(rng.integers(0, 50, 30).tolist())
    assert load(b, second) == [0]
    a += [7]
    assert load(a, first) == [0]  # another sequence's load came between: all of a's tokens again
    assert load(SlicedTokens(list(a)), None) == [0]  # no owner: every token


def gemm_rules_backend(sm_count: int = 132):
    """A stand-in CudaBackend with the GEMM dispatch's rules and nothing forced (its methods, no GPU)."""
    names = ("wgmma_gemm_fits", "wgmma_tile_bytes", "wgmma_shape", "wgmma_groups", "wgmma_cluster_size", "own_gemm_serves",
             "own_gemm_chosen", "own_kernel", "glu_kernel", "wgmma_glu_groups", "stream_launch_shape", "stream_cluster_size",
             "norm_split", "wgmma_persistent", "finishes_norm", "wgmma_takes_norm", "wgmma_stage_room", "wgmma_stage_bytes",
             "wgmma_norm_stage_fits", "wgmma_box_rows")
    rules = type("Rules", (), {name: getattr(CudaBackend, name) for name in names})()
    rules.sm_count, rules.hopper, rules.gemm_wgmma_groups, rules.gemm_cluster = sm_count, True, None, None
    rules.shared_optin = 227 * 1024  # an H100's or H200's opt-in shared memory a block
    rules.gemm_norm, rules.gemm_wgmma_xrows, rules.gemm_wgmma_tiles = None, None, None
    rules.bf16, rules.gemm, rules.cublas = True, None, object()
    return rules


@pytest.mark.parametrize("M", [1, 8, 16, 17, 32, 64])
def test_gemm_dispatch_takes_the_measured_kernels(M):
    """Which kernel `linear` takes, as measured in notes/gemm_xrows_ab_h100_stop37.log: gemm_wgmma of one warpgroup
    a block at 1-64 rows where a tile streams 512 KB or more over K (8B qkv, O, down; O from 33 rows in 64 blocks of
    512 KB rather than 128 of 256, up to 32 in 128: experiment/o-clusters, notes/attention_trigger_h200_stop41.log), gemm_stream at up to 16 rows where blocks of two warpgroups would serve (8B gate/up, LM head: there
    16-row x boxes have no kernel), and the small default model's products at up to 16 rows. The 8B gate/up
    product takes a gated kernel at every M (gemm_stream_glu up to 16 rows, gemm_wgmma_glu past, with four
    warpgroups a block: its 112 blocks fit the SMs; notes/glu_groups_h200_stop41.log), the default model's none
    (cuBLAS serves it)."""
    rules = gemm_rules_backend()
    eight_b = {"qkv": (4096, 6144), "o": (4096, 4096), "down": (14336, 4096), "gate/up": (4096, 28672), "lm head": (4096, 128256)}
    for name, (K, N) in eight_b.items():
        one_group = name in ("qkv", "o", "down")
        assert rules.wgmma_gemm_fits(M, N, K) == (one_group or M > 16), name
        assert rules.own_gemm_serves(M, N, K), name
        assert rules.wgmma_shape(N, K) == ((1, {"down": 2}.get(name, 1)) if one_group else (2, 1)), name
        # up to 32 rows O's 64 tiles split in clusters of 2 (128 blocks of 256 KB), from 33 rows they keep 512 KB
        clusters = {"down": 2, "o": 2 if M <= 32 else 1}.get(name, 1)
        assert rules.wgmma_shape(N, K, M) == ((1, clusters) if one_group else (2, 1)), name
    for K, N in ((576, 960), (576, 3072), (1536, 576)):  # the default model: short streams
        assert rules.wgmma_gemm_fits(M, N, K) == (M > 16)
    assert rules.glu_kernel(M, 28672, 4096) == ("stream" if M <= 16 else "wgmma")
    assert rules.wgmma_glu_groups(14336) == 4 and rules.wgmma_glu_groups(28672) == 2  # 8B: 112 blocks; 70B: 224
    assert rules.glu_kernel(M, 3072, 576) is None


@pytest.mark.parametrize("M", [1, 16, 17, 32, 33, 64])
def test_the_o_and_down_products_begin_the_norm_behind_them(M):
    """norm_split: the 8B O and down products (gemm_wgmma of one warpgroup a block) split the RMSNorm behind them with
    the product after it up to 32 rows (decode, trees up to 32 nodes; 33-64 rows measured level); not where linear takes another kernel
    (the default model's O: gemm_stream up to 16 rows, cuBLAS past; the 8B LM head's shape: two warpgroups), nor
    with gemm_norm False; forced on (tests) wherever kernels/gemm_wgmma.cu has the _begin kernel (one warpgroup, 16-,
    32- and 64-row x boxes). The 32- and 64-row kernels hold the norm's values in shared memory past their ring
    (NormStage): the 8B's fit (the 64-row ring leaves 18,224 bytes: 64 rows of 64 partials, or a 64 x 64 residual
    slice and its weights), a 70B-wide norm's 128 partials a row at full boxes do not, and that product takes the
    norm materialised."""
    rules = gemm_rules_backend()
    assert rules.norm_split(M, 4096, 4096) == rules.norm_split(M, 4096, 14336) == (M <= 32)
    assert not rules.norm_split(M, 576, 576) and not rules.norm_split(M, 128256, 4096)
    # the products after it finish the norm where a _finish kernel is built (gemm_wgmma of one warpgroup: up to 64
    # rows; gemm_stream in k 128 stages: up to 16); not two warpgroups (a 70B-wide gate/up), nor cuBLAS
    assert rules.finishes_norm("wgmma", M, 6144, 4096) and rules.finishes_norm("stream", M, 28672, 4096) == (M <= 16)
    assert not rules.finishes_norm("wgmma", M, 57344, 8192) and not rules.finishes_norm("cublas", M, 6144, 4096)
    assert rules.wgmma_norm_stage_fits(M, 6144, 4096, M * 64)  # the 8B down's 64 tiles
    # a 70B-wide qkv after 128 tiles: 32 or 64 rows of 128 partials overflow the room (9,952 / 18,224 bytes), 17 or
    # 33 rows fit; 16-row boxes keep them in registers (no NormStage)
    assert rules.wgmma_norm_stage_fits(M, 10240, 8192, M * 128) == (M not in (32, 64))
    rules.gemm_norm = True
    assert rules.norm_split(M, 4096, 4096) and not rules.norm_split(M, 128256, 4096)
    rules.gemm_norm = False
    assert not rules.norm_split(M, 4096, 4096)


def test_gemm_wgmma_ring_table_agrees_with_the_kernels():
    """The backend sizes gemm_wgmma's shared memory from WGMMA_GEMM_STAGES: every (warpgroups, x rows) it names must
    be instantiated in kernels/gemm_wgmma*.cu with that ring depth (a deeper kernel than the table would overrun its
    shared memory), and the gated kernels' depths are WGMMA_GLU_STAGES' (two warpgroups: the (2, 64) entry's); each
    role's kernels are in the file the backend loads them from (WGMMA_FILES)."""
    from minispec.backends.cuda_gemm import WGMMA_FILES, WGMMA_GEMM_STAGES, WGMMA_GLU_STAGES, WGMMA_TILES

    instance = r"^GEMM_WGMMA_(?:CLUSTERS|GLU)\(\d+, \d+, \d+, *(\w*)\)"
    for file in set(WGMMA_FILES.values()):
        assert {role for role, name in WGMMA_FILES.items() if name == file} >= set(re.findall(instance, kernel_source(file), re.M)), file
    source = "".join(kernel_source(file) for file in sorted(set(WGMMA_FILES.values())))
    built = re.findall(r"^GEMM_WGMMA_CLUSTERS\((\d+), (\d+), (\d+), *(\w*)\)", source, re.M)
    assert {(int(g), int(x), int(s)) for g, x, s, _ in built} == {(*key, s) for key, s in WGMMA_GEMM_STAGES.items()}
    # the split norm's kernels where the backend takes them (wgmma_takes_norm: one warpgroup, 16-, 32- and 64-row boxes;
    # in 16-row boxes from FINISH_SCALAR_ROWS + 1 rows, _finishq)
    assert {(int(g), int(x), role) for g, x, _, role in built if role} == \
        {(1, x, role) for x in (16, 32, 64) for role in ("_finish", "_begin")} | {(1, 16, "_finishq")}
    glu = re.findall(r"^GEMM_WGMMA_GLU\((\d+), (\d+), (\d+), *(\w*)\)", source, re.M)
    assert {int(g): int(s) for g, s, _, _ in glu} == WGMMA_GLU_STAGES and WGMMA_GLU_STAGES[2] == WGMMA_GEMM_STAGES[2, 64]
    assert {(int(g), int(s), role) for g, s, _, role in glu} == {(g, s, role) for g, s in WGMMA_GLU_STAGES.items() for role in ("", "_finish")}
    # the persistent kernels share gemm_wgmma's ring (the backend sizes their shared memory from the same table)
    tiles = {(int(g), int(x)): int(s) for g, x, s in re.findall(r"^GEMM_WGMMA_TILES\((\d+), (\d+), (\d+)\)", source, re.M)}
    assert set(tiles) == WGMMA_TILES and all(tiles[key] == WGMMA_GEMM_STAGES[key] for key in tiles)


def test_gemm_wgmma_runs_persistent_blocks_past_one_wave():
    """gemm_wgmma_tiles (persistent blocks) takes a product of two warpgroups a block without split-K whose tiles
    outnumber one wave of two blocks an SM (the LM heads at 17-64 rows), not one that fits a wave or splits K;
    forced on or off by gemm_wgmma_tiles (never with split-K, which it does not do)."""
    rules = SimpleNamespace(sm_count=132, gemm_wgmma_tiles=None)
    persistent = lambda *args: CudaBackend.wgmma_persistent(rules, *args)  # noqa: E731 (tiles, G, X, S)
    assert persistent(1002, 2, 64, 1) and persistent(384, 2, 64, 1)  # 8B and default model LM heads
    assert not persistent(264, 2, 64, 1) and not persistent(224, 2, 64, 1)  # one wave; 8B gate/up's tiles
    assert not persistent(1002, 1, 64, 1) and not persistent(1002, 2, 32, 1) and not persistent(1002, 2, 64, 2)
    rules.gemm_wgmma_tiles = True
    assert persistent(3, 2, 64, 1) and not persistent(3, 2, 64, 2)
    rules.gemm_wgmma_tiles = False
    assert not persistent(1002, 2, 64, 1)


def test_gemm_wgmma_boxes_fetch_a_box_row_per_l2_miss_up_to_32_rows():
    """gemm_wgmma's TMA boxes promote an L2 miss to 128 bytes (a box row) up to 32 rows at one warpgroup a block and
    to the driver's usual 256 above and for blocks of more warpgroups (measured in the 8B step, stop 44, and bench
    gemm, stop 45); forced by gemm_l2_promotion to any value CUtensorMapL2promotion has."""
    from minispec.backends.tensor_map import L2_PROMOTION, swizzled_rows

    rules = SimpleNamespace(gemm_l2_promotion=None)
    promotion = lambda M, G=1: CudaBackend.gemm_promotion(rules, M, G)  # noqa: E731
    assert [promotion(M) for M in (1, 16, 32, 33, 64)] == [128, 128, 128, 256, 256]
    assert [promotion(M, G) for M in (17, 32, 64) for G in (2, 4)] == [256] * 6
    rules.gemm_l2_promotion = 0
    assert promotion(1) == promotion(64) == promotion(32, 2) == 0
    assert L2_PROMOTION == {0: 0, 64: 1, 128: 2, 256: 3}  # cuda.h's CU_TENSOR_MAP_L2_PROMOTION_{NONE, L2_64B, ..}
    with pytest.raises(ValueError, match="L2 promotion of 32 bytes"):  # before any driver call
        swizzled_rows(SimpleNamespace(), 64, 64, 64, promotion=32)


def test_attention_triggers_the_next_launch_only_when_its_grid_fits_one_wave():
    """attention_trigger_first: the tensor-core attention lets the next kernel's blocks be placed early only where its
    own grid is placed whole at once (one wave: 2 blocks an SM of 4 warps, 1 of 8), so none of them waits behind
    them; never without programmatic dependent launch; forced either way by attention_early_trigger. The 8B T = 64
    step at 512 keys (2 row tiles x 8 KV heads x 8 shares, 8 warps) and its decode (1 x 8 x 8, 4 warps) trigger."""
    rules = type("Rules", (), {"attention_trigger_first": CudaBackend.attention_trigger_first,
                               "attention_wave": CudaBackend.attention_wave})()
    rules.sm_count, rules.pdl, rules.attention_early_trigger = 132, True, None
    assert rules.attention_trigger_first(2 * 8 * 8, 8) and rules.attention_trigger_first(1 * 8 * 8, 4)
    assert rules.attention_trigger_first(132, 8) and not rules.attention_trigger_first(133, 8)
    assert rules.attention_trigger_first(264, 4) and not rules.attention_trigger_first(265, 4)
    rules.attention_early_trigger = False
    assert not rules.attention_trigger_first(16, 8)
    rules.attention_early_trigger, rules.pdl = None, False
    assert not rules.attention_trigger_first(16, 8)


def test_argmax_takes_more_shares_than_top_k_where_rows_are_many():
    """row_shares: shares of at least 2048 logits, about two blocks an SM in all for top_share and
    ARGMAX_BLOCKS_PER_SM (8) for argmax_share, whose shares a block scans 2048 logits a round trip: Llama-3's 128k
    logits at 64 rows go in 17 shares for the argmax (5 for top-k), at 1-4 rows in 63 either way (the 2048 floor)."""
    from minispec.backends.cuda_sampling import ARGMAX_BLOCKS_PER_SM, SamplingLaunchers

    rules = SimpleNamespace(sm_count=132)
    shares = lambda R, V, *per_sm: SamplingLaunchers.row_shares(rules, R, V, *per_sm)  # noqa: E731
    assert ARGMAX_BLOCKS_PER_SM == 8
    assert [shares(R, 128256, 8) for R in (1, 4, 16, 32, 64)] == [63, 63, 63, 33, 17]
    assert [shares(R, 128256) for R in (1, 4, 16, 32, 64)] == [63, 63, 17, 9, 5]
    assert shares(64, 49152, 8) == 17 and shares(1, 49152, 8) == 24 and shares(4096, 128256, 8) == 1


def test_attention_key_tiles_follow_the_measured_shares():
    """attention_tile_keys: the wgmma kernel takes 128-key tiles at D = 128 for tree steps (more than 16 rows a
    sequence's KV head) from 2048 keys a share, for decode rows from 8192 (stop 59's H200 measurements), 64 keys
    otherwise and always at D = 64; a tile's TMA boxes must fit the producer lanes (8-row pages: two producer warps
    for 128 keys at D = 128), and attention_keys forces either size."""
    rules = type("Rules", (), {"attention_tile_keys": CudaBackend.attention_tile_keys})()
    rules.attention_keys = None
    keys = lambda share, rows, D=128, box_rows=16, producers=2: rules.attention_tile_keys(share, D, box_rows, producers, rows)  # noqa: E731
    assert [keys(share, 256) for share in (512, 1024, 2048, 4096)] == [64, 64, 128, 128]  # T = 64 at 8B heads
    assert [keys(share, 64) for share in (1024, 2048)] == [64, 128]  # T = 16
    assert [keys(share, 16, producers=1) for share in (2048, 4096, 8192)] == [64, 64, 128]  # T = 4, decode rows
    assert keys(16384, 256, D=64) == 64
    assert keys(8192, 256, box_rows=8) == 128 and keys(8192, 4, box_rows=8, producers=1) == 64
    rules.attention_keys = 64
    assert keys(16384, 256) == 64
    rules.attention_keys = 128
    assert keys(512, 4, producers=1) == 128
    with pytest.raises(ValueError, match="more than 32"):
        keys(512, 4, box_rows=8, producers=1)


def test_attention_merges_its_shares_in_clusters_the_kernel_has():
    """attention_merge_cluster: the mma.sync kernel's shares merge in a cluster of the largest power of two up to the
    share count and 8, on Hopper, where the split rule gives at most 16 shares, unless turned off;
    kernels/attention_mma.cu has an instance of every such size."""
    rules = type("Rules", (), {"attention_merge_cluster": CudaBackend.attention_merge_cluster})()
    rules.hopper, rules.attention_cluster_merge = True, None
    assert [rules.attention_merge_cluster(s) for s in (1, 2, 3, 4, 7, 8, 16, 17, 64)] == [0, 2, 2, 4, 4, 8, 8, 0, 0]
    rules.attention_cluster_merge = False
    assert rules.attention_merge_cluster(8) == 0
    rules.hopper, rules.attention_cluster_merge = False, None
    assert rules.attention_merge_cluster(8) == 0
    source = kernel_source("attention_mma.cu")
    for size in (2, 4, 8):
        assert f"TREE_ATTENTION_MMA_CLUSTER(D, WARPS, {size})" in source
    for D in (64, 128):
        for warps in (4, 8):
            assert f"TREE_ATTENTION_MMA_CLUSTERS({D}, {warps})" in source


def test_every_kernel_the_backend_names_is_in_the_file_it_names():
    """kernel(file, name) loads `name` from kernels/`file`'s module: each file the package names exists, each literal
    kernel name is an entry point of that file, and the fixed text of each name built at run time (f-string) is in that
    file's source (the GEMM and attention kernels sit in a file per family since stop 49: a name looked up in the
    wrong file fails only on a GPU). A call passes a head dim exactly where its file's instances come per head dim
    (kernels/head_dim.cuh, PER_HEAD_DIM). The files of every model's first steps are the ones warm_up compiles, and
    given a config those of its head dim."""
    import minispec
    from pathlib import Path

    from minispec.backends.cuda_backend import KERNELS, PER_HEAD_DIM
    from minispec.config import ModelConfig

    per_head_dim = {path.name for path in KERNELS.glob("*.cu") if "#define HEAD_DIM_64(" in kernel_source(path.name)}
    assert per_head_dim == PER_HEAD_DIM
    sources = "".join(path.read_text() for path in Path(minispec.__file__).parent.rglob("*.py"))
    calls = re.findall(r'kernel\("(\w+\.cu)", (f?)"([^"]*)"(, [^()]+)?\)', sources)
    assert len(calls) >= 12
    for file, is_format, name, head_dim in calls:
        source = kernel_source(file)
        entries = re.findall(r'extern "C" __global__ void (?:\w+\([^)]*\)\s*)*(\w+)\(', source)
        if is_format:  # the text before the first field, in an entry point's name or a kernel macro's name pattern
            assert name.split("{")[0] in source, (file, name)
        else:
            assert name in entries, (file, name)
        assert bool(head_dim) == (file in PER_HEAD_DIM), (file, name)
    assert re.search(r'kernel\(f"\{name\}\.cu", f"\{name\}_d\{D\}", D\)', sources)  # the fused layers' files
    # the tensor-core attention's two files by the step's kind: its _tree instances apart (cuda_attention.attention_mma)
    assert re.search(r'kernel\(f"attention_wgmma\{tree\}\.cu", f"tree_attention_wgmma_d\{D\}_k\{keys\}\{tree\}", D\)', sources)
    for file, suffix in (("attention_wgmma.cu", ""), ("attention_wgmma_tree.cu", "_tree")):
        instances = re.findall(r"^HEAD_DIM_\d+\(TREE_ATTENTION_WGMMA\(\d+, \d+, (true|false), (\w*)\)\)", kernel_source(file), re.M)
        assert len(instances) == 4 and {(skip, name) for skip, name in instances} == {(str(not suffix).lower(), suffix)}, file
    common = {"gemm.cu", "gemm_fused.cu", "gemm_wgmma.cu", "attention.cu", "elementwise.cu", "kv_cache.cu", "sampling.cu",
              "sampling_draw.cu"}
    compiled = []
    rules = gemm_rules_backend()
    rules.cluster_decode, rules.precompile = True, compiled.extend
    rules.small_layers = lambda c: CudaBackend.small_layers(rules, c)
    rules.splits_norms = lambda c: CudaBackend.splits_norms(rules, c)
    CudaBackend.warm_up(rules)
    named = set(re.findall(r'"(\w+\.cu)"', sources))
    # launch_stream's choice among the three (cuda_gemm.stream_file): every instance in the file it names, and the
    # wide one neither warmed up nor named literally
    for file in ("gemm.cu", "gemm_fused.cu", "gemm_stream_wide.cu"):
        instances = re.findall(r"^(?:GEMM_STREAM_CLUSTERS\(|SPLIT_K_CLUSTERS\((\w+), )(\d+), \d+, \d+, (\w*)\)", (KERNELS / file).read_text(), re.M)
        assert instances, file
        for body, R, role in instances:
            name = "gemm_stream_glu" if body == "GEMM_STREAM_GLU" else "gemm_stream"
            assert stream_file(name, int(R), role) == file, (file, body, R, role)
    assert stream_file("gemm_stream", 32, "") not in {file for file, _ in compiled}
    assert set(compiled) == {(file, None) for file in common} and common <= named
    assert all((KERNELS / file).exists() for file in named | PER_HEAD_DIM)
    def config(C, H, Hkv, I):
        return ModelConfig(vocab_size=1000, hidden_size=C, intermediate_size=I, num_layers=2, num_heads=H, num_kv_heads=Hkv,
                           head_dim=C // H, rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=2048,
                           tie_word_embeddings=False)

    small, large = config(576, 9, 3, 1536), config(4096, 32, 8, 14336)  # the default model's shapes, 8B's
    # the split norm's products for the 8B widths alone (norm_split: the default model's stream too little)
    norm = {("gemm_wgmma_begin.cu", None), ("gemm_wgmma_finish.cu", None)}
    for config, extra in ((small, {("attention_mma.cu", 64), ("attention_wgmma.cu", 64), ("attention_wgmma_tree.cu", 64), ("cluster_decode.cu", 64)}),
                          (large, {("attention_mma.cu", 128), ("attention_wgmma.cu", 128), ("attention_wgmma_tree.cu", 128)} | norm)):
        compiled.clear()
        CudaBackend.warm_up(rules, config)
        assert set(compiled) == {(file, None) for file in common} | extra, config
    # what speculation adds: the fused tree steps' instances (for the fused kernel's row limit) and the n-gram step
    rules.fused_pass_rows = CudaBackend.fused_pass_rows
    rules.cluster_tree_rows = 4
    for limit, ngram, extra in ((16, True, {"fused_layers_r4.cu", "fused_layers_r4_block.cu", "fused_layers_r16.cu",
                                             "fused_layers_r16_block.cu", "cluster_tree.cu"}),
                                (4, False, {"fused_layers_r4.cu", "fused_layers_r4_block.cu", "cluster_tree.cu"}), (0, True, set())):
        compiled.clear()
        rules.fused_row_limit = lambda model, limit=limit: limit
        CudaBackend.warm_up_trees(rules, SimpleNamespace(config=small), ngram)
        assert set(compiled) == {(file, 64) for file in extra} | ({("ngram_step.cu", None)} if ngram else set())
        assert all((KERNELS / file).exists() for file, _ in compiled)


def test_slow_compiles_are_announced_and_cached_ones_are_silent(capsys):
    """A machine's first run compiles the kernels (~20 s): the wait is named once it passes the threshold, with its
    length at the end; a wait under it (a cached module) prints nothing; an error inside ends it as failed."""
    import time

    with notice_if_slow("compiling kernels/x.cu", after=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.startswith("minispec: compiling kernels/x.cu ...\n") and re.search(r"minispec: done in 0\.[3-9] s\n$", err)
    with notice_if_slow("compiling kernels/y.cu", after=0.5):
        pass
    time.sleep(0.6)  # past the threshold: the cancelled notice stays silent
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError):
        with notice_if_slow("compiling kernels/z.cu", after=0.05):
            time.sleep(0.2)
            raise RuntimeError("nvrtc failed")
    assert re.search(r"minispec: failed after 0\.[2-9] s\n$", capsys.readouterr().err)


def test_precompile_compiles_side_by_side_and_kernel_waits_for_it(capsys):
    """warm_up's files compile each on a thread of its own while the caller goes on; kernel() takes the module a
    thread compiled (no second compile), compiles a file nobody started on the caller's thread, and raises a
    thread's compile error where the module is needed. A file of PER_HEAD_DIM compiles per head dim (-DHEAD_DIM),
    each dim a module of its own; the others without one. The threads are not daemons; finish_compiles (the CLI's
    last call) waits for those still running and names a wait past half a second."""
    import threading
    import time

    broken = kernel_source("kv_cache.cu")
    compiles, daemons = [], []

    class Module:
        def __init__(self, code, options):
            self.code, self.options = code, options

        def compile(self):
            compiles.append(threading.current_thread().name)
            daemons.append(threading.current_thread().daemon)
            time.sleep(0.3)
            if self.code == broken:
                raise RuntimeError("NVRTC rejected it")

        def get_function(self, name):
            return (self, name)

    class Device:
        def __init__(self, index):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    be = CudaBackend.__new__(CudaBackend)
    be.cp = SimpleNamespace(RawModule=lambda code, options: Module(code, options), cuda=SimpleNamespace(Device=Device))
    be.bf16, be.hopper, be.device_id, be.modules, be.compiling, be.functions = True, True, 0, {}, {}, {}
    start = time.perf_counter()
    be.precompile([("gemm.cu", None), ("attention.cu", None), ("sampling.cu", None), ("kv_cache.cu", None)])
    assert time.perf_counter() - start < 0.1  # the caller goes on at once
    gemm = be.kernel("gemm.cu", "a")
    assert be.kernel("attention.cu", "b")[0] is not gemm[0] and be.kernel("sampling.cu", "c")
    assert time.perf_counter() - start < 0.6  # 0.3 s each, side by side
    assert be.kernel("gemm.cu", "d")[0] is gemm[0] and len(compiles) == 4
    assert all(name.startswith("minispec-compile-") for name in compiles)
    assert not any(daemons)  # a process's exit waits for NVRTC (one ending during a compile crashed)
    with pytest.raises(RuntimeError, match="NVRTC rejected it"):
        be.kernel("kv_cache.cu", "e")
    be.kernel("elementwise.cu", "f")  # not precompiled: on this thread
    assert compiles[-1] == threading.current_thread().name and len(compiles) == 5
    d64, d128 = be.kernel("attention_mma.cu", "g", 64)[0], be.kernel("attention_mma.cu", "g", 128)[0]
    assert d64 is not d128 and "-DHEAD_DIM=64" in d64.options and "-DHEAD_DIM=128" in d128.options and len(compiles) == 7
    assert not any(option.startswith("-DHEAD_DIM") for option in gemm[0].options)
    for file, head_dim in (("attention_wgmma.cu", None), ("gemm.cu", 64)):
        with pytest.raises(ValueError, match="head dim"):
            be.kernel(file, "h", head_dim)
    # a file nobody asks for: finish_compiles (the CLI's last call) waits for it and names the wait past 0.5 s
    capsys.readouterr()
    be.precompile([("gemm_fused.cu", None), ("gemm_wgmma.cu", None)])  # 0.3 s each, side by side
    finish_compiles()
    assert all(future.done() for future in be.compiling.values()) and capsys.readouterr().err == ""
    Module.compile, slow = (lambda self: time.sleep(0.8)), time.perf_counter()
    be.precompile([("ngram_step.cu", None), ("fused_layers_r1.cu", 64)])
    finish_compiles()
    assert all(future.done() for future in be.compiling.values()) and time.perf_counter() - slow >= 0.8
    assert "minispec: finishing the kernel compiles" in capsys.readouterr().err


def test_the_backend_files_define_each_launcher_once():
    """CudaBackend takes its launchers from a file per subject (cuda_gemm.py, cuda_attention.py, ...) as mixins: a name
    defined in two of them, or in one and the core, would be shadowed in silence by the method resolution order."""
    owners = {}
    for part in CudaBackend.__mro__[:-1]:
        for name in vars(part):
            if not name.startswith("__"):
                owners.setdefault(name, []).append(part.__name__)
    assert {name: parts for name, parts in owners.items() if len(parts) > 1} == {}
    assert {"linear", "attention", "fused_layers", "argmax_device", "ngram_advance", "replay"} <= owners.keys()
