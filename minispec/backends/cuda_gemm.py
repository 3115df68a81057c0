"""GEMM dispatch of the CUDA backend: which kernel computes y = x W^T for each shape, and their launchers.

x [M, K] (bf16, or NormedRows: an RMSNorm that the product before left split) times a weight W [N, K] (bf16):
- gemm_wgmma (kernels/gemm_wgmma.cu, Hopper): TMA weight boxes and warpgroup MMA, split-K in clusters; 17-64 rows,
  and 1-16 rows where a block streams 512 KB or more of weights; persistent blocks for weights of many more tiles
  than SMs (the LM heads);
- gemm_stream (kernels/gemm.cu, gemm_fused.cu; gemm_stream_wide.cu): a cp.async ring of weight stages a block,
  split-K in clusters; the other products up to 16 rows;
- the gate/up product and SiLU·mul in one gated launch where linear would take one of those two;
- cuBLAS (cublas.py) for large M, or where it measured faster (own_gemm_serves, from `minispec bench gemm`).
Each rule names the measurement that set it. Part of CudaBackend (cuda_backend.py), whose state and launch helpers
it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..step import pow2_bucket
from . import tensor_map
from .driver import allow_shared

STREAM_ROWS = 128  # gemm_stream's weight rows per block
# gemm_wgmma's ring depth by (consumer warpgroups, staged x rows) (kernels/gemm_wgmma.cu, GEMM_WGMMA_CLUSTERS)
WGMMA_GEMM_STAGES = {(1, 64): 13, (1, 32): 18, (1, 16): 22, (2, 64): 4}
WGMMA_TILES = {(2, 64)}  # gemm_wgmma_tiles_w{G}_x{X} kernels (the ring of gemm_wgmma_w{G}_x{X})
WGMMA_GLU_STAGES = {2: 4, 4: 5}  # gemm_wgmma_glu_w{G}'s ring depth by warpgroups a block (x in 64-row boxes)


def stream_shape(R: int, K: int, S: int = 1) -> tuple[int, int]:
    """gemm_stream's (k per stage, ring depth) for R staged x rows and S blocks per cluster, as instantiated in
    kernels/gemm.cu: k 128 x 3 up to 16 rows where K / S allows it, else k 64 x 4 (notes/gemm_stages_h100.log)."""
    return (128, 3) if R <= 16 and K % (128 * S) == 0 else (64, 4)


def stream_file(name: str, R: int, suffix: str) -> str:
    """The kernel file of a gemm_stream instance: the plain products in gemm.cu (up to 16 rows) or gemm_stream_wide.cu
    (32 and 64, which no rule takes: a first run does not compile them), a fused epilogue's in gemm_fused.cu."""
    if name != "gemm_stream" or suffix:
        return "gemm_fused.cu"
    return "gemm.cu" if R <= 16 else "gemm_stream_wide.cu"


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


# gemm_wgmma's 16-row kernels that finish a split norm take its partials one float a thread up to this many rows
# (all of a row's 128 under the products up to 5 rows; quads cost decode ~0.5 µs a layer, stop 63), as quads above
# (_finishq: the 8B T = 16 step 31-33 µs faster, T = 8 27, on an H200, notes/finish_quads_h200_stop64.log)
FINISH_SCALAR_ROWS = 4
NORM_SPLIT_ROWS = 32  # the most rows for which linear_norm splits the norm across two products (norm_split)
# A product's part in a split norm (kernels/gemm.cuh, NormRole) as (its kernels' name suffix, their further arguments):
# a plain product has none ("_finish": NormedRows.finish; "_begin": linear_norm)
NO_NORM = ("", ())
# gemm_wgmma's kernels by that suffix: their files, compiled side by side on a machine's first run (kernels/gemm_wgmma.cuh)
WGMMA_FILES = {"": "gemm_wgmma.cu", "_begin": "gemm_wgmma_begin.cu", "_finish": "gemm_wgmma_finish.cu",
               "_finishq": "gemm_wgmma_finish.cu"}


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


class GemmLaunchers:
    """CudaBackend's products: linear, linear_norm, gate_up_silu, logits, and the rules that pick their kernels."""

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
        # a partial a row a block; the 32- and 64-row kernels (NormStage) sum a cluster's on chip: one a tile
        staged = self.wgmma_box_rows(M, G) >= 32
        partials = cp.empty((M, -(-N // 64) * (1 if staged else S)), dtype=cp.float32)
        begin = ("_begin", (np.uint64(0) if residual is None else residual, residual_out, norm_weight, h, partials))
        self.gemm_wgmma(x, weight, np.uint64(0), begin)
        return NormedRows(h, partials, eps, residual_out, norm_weight), residual_out

    def norm_split(self, M: int, N: int, K: int) -> bool:
        """Whether linear_norm splits the RMSNorm across the products around it: up to NORM_SPLIT_ROWS rows, where
        linear takes gemm_wgmma of one warpgroup a block (wgmma_takes_norm), bf16 (the 8B O and down products of a
        decode step and of trees up to 32 nodes). Measured on an H200, 8B step at 512 keys, by turns: decode
        (notes/norm_split_h200_stop48.log) 4.300 -> 4.115 ms, one step ahead 4.236 -> 4.085, a decode step of 4
        sequences 4.557 -> 4.375; trees (notes/norm_split_trees_h200_stop63.log), once gate/up takes the partials
        in 16-byte quads (all 16 rows' 2,048 under its products, kernels/gemm.cuh NormPrefetch), by turns against
        the split up to 4 rows: T = 16 4.466 -> 4.408 ms (4.631 -> 4.548 at 2,049 keys), T = 32 4.642-4.656 ->
        4.573-4.588, T = 8 4.420 -> 4.307 (an earlier form of the kernels); at T = 64 level (4.861-4.882 ->
        4.889-4.891): there O, qkv and gate/up each take ~2.5 µs more in the step than unsplit, about what the two
        norm launches cost (a ring one stage shorter, room for the NormStage beside a plain product's footprint, did
        not change it). gemm_norm forces it off, or on wherever wgmma_takes_norm (tests)."""
        if self.gemm_norm is False or not (self.bf16 and self.hopper):
            return False
        if self.gemm_norm is None and not (M <= NORM_SPLIT_ROWS and self.own_gemm_chosen(M, N, K) and self.own_kernel(M, N, K) == "wgmma"):
            return False
        return self.wgmma_takes_norm(M, N, K)

    def splits_norms(self, config) -> bool:
        """Whether some step of a model of this config splits an RMSNorm (norm_split for its O or down product at 1 to
        NORM_SPLIT_ROWS rows): warm_up compiles the split norm's gemm_wgmma files only then. The default model never
        does (its products stream too little for gemm_wgmma), and a fresh machine's first run then compiles two
        files fewer, ~4 s of nvcc each."""
        C, I, attn = config.hidden_size, config.intermediate_size, config.num_heads * config.head_dim
        return any(self.norm_split(M, C, K) for M in range(1, NORM_SPLIT_ROWS + 1) for K in (attn, I))

    def wgmma_takes_norm(self, M: int, N: int, K: int) -> bool:
        """Whether gemm_wgmma for x [M, K], W [N, K] has kernels that begin or finish a split norm (kernels/gemm_wgmma.cu
        builds them for one warpgroup a block in 16-, 32- and 64-row x boxes, one pass of blocks; those of 32 and 64
        take the norm's values in shared memory, NormStage, which must fit beside the ring)."""
        if not (0 < M <= 64 and K % 64 == 0):
            return False
        G, S = self.wgmma_shape(N, K, M)
        X = self.wgmma_box_rows(M, G)
        if G != 1 or X not in (16, 32, 64) or M > X or K % (64 * S) or self.wgmma_persistent(-(-N // 64), G, X, S):
            return False
        return X == 16 or self.wgmma_stage_bytes(X, S, "_begin") <= self.wgmma_stage_room(X)

    def wgmma_stage_room(self, X: int) -> int:
        """Shared memory left past gemm_wgmma's one-warpgroup ring of X-row x boxes (launch_wgmma's size; the kernel has
        no static shared memory): 18,224 bytes at 64 rows, 9,952 at 32 on an H100 or H200."""
        stages = WGMMA_GEMM_STAGES[1, X]
        return self.shared_optin - (stages * (64 + X) * 64 * 2 + 1024 + 16 * stages)

    def wgmma_stage_bytes(self, X: int, S: int, role: str, partials: int = 0) -> int:
        """A 32- or 64-row norm kernel's NormStage (kernels/gemm.cuh): the product before a norm, its residual slice
        [X][64 / S] and weight slice [64 / S]; the product after one, the `partials` floats; none in 16-row boxes."""
        if X < 32 or not role:
            return 0
        return (X * 64 // S + 64 // S) * 4 if role == "_begin" else partials * 4

    def wgmma_norm_stage_fits(self, M: int, N: int, K: int, partials: int) -> bool:
        """Whether the gemm_wgmma kernel for x [M, K], W [N, K] can hold a norm's `partials` floats (NormStage)."""
        G, _ = self.wgmma_shape(N, K, M)
        X = self.wgmma_box_rows(M, G)
        return self.wgmma_stage_bytes(X, 1, "_finish", partials) <= self.wgmma_stage_room(X) if X >= 32 else True

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
            fits = self.finishes_norm(kernel, M, N, K) and (kernel != "wgmma" or self.wgmma_norm_stage_fits(M, N, K, x.partials.size))
            x, norm = (x.x, x.finish()) if fits else (x.materialise(self), NO_NORM)
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
        kernel = self.kernel(stream_file(name, R, suffix), f"{name}_r{R}_k{BK}_s{S}{suffix}")
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
        X = self.wgmma_box_rows(M, G)
        if M > X or (G, X) not in WGMMA_GEMM_STAGES:
            raise ValueError(f"gemm_wgmma: no kernel of {G} warpgroups a block takes {M} rows in {X}-row x boxes")
        if norm != NO_NORM and not self.wgmma_takes_norm(M, N, K):
            raise ValueError(f"gemm_wgmma: no kernel of {G} warpgroups in {X}-row x boxes takes a split norm")
        if norm[0] == "_finish" and not self.wgmma_norm_stage_fits(M, N, K, norm[1][0].size):
            raise ValueError(f"gemm_wgmma: {norm[1][0].size} partials of a split norm do not fit beside the ring")
        tiles = -(-N // (64 * G))
        if self.wgmma_persistent(tiles, G, X, S):
            name, grid = f"gemm_wgmma_tiles_w{G}_x{X}", (min(tiles, 2 * self.sm_count),)
        else:
            name, grid = f"gemm_wgmma_w{G}_x{X}_s{S}", (tiles, S)
        if norm[0] == "_finish" and X == 16 and M > FINISH_SCALAR_ROWS:
            norm = ("_finishq", norm[1])  # the partials as quads (kernels/gemm.cuh, NormPrefetch)
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

    def wgmma_box_rows(self, M: int, G: int) -> int:
        """gemm_wgmma's x rows a box (16, 32 or 64) for M rows at G warpgroups a block: forced (gemm_wgmma_xrows), else
        wgmma_xrows."""
        return self.gemm_wgmma_xrows or wgmma_xrows(M, G)

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
        kernel = self.kernel(WGMMA_FILES[norm[0]], name + norm[0])
        stages = stages or WGMMA_GEMM_STAGES[G, X]
        shared = stages * (64 * G + X) * 64 * 2 + 1024 + 16 * stages  # the ring (W and x stages), alignment, barriers
        if norm[0] and not name.startswith("gemm_wgmma_glu"):  # and a 32- or 64-row norm kernel's NormStage
            shared += self.wgmma_stage_bytes(X, grid[1] if len(grid) > 1 else 1, norm[0], norm[1][0].size if norm[0] == "_finish" else 0)
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
