"""Steps in one launch on the CUDA backend, for models whose layers are small enough that launches, not bytes, bound a
step: the fused-layers kernel (kernels/fused_layers.cuh: every layer of a decode or small tree step in one
persistent launch) and cluster decode (kernels/cluster_decode.cuh: a sequence's decode step, or a tree of up to 4
nodes, on thread block clusters that hand each layer's partial sums over in distributed shared memory). Part of
CudaBackend (cuda_backend.py), whose state and launch helpers it uses.
"""

from __future__ import annotations

import numpy as np

from ..step import pow2_bucket
from . import driver
from .cuda_steps import DevicePlan, context_bucket
from .driver import allow_shared

FUSED_MAX_LAYERS = 64  # the fused kernel's layer table in shared memory (kernels/fused_layers.cuh, step_in_shared)
FUSED_STATIC_SHARED = 6 << 10  # its static shared memory (that table, the step's small inputs), rounded up
FUSED_SLOT_BYTES = 16 * 8 * 32 * 16  # the fused decode instance's weight slots: 16 warps x SLOT_CHUNKS x 16 bytes
# Steps whose attention takes at most this many key shares (up to 256 keys: context_bucket // 32) run the fused
# instances that merge them in shared memory, a block per (sequence, KV head, row group). Measured on the default
# model's shapes (H100, notes/fused_block_h100_stop23.log), decode: kernel span at 100 keys 561 -> 492 µs, at 8 full
# shares (255 keys) 548 -> 512; a T = 16 tree at 100 keys 782 -> 718. 16 shares (the 512 bucket) were level over the
# bucket for decode: 528 against ~550 µs at 300 keys, 571 against ~550 at 500.
FUSED_BLOCK_SPLITS = 8
# Tree steps take the block instances up to this context bucket, their keys in at most FUSED_TREE_BLOCK_SPLITS shares
# (a warp of the block each: fused_layers.cuh's WARPS). Measured on an H200 (notes/fused_tree_block_h200_stop65.log),
# the default model's shapes, by turns, the same bits: T = 16 at 300 / 400 / 480 keys 788 / 790 / 794 -> 711 / 739 /
# 754 µs a step with 16 shares in the block (against 16 shares over the grid and a merge phase), T = 8 at 300 / 480
# keys 721 / 722 -> 654 / 700.
FUSED_TREE_BLOCK_BUCKET, FUSED_TREE_BLOCK_SPLITS = 512, 16
# A sequence's tree step runs fused while its row bucket times its context bucket is at most this; past it, layer by
# layer, where attention runs on tensor cores (the fused kernel's CUDA-core attention grows with the rows times the
# keys). Measured on an H200 (notes/fused_vs_layered_trees_h200_stop65.log), the default model's shapes, by turns, µs a
# step fused -> layered: 16 rows at 1000 keys 855 -> 951 (fused kept), at 1100 / 1300 / 1700 / 1900 / 4000 / 6000 keys
# 969 / 984 / 1006 / 1085 / 1234 / 1418 -> 986 / 962 / 972 / 984 / 1003 / 1015; 8 rows at 1900 857 -> 900 (kept), at
# 2100 / 3000 / 4000 / 6000 926 / 1014 / 1063 / 1158 -> 935 / 918 / 923 / 930; 4 rows at 2100 891 -> 881 (kept: the
# bucket's product is 16384), at 4100 / 8000 943 / 1127 -> 923 / 982; 2 rows at 2100 808 -> 882. Decode keeps the
# fused kernel at every context (2100 / 4100 / 8000 keys 688 / 761 / 924 against 863 / 906 / 964).
FUSED_TREE_KEY_ROWS = 16384
# packed (node, head) rows per attention unit of a tree step: split keys, and the block instances (kernels/fused_layers.cuh,
# GROUP_ROWS and BLOCK_GROUP_ROWS)
FUSED_GROUP_ROWS, FUSED_BLOCK_GROUP_ROWS = 4, 2
CLUSTER_DECODE_BLOCKS = 8  # blocks per cluster of kernels/cluster_decode.cu (CD_CLUSTER)
CLUSTER_DECODE_MAX_PARTIALS = 24  # partial sums of each role at most (CD_MAX_PARTIALS: the polled slices' buffer)
CLUSTER_DECODE_ROWS = (1, 2, 4)  # cluster_decode.cuh's instances: rows a step at most (cluster_tree.cu: trees of up to 4 nodes)
# a step's K/V share in up to this many passes where it does not fit a block's shared memory whole (the default model:
# decode past the 4096-key bucket, 2-node trees past 2048), on instances of up to CLUSTER_DECODE_PASS_ROWS rows: 4-node
# trees in two passes at 1,500 keys took 945 µs a step against the fused kernel's 808 (notes/cluster_passes_h200_stop66.log)
CLUSTER_DECODE_PASSES, CLUSTER_DECODE_PASS_ROWS = 4, 2


class FusedLaunchers:
    """CudaBackend's one-launch steps: which steps take them, their layer tables, shared memory and launches."""

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
        the step runs layer by layer: causal chunks, more rows than fused_row_limit, and a sequence's tree steps at
        long contexts (FUSED_TREE_KEY_ROWS)."""
        c = model.config
        N = plan.num_tokens
        if not self.bf16 or plan.has_causal or N > self.fused_row_limit(model) or c.head_dim not in (64, 128):
            return 0
        if c.hidden_size % 8 or c.intermediate_size % 8:
            return 0
        rows = pow2_bucket(N)
        if plan.batch_size == 1 and rows > 1 and rows * context_bucket(plan.max_kv_len) > FUSED_TREE_KEY_ROWS:
            return 0
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

        bucket = context_bucket(plan.max_kv_len)

        def shares(group_rows):  # (row groups, key shares)
            groups = -(-rows * (H // Hkv) // group_rows)
            # split the keys until every warp of the grid has a share, but no share under 32 keys; from the graph
            # buckets (rows, context), as in attention_mma, so eager launches and replays give the same bits
            return groups, max(1, min(256, self.fused_blocks * 16 // (B * Hkv * groups), bucket // 32))

        groups, splits = shares(1 if decode else FUSED_GROUP_ROWS)
        # the block instances: a block per (sequence, KV head, row group) merges the key shares in its shared memory
        # (fused_layers.cuh, BLOCK), so the split partials need no buffers (null pointers); steps of at most
        # FUSED_BLOCK_SPLITS shares, and tree steps up to FUSED_TREE_BLOCK_BUCKET keys in at most FUSED_TREE_BLOCK_SPLITS
        block = splits <= FUSED_BLOCK_SPLITS or (not decode and bucket <= FUSED_TREE_BLOCK_BUCKET)
        if block and not decode:
            groups, splits = shares(FUSED_BLOCK_GROUP_ROWS)
            splits = min(splits, FUSED_TREE_BLOCK_SPLITS)
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
    def cluster_decode_shared_bytes(c, num_layers: int, mlp_blocks: int, span: int, page_size: int, rows: int = 1,
                                    pass_keys: int | None = None) -> int:
        """Dynamic shared memory of kernels/cluster_decode.cuh (its Layout, region by region, each rounded to 16 bytes)
        for MLP blocks over the intermediate groups, `span` keys a block at most, K/V rows for `pass_keys` of them at once
        (default: all) and the instance of `rows` rows (the one-row instance copies its O slice into the qkv weights'
        region once the qkv products are done: Layout's LATE_O)."""
        C, D, I = c.hidden_size, c.head_dim, c.intermediate_size
        G = c.num_heads // c.num_kv_heads
        pairs_block = -(-((G + 2) * D // 2) // CLUSTER_DECODE_BLOCKS)
        OC, OK = C // CLUSTER_DECODE_BLOCKS, G * D
        ni_max = 8 * -(-(I // 8) // mlp_blocks)
        R, late_o = rows, rows == 1
        pass_keys = span if pass_keys is None else pass_keys
        polled = max(c.num_kv_heads, mlp_blocks // CLUSTER_DECODE_BLOCKS) * (C // 32) * 16  # a row's polled partials
        regions = [R * C * 4, R * C * 4, R * 8 * 4, R * max(C, OK) * 2, R * (G + 2) * D * 4, R * 8 * G * (D + 2) * 4,
                   R * G * -(-span // 32) * (D + 2) * 4, R * OK * 2, R * ni_max * 4, R * 8 * OC * 4, R * 16 * 4, R * polled,
                   R * pairs_block * 2 * 4, C * 4, C * 4, (6 + late_o + (pass_keys < span)) * 8, num_layers * 64, (span // page_size + 2) * 4, R * 8]
        # the two roles' weights overlap; late_o: the O slice inside the qkv weights' region
        weights = [max(pairs_block * 2 * C * 2, OC * OK * 2)] if late_o else [pairs_block * 2 * C * 2, OC * OK * 2]
        attention = weights + [2 * pass_keys * D * 2]
        mlp = [ni_max * 2 * C * 2, C * ni_max * 2]
        size = lambda rs: sum(-(-r // 16) * 16 for r in rs)  # noqa: E731
        return size(regions) + max(size(attention), size(mlp))

    def cluster_decode_shape(self, model, plan: DevicePlan, page_size: int):
        """(clusters, keys a block at most, shared bytes, rows of the instance, K/V rows a block holds at once) of
        kernels/cluster_decode.cuh for this step, or None where the fused-layers kernel serves it: decode steps of one
        sequence, and its tree steps of up to cluster_tree_rows nodes, on a model the fused kernel takes, whose shapes
        the kernel handles and whose weight slices and attention share fit one block's shared memory (a decode step's
        share in up to CLUSTER_DECODE_PASSES passes on cluster_decode_passes.cu, for steps of up to 2 nodes)."""
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
        # every block must be resident at once (the polls would deadlock): ask the driver how many clusters fit,
        # which depends on the shared memory, which depends on how many MLP blocks share the intermediate groups
        clusters = self.sm_count // CLUSTER_DECODE_BLOCKS
        for _ in range(3):
            clusters = min(clusters, c.num_kv_heads + CLUSTER_DECODE_MAX_PARTIALS)
            if clusters < c.num_kv_heads + 1:
                return None
            mlp_blocks = CLUSTER_DECODE_BLOCKS * (clusters - c.num_kv_heads)
            for passes in range(1, (CLUSTER_DECODE_PASSES if rows <= CLUSTER_DECODE_PASS_ROWS else 1) + 1):
                pass_keys = span if passes == 1 else 32 * -(-span // (32 * passes))  # (passes: whole 32-key chunks)
                if self.cluster_pass_keys and rows <= CLUSTER_DECODE_PASS_ROWS:  # forced (tests)
                    if self.cluster_pass_keys % 32:
                        raise ValueError(f"cluster_pass_keys must be a multiple of 32, not {self.cluster_pass_keys}")
                    pass_keys = min(pass_keys, self.cluster_pass_keys)
                shared = self.cluster_decode_shared_bytes(c, model.num_layers, mlp_blocks, span, page_size, rows, pass_keys)
                if shared <= self.max_shared:
                    break
            else:
                return None
            key = rows, shared, pass_keys < span  # (the instance: in passes or whole)
            if key not in self.cluster_counts:
                kernel = self.cluster_kernel(rows, c.head_dim, key[2])
                allow_shared(kernel, shared)
                self.cluster_counts[key] = driver.max_active_clusters(kernel, 512, shared, CLUSTER_DECODE_BLOCKS)
            if self.cluster_counts[key] >= clusters:
                return clusters, span, shared, rows, pass_keys
            clusters = self.cluster_counts[key]
        return None

    def cluster_kernel(self, rows: int, head_dim: int, passes: bool = False):
        """cluster_decode.cuh's instance of `rows` rows: the decode step's in cluster_decode.cu, the tree steps' in
        cluster_tree.cu (a file of their own, so that a generation's first step does not wait for their compile);
        passes: the one that runs a K/V share in passes, in cluster_decode_passes.cu (long contexts alone)."""
        if passes:
            return self.kernel("cluster_decode_passes.cu", f"cluster_decode_passes_r{rows}_d{head_dim}", head_dim)
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

    def cluster_decode_layers(self, model, plan: DevicePlan, cache, clusters: int, span: int, shared: int, rows: int = 1,
                              pass_keys: int | None = None):
        """kernels/cluster_decode.cuh on a one-token decode step or a tree step of N <= rows nodes -> the final norm of the
        residual stream after the last layer, bf16 [N, C]. (The kernel also writes that residual stream, fp32, for probes
        that compare it with the fused kernel's: notes/scripts/cluster_decode_probe.py.)"""
        cp, c, w = self.cp, model.config, model.weights
        C, Hkv, N = c.hidden_size, c.num_kv_heads, plan.num_tokens
        normed = cp.empty((N, C), dtype=self.store_dtype)
        resid = cp.empty((N, C), dtype=cp.float32)
        opart, dpart, epoch = self.cluster_decode_buffers(C)
        cos, sin = self.rope_tables(model.inv_freq, plan.max_position)
        pass_keys = span if pass_keys is None else pass_keys
        kernel = self.cluster_kernel(rows, c.head_dim, pass_keys < span)
        allow_shared(kernel, shared)
        i32 = np.int32
        kernel(
            (CLUSTER_DECODE_BLOCKS * clusters,), (512,),
            (self.layer_table(model, cache, cluster=rows), i32(model.num_layers), plan.tokens, w.embed, w.final_norm, normed,
             resid, plan.positions, plan.slots, plan.kv_len, plan.page_tables, plan.masks, plan.tree_start, plan.cu_q, i32(N), cos, sin,
             opart, dpart, epoch, i32(C), i32(c.num_heads), i32(Hkv), i32(c.intermediate_size), i32(cache.page_size),
             i32(span), i32(pass_keys), np.float32(c.rms_norm_eps), np.float32(model.scale),
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
