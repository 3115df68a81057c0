"""Paged tree attention on the CUDA backend: RoPE with the K/V write, then the attention kernels and their launch
shapes.

A step's query rows are the heads of its tokens (tree nodes, decode rows, prefill chunks), packed G to a KV head;
its keys are the sequence's pages. Three kernels serve: kernels/attention.cu (a warp a row and head: float32, and
head dims other than 64 and 128), attention_mma.cu (mma.sync blocks of 4 or 8 warps) and, on Hopper,
attention_wgmma.cu (8-warp blocks on warpgroup MMA fed by TMA); long contexts split into key shares, merged by
attention_merge or inside a cluster. Each rule names the measurement that set it. Part of CudaBackend
(cuda_backend.py), whose state and launch helpers it uses.
"""

from __future__ import annotations

import numpy as np

from ..errors import MinispecError
from ..step import pow2_bucket
from . import tensor_map
from .cuda_steps import DevicePlan, context_bucket
from .driver import allow_shared


class AttentionLaunchers:
    """CudaBackend's rope_write_kv and attention, and the launch rules of the attention kernels."""

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
            keys = self.attention_tile_keys(context // splits, D, box_rows, producers, rows)
            ring = min(6, 196608 // (4 * keys * D))  # attention_ring in kernels/attention_wgmma.cu
            # RING x (K, V) x keys x D, bf16, swizzled; 1024 to align them; 2 RING barriers
            # steps of tree rows alone (decode, tree verify) take the instances without the causal rows' mask skip
            tree = "" if plan.has_causal else "_tree"
            kernel = self.kernel(f"attention_wgmma{tree}.cu", f"tree_attention_wgmma_d{D}_k{keys}{tree}", D)
            shared = 2 * ring * keys * D * 2 + 1024 + 16 * ring
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

    def attention_tile_keys(self, share_keys: int, D: int, box_rows: int, producers: int, rows: int = 0) -> int:
        """Key positions per tile of tree_attention_wgmma, 64 or 128, for shares of `share_keys` (the context bucket
        over the split count, so graph replays keep the shape) and `rows` query rows per sequence's KV head. 128-key
        tiles halve the loop's per-tile work but leave 3 ring slots at D = 128 and make short shares coarser.
        Measured on an H100 (stop 21, notes/attention_keys_h100_stop21.log, both in one call), 8B heads: 128 from
        8192 keys a share (T = 64 at 32k keys 72.5-73.3 -> 69.3-69.5 µs; batch 16 at 8k: T = 1 195 -> 184, T = 16
        196 -> 190.5, T = 64 274-292 -> 263-269), 64 below (T = 64 at 512 keys 128 gave 15.3 against 12.8 µs, T = 16
        at 8k 20 against 17.7). On an H200 (stop 59, notes/attention_keys_h200_stop59.log), batch 1, tree steps (more
        than 16 rows) take 128 from 2048 keys a share: T = 64 at 8k keys 28.0 -> 26.8 µs (the 8B step 5.590 ->
        5.566 ms), at 16k 42.5 -> 39.1, T = 16 at 16k 26.9 -> 25.8, at 30k 40.2 -> 37.9, T = 32 at 16k level; with
        1024 a share 128 was slower at every T (T = 64 at 4k-6k, T = 32 and 16 at 4k-8k); decode rows keep 8192
        (T = 1 at 16k / 32k keys, 2048 / 4096 a share: 19.6 -> 21.4 and 33.5 -> 34.7 µs with 128). The default
        model's heads (D = 64) keep 64: at batch 16, 8k keys, 128 was faster at T = 64 (99 against 106-114 µs) but
        slower at T = 16 (50 against 47-48). A tile's TMA boxes must fit a lane each: (keys / box_rows) x 2 x D /
        64 <= 32 x producers."""
        shortest = 2048 if rows > 16 else 8192  # the shares that take 128-key tiles
        keys = self.attention_keys or (128 if share_keys >= shortest and D == 128 else 64)
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
