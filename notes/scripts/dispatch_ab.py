"""Device probe: GEMM dispatch variants inside the 8B layer-by-layer step (random weights, context 512), by turns in
one process: plain decode and tree verify steps (bench e2e's step_times), decode one step ahead, against the
weight-bandwidth floor, and a decode step of 4 sequences (B=4, against the plain step). Each variant overrides the
backend's rules on the instance; every timing captures its graphs anew (step_times makes a new cache, which keys
them).

  rule       the committed rules
  silu       gate/up up to 16 rows as gemm_stream, then silu_mul (before gemm_stream_glu)
  stream2R   8B qkv and O up to R rows (default 16) on gemm_stream in clusters of 2 (64 / 96 blocks of 512 KB)
             instead of gemm_wgmma in 16-row boxes
  os1        8B O in 64 blocks of 512 KB at every row count (the rule before experiment/o-clusters, which splits
             it in clusters of 2 up to 32 rows)
  o2wide     8B O in clusters of 2 (128 blocks of 256 KB) at every row count, 33-64 rows included
  gu_cublas  8B gate/up at 17-64 rows on cuBLAS, then silu_mul, instead of gemm_wgmma_glu
  o_cublas / qkv_cublas  8B O / qkv at 33-64 rows on cuBLAS instead of gemm_wgmma (at 64 rows alone cuBLAS is 1.7 /
             0.7 µs faster on an H200, notes/bench_gemm_h200_stop53.log)
  head_stream  8B LM head at 17-64 rows on gemm_stream instead of gemm_wgmma (two warpgroups)
  rings2     one-warpgroup gemm_wgmma rings of 10 / 9 / 6 stages (16 / 32 / 64-row x boxes), two blocks an SM, so
             that a GEMM's blocks copy their first weights beside the kernel before it
  down1      8B down at 33-64 rows in 64 blocks of 1.8 MB (no split-K) instead of clusters of 2 (128 blocks): more SMs
             left to the kernels around it (stop 43: the stream-K gated product lost its lead alone to that overlap)
  down1all   the same at every row count
  notiles    the LM heads at 17-64 rows on gemm_wgmma of a block a tile (before gemm_wgmma_tiles, persistent blocks)
  notrig     the tensor-core attention never triggers the next launch (before stop 41: attention_trigger_first
             lets it trigger first thing where its grid fits one wave, so the merge's and then the O GEMM's blocks
             are placed during attention; stop 41's A/B, atrig, compiled that as an edit of attention.cu)
  promoN     gemm_wgmma's TMA boxes with L2 promotion N bytes (0, 64, 128, 256) at every row count instead of the
             rule (gemm_promotion: 128 up to 32 rows at one warpgroup a block, else 256; 256 everywhere before
             stop 44)
  wpN / xpN  gemm_wgmma's weight maps (wp) or x maps (xp) alone made with L2 promotion N bytes, the other kind's by
             the rule (gemm_promotion); where the 64-row steps' preference for 256 comes from (stop 44: alone, the
             64-row products preferred 128; in the T = 64 step 256 won)
  g2p128     stop 44's promotion rule: 128 bytes up to 32 rows for blocks of two or four warpgroups too (gate/up and
             the LM heads at 17-32 rows; 256 for them since stop 45)
  evict      gemm_wgmma's weight boxes loaded with an L2 evict-first cache policy (weights are read once a step; the
             activations, x and K/V pages then keep more of L2)
  nomerge    TIMING ONLY, wrong outputs: tensor-core attention's split merge not launched; the most a merge inside
             the attention kernel (its splits a cluster) could save
  nocmerge   the mma.sync attention's key shares merged by attention_merge, a launch of its own (before stop 46:
             attention_merge_cluster merges them in the kernel, its shares a cluster)
  splitN     tensor-core attention in N key shares at every step (attention_splits; 1: no merge)
  mergeWxR   attention_merge with W warps a row and R rows a block (merge_shape; the rule gives T = 64 at 512 keys
             2 warps a row, 2 rows a block: 1024 blocks)
  w4         tensor-core attention on the 4-warp mma.sync kernel at every step (64-row blocks, whose shares merge
             inside a cluster of up to 8: no merge launch), where the rule takes the 8-warp wgmma one for trees
  nonorm     TIMING ONLY, wrong outputs: no add_rmsnorm launch (its outputs left as allocated); the most an RMSNorm
             folded into the GEMM after it could save (stop 47: 5.6% at T = 1; inside the qkv GEMM it saved
             nothing, branch experiment/norm-in-gemm, notes/norm_in_gemm_h200_stop47.log)
  norope     TIMING ONLY, wrong outputs: no rope_write_kv launch (q left as allocated, K/V not written); the
             most RoPE and the KV write folded into the qkv GEMM's epilogue could save
  emptynorm  TIMING ONLY, wrong outputs: add_rmsnorm launched as now but doing nothing after pdl_begin: what a norm
             launch costs the step beyond its work (nonorm: beyond no launch at all)
  normpre    RACES (stop 61): add_rmsnorm loads its residual rows before pdl_wait (from L2, __ldcg): a kernel two or
             more launches back wrote them (the norm before), and the GEMM ahead triggers only after its own wait;
             but ptxas then also issues half of x's const __restrict__ loads above the wait (the logits change from
             run to run, notes/norm_residual_early_h200_stop61.log): its timings are not a correct kernel's
  normNNN    add_rmsnorm in blocks of NNN threads (512: 8 values a thread held, instead of 1024 threads holding 4)
  normvec    add_rmsnorm4 (defined here): a row in blocks of C / 16 threads, each holding 4 float4 of it (16-byte
             loads and stores, 8 warps to sum at C = 4096)
  normoff    the RMSNorms after O and down as launches of their own (add_rmsnorm; before stop 47, norm_split has
             those products begin the norm and the products after them finish it)
  normon     the RMSNorm split wherever the GEMM kernels have it (gemm_norm True: up to 64 rows), not only up to
             NORM_SPLIT_ROWS (32 since stop 63)
  splitrowsN the RMSNorm split up to N rows (NORM_SPLIT_ROWS; 4 before stop 63)
  scalarrowsN  gemm_wgmma's 16-row finishing kernels take the partials one float a thread up to N rows
             (FINISH_SCALAR_ROWS; quads above, _finishq; scalarrows16: never quads, as before stop 64)
  onepart    TIMING ONLY, wrong outputs: the products that finish a split norm read one partial sum a row, not one
             per block of the product before (the most a norm whose partials are summed before the product after
             could save there)
  nowg       the mma.sync attention kernel where the rule takes the wgmma one (T = 32, 64 at 512 keys), so that its
             shares merge in a cluster (attention_merge_cluster) instead of in attention_merge's launch (stop 47:
             T = 64 5.169 -> 5.457 ms, T = 32 4.759 -> 4.839: the merge's launch costs less than the kernel gains)
  basegemm   gemm.cu compiled from the text in $BASE_GEMM (kernel_source's inlined text of another build, whose
             kernels take the same arguments or a prefix of them): the kernels alone A/B'd under the same rules
  A+B        both

    [TREES=8,16,...] PYTHONPATH=$PWD python3 notes/scripts/dispatch_ab.py [rounds] [variant,...]
"""
import os
import sys

import numpy as np

from minispec.backends import cuda_backend, cuda_gemm
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import (backend_with_edit, card_name, copy_bandwidth, decode_ahead_time, in_turn, llama_8b_config, random_model_on_gpu,
                                require_gpu, step_times, swap, weight_bytes)
from minispec.model import Model

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["rule", "silu"]
TREES = tuple(int(t) for t in os.environ.get("TREES", "16,32,64").split(","))  # the tree steps timed
be = CudaBackend()
cfg = llama_8b_config()
cp.random.seed(0)
model = Model(cfg, random_model_on_gpu(cfg, be), be)
O, QKV = (4096, 4096), (6144, 4096)  # (N, K)
RULES = ("glu_kernel", "wgmma_gemm_fits", "stream_cluster_size", "wgmma_cluster_size", "own_gemm_serves", "gemm_promotion",
         "attention_merge_cluster")


SMALL_RINGS = {(1, 16): 10, (1, 32): 9, (1, 64): 6}  # <= 111 KB of shared memory: two blocks an SM
COMMITTED_RINGS = dict(cuda_gemm.WGMMA_GEMM_STAGES)
# gemm_wgmma's files (plain, and the split norm's since stop 64: cuda_gemm.WGMMA_FILES), a kernel of each to compile them by
WGMMA_FILES = {"gemm_wgmma.cu": "gemm_wgmma_w1_x16_s1", "gemm_wgmma_begin.cu": "gemm_wgmma_w1_x16_s1_begin",
               "gemm_wgmma_finish.cu": "gemm_wgmma_w1_x16_s1_finish"}
assert set(WGMMA_FILES) == set(cuda_gemm.WGMMA_FILES.values())


def wgmma_modules(pairs: list) -> dict:
    """{file: module} of gemm_wgmma's files compiled with each (old, new) text of `pairs` replaced (none: as committed);
    every `old` must occur in one file at least. All three files, so that a ring depth or a load policy is the same in
    every product (the launcher sizes each kernel's shared memory from WGMMA_GEMM_STAGES)."""
    if not pairs:
        return {file: (be.kernel(file, kernel), be.modules[(file, None)])[1] for file, kernel in WGMMA_FILES.items()}
    found = dict.fromkeys([old for old, _ in pairs], 0)

    def edit(text):
        for old, new in pairs:
            found[old] += text.count(old)
            text = text.replace(old, new)
        return text
    built = {file: backend_with_edit(file, kernel, edit).modules[(file, None)] for file, kernel in WGMMA_FILES.items()}
    assert all(found.values()), [old for old, n in found.items() if not n]
    return built


def swap_wgmma(built: dict) -> None:
    """These gemm_wgmma modules (wgmma_modules) in `be`, its other files untouched."""
    for file, module in built.items():
        be.modules[(file, None)] = module
        for name in [k for k in be.functions if k[0] == file]:
            del be.functions[name]


modules = {tuple(sorted(COMMITTED_RINGS.items())): wgmma_modules([])}  # the committed build


def use_rings(rings: dict) -> None:
    """gemm_wgmma's files compiled with these one-warpgroup ring depths, swapped into `be`."""
    key = tuple(sorted(rings.items()))
    if key not in modules:
        modules[key] = wgmma_modules([(f"GEMM_WGMMA_CLUSTERS({G}, {X}, {COMMITTED_RINGS[G, X]}, ", f"GEMM_WGMMA_CLUSTERS({G}, {X}, {stages}, ")
                                      for (G, X), stages in rings.items() if stages != COMMITTED_RINGS[G, X]])
    swap_wgmma(modules[key])
    cuda_gemm.WGMMA_GEMM_STAGES.update(rings)


EVICT_FIRST = '''
__device__ __forceinline__ void tma_load_once(void* shared, const TensorMap* map, int c0, int c1, unsigned long long* bar) {
    unsigned long long policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3}], [%4], %5;"
                 ::"r"((unsigned)__cvta_generic_to_shared(shared)), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1),
                 "r"((unsigned)__cvta_generic_to_shared(bar)), "l"(policy) : "memory");
}
'''
evict_module = {}


def use_evict(on: bool) -> None:
    """gemm_wgmma's files with their weight boxes' TMA loads under an evict-first L2 policy (on), or as committed,
    swapped into `be`."""
    if on not in evict_module:
        ring = "template <int ROWS, int XROWS, int STAGES>\nstruct WgmmaRing {"
        evict_module[on] = wgmma_modules([(ring, EVICT_FIRST + ring),
                                          ("tma_load(stage + b * 64 * BK, &w_map,", "tma_load_once(stage + b * 64 * BK, &w_map,"),
                                          ("} else tma_load(stage, &w_map,", "} else tma_load_once(stage, &w_map,"),
                                          ("tma_load(ring.expect(i), &w_map,", "tma_load_once(ring.expect(i), &w_map,")]) if on \
            else modules[tuple(sorted(COMMITTED_RINGS.items()))]
    swap_wgmma(evict_module[on])


base_module = {}


def use_base_gemm() -> None:
    """$BASE_GEMM's text (a build's inlined gemm.cu, which before stop 49 held the gemm_wgmma kernels too) compiled and
    swapped into `be` for the GEMM files (extra trailing launch arguments are ignored)."""
    if not base_module:
        text = open(os.environ["BASE_GEMM"]).read()
        base_module[0] = backend_with_edit("gemm_wgmma.cu", "gemm_wgmma_w1_x16_s1", lambda _: text).modules[("gemm_wgmma.cu", None)]
    for file in ("gemm.cu", "gemm_fused.cu", "gemm_wgmma.cu", "gemm_wgmma_begin.cu", "gemm_wgmma_finish.cu"):
        be.modules[(file, None)] = base_module[0]
        for name in [k for k in be.functions if k[0] == file]:
            del be.functions[name]


swizzled_rows = cuda_backend.tensor_map.swizzled_rows
WEIGHTS = {w.data.ptr for layer in model.weights.layers for w in (layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down)}
WEIGHTS.add(model.weights.lm_head.data.ptr)


def maps_promoted(kind: str | None, promotion: int = 0) -> None:
    """gemm_wgmma's weight ("w") or x ("x") maps made with `promotion` bytes whatever the rule says (None: as the
    rule); the backend's cached maps are dropped, so that no map of one variant serves another."""
    def made(array, rows, cols, box_rows, *rest, **options):
        weight, x = array.data.ptr in WEIGHTS, array.data.ptr not in WEIGHTS and rows <= 64  # (not attention's K/V)
        if (weight if kind == "w" else x) and "promotion" in options:
            options["promotion"] = promotion
        return swizzled_rows(array, rows, cols, box_rows, *rest, **options)
    cuda_backend.tensor_map.swizzled_rows = made if kind else swizzled_rows
    be.tensor_maps = type(be.tensor_maps)()


FINISH = cuda_gemm.NormedRows.finish
SPLIT_ROWS = cuda_gemm.NORM_SPLIT_ROWS
SCALAR_ROWS = cuda_gemm.FINISH_SCALAR_ROWS

ADD_RMSNORM4 = '''
extern "C" __global__ void add_rmsnorm4(const float* __restrict__ x, float* __restrict__ residual, int has_residual,
                                        const float* __restrict__ weight, store_t* __restrict__ out, int C, float eps) {
    pdl_trigger();
    const long long base = (long long)blockIdx.x * C;
    float4 w[4], h[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = reinterpret_cast<const float4*>(weight)[threadIdx.x + k * blockDim.x];
    pdl_wait();
    const float4* x4 = reinterpret_cast<const float4*>(x + base);
    float4* r4 = reinterpret_cast<float4*>(residual + base);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        const float4 a = x4[i], b = has_residual ? r4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        h[k] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    }
    float square_sum = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        r4[threadIdx.x + k * blockDim.x] = h[k];
        square_sum += h[k].x * h[k].x + h[k].y * h[k].y + h[k].z * h[k].z + h[k].w * h[k].w;
    }
    const float scale = rsqrtf(block_sum(square_sum) / C + eps);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const long long c = base + 4 * (threadIdx.x + k * blockDim.x);
        out[c] = to_store(h[k].x * scale * w[k].x), out[c + 1] = to_store(h[k].y * scale * w[k].y);
        out[c + 2] = to_store(h[k].z * scale * w[k].z), out[c + 3] = to_store(h[k].w * scale * w[k].w);
    }
}
'''
be.kernel("elementwise.cu", "add_rmsnorm")
elementwise_modules = {"rule": be.modules[("elementwise.cu", None)]}


def use_elementwise(name: str, edit=None) -> None:
    """elementwise.cu compiled from edit(its text) (once, kept under `name`), swapped into `be`; "rule": as committed."""
    if name not in elementwise_modules:
        elementwise_modules[name] = backend_with_edit("elementwise.cu", "add_rmsnorm", edit).modules[("elementwise.cu", None)]
    be.modules[("elementwise.cu", None)] = elementwise_modules[name]
    for key in [k for k in be.functions if k[0] == "elementwise.cu"]:
        del be.functions[key]


def norm_launch(kernel: str, threads) -> None:
    """be.add_rmsnorm's launches redirected to `kernel` of elementwise.cu (the same arguments), in blocks of
    threads(C) threads."""
    norm, target = be.kernel("elementwise.cu", "add_rmsnorm"), be.kernel("elementwise.cu", kernel)
    be.launch = lambda function, grid, block, args, *rest: (
        CudaBackend.launch(be, target, grid, (threads(int(args[5])),), args, *rest) if function is norm
        else CudaBackend.launch(be, function, grid, block, args, *rest))


def apply(variant: str) -> None:
    for name in RULES:
        be.__dict__.pop(name, None)
    use_rings(COMMITTED_RINGS)
    be.attention_early_trigger = None
    be.attention_splits = None
    be.attention_cluster_merge = None
    be.attention_wgmma = None
    be.attention_warps = None
    be.gemm_norm = None
    cuda_gemm.NORM_SPLIT_ROWS = SPLIT_ROWS
    cuda_gemm.FINISH_SCALAR_ROWS = SCALAR_ROWS
    cuda_gemm.NormedRows.finish = FINISH
    use_elementwise("rule")
    for name in ("launch", "add_rmsnorm", "rope_write_kv", "merge_shape"):
        be.__dict__.pop(name, None)
    be.gemm_wgmma_tiles = None
    be.gemm_l2_promotion = None
    maps_promoted(None)
    for part in variant.split("+"):
        if part == "silu":
            be.glu_kernel = lambda M, N2, K: None if M <= 16 else CudaBackend.glu_kernel(be, M, N2, K)
        elif part.startswith("stream2"):
            rows = int(part[7:] or 16)
            be.wgmma_gemm_fits = lambda M, N, K, rows=rows: (
                False if (N, K) in (O, QKV) and M <= rows else CudaBackend.wgmma_gemm_fits(be, M, N, K))
            # gemm_stream's tiles for O and qkv at up to 16 rows (one row tile): 32 and 48
            be.stream_cluster_size = lambda tiles, K, BK: (
                2 if K == 4096 and tiles in (32, 48) else CudaBackend.stream_cluster_size(be, tiles, K, BK))
        elif part == "os1":  # 8B O in one block a tile at every row count (the rule before experiment/o-clusters)
            be.wgmma_cluster_size = lambda tiles, K, G=1, M=64: (
                1 if (tiles, K, G) == (64, 4096, 1) else CudaBackend.wgmma_cluster_size(be, tiles, K, G, M))
        elif part == "o2wide":  # 8B O in clusters of 2 at every row count
            be.wgmma_cluster_size = lambda tiles, K, G=1, M=64: (
                2 if (tiles, K, G) == (64, 4096, 1) else CudaBackend.wgmma_cluster_size(be, tiles, K, G, M))
        elif part == "gu_cublas":  # the 8B gate/up at 17-64 rows on cuBLAS, then silu_mul
            serves = be.own_gemm_serves
            be.own_gemm_serves = lambda M, N, K, serves=serves: False if (N, K) == (28672, 4096) and M > 16 else serves(M, N, K)
        elif part in ("o_cublas", "qkv_cublas"):  # the 8B O / qkv at 33-64 rows on cuBLAS (faster alone there, bench gemm)
            shape, serves = O if part == "o_cublas" else QKV, be.own_gemm_serves
            be.own_gemm_serves = lambda M, N, K, serves=serves, shape=shape: False if (N, K) == shape and M > 32 else serves(M, N, K)
        elif part == "head_stream":  # the 8B LM head at 17-64 rows on gemm_stream
            fits, serves = be.wgmma_gemm_fits, be.own_gemm_serves
            be.wgmma_gemm_fits = lambda M, N, K, fits=fits: False if N == 128256 and M > 16 else fits(M, N, K)
            be.own_gemm_serves = lambda M, N, K, serves=serves: True if N == 128256 else serves(M, N, K)
        elif part in ("down1", "down1all"):  # 8B down [4096, 14336] without split-K
            rows = 32 if part == "down1" else 0
            be.wgmma_cluster_size = lambda tiles, K, G=1, M=64, rows=rows: (
                1 if (tiles, K, G) == (64, 14336, 1) and M > rows else CudaBackend.wgmma_cluster_size(be, tiles, K, G, M))
        elif part == "notiles":
            be.gemm_wgmma_tiles = False
        elif part[:2] in ("wp", "xp") and part[2:].isdigit():
            maps_promoted(part[0], int(part[2:]))
        elif part == "evict":
            use_evict(True)
        elif part == "g2p128":  # stop 44's rule: 128 up to 32 rows whatever the warpgroups (gate/up, LM head at 17-32)
            be.gemm_promotion = lambda M, G=1: 128 if M <= 32 else 256
        elif part.startswith("promo"):
            be.gemm_l2_promotion = int(part[5:])
        elif part.startswith("merge") and "x" in part:
            W, R = (int(v) for v in part[5:].split("x"))
            be.merge_shape = lambda rows, splits, W=W, R=R: (W, R)
        elif part == "nomerge":
            merge = be.kernel("attention.cu", "attention_merge")
            be.launch = lambda kernel, *args, **kw: None if kernel is merge else CudaBackend.launch(be, kernel, *args, **kw)
        elif part == "nonorm":
            def add_rmsnorm(x, residual, weight, eps):
                return cp.empty(x.shape, dtype=be.store_dtype), x if residual is None else residual
            be.add_rmsnorm = add_rmsnorm
        elif part == "norope":
            def rope_write_kv(qkv, plan, inv_freq, k_cache, v_cache, H, Hkv, D):
                return cp.empty((len(qkv), H, D), dtype=cp.float32)
            be.rope_write_kv = rope_write_kv
        elif part == "emptynorm":
            use_elementwise(part, lambda text: swap(text, "    pdl_trigger();\n    long long base = (long long)blockIdx.x * C;",
                                                    "    pdl_begin();\n    return;\n    long long base = (long long)blockIdx.x * C;"))
        elif part == "normpre":
            def edit(text):
                text = swap(text, "float held[NORM_HELD], scaled_by[NORM_HELD];", "float held[NORM_HELD], scaled_by[NORM_HELD], before[NORM_HELD];")
                text = swap(text, "            scaled_by[k] = c < C ? weight[c] : 0.0f;\n",
                            "            scaled_by[k] = c < C ? weight[c] : 0.0f;\n            before[k] = c < C && has_residual ? __ldcg(residual + base + c) : 0.0f;\n")
                return swap(text, "held[k] = c < C ? x[base + c] + (has_residual ? residual[base + c] : 0.0f) : 0.0f;",
                            "held[k] = c < C ? x[base + c] + before[k] : 0.0f;")
            use_elementwise(part, edit)
        elif part.startswith("norm") and part[4:].isdigit():
            norm_launch("add_rmsnorm", lambda C, threads=int(part[4:]): threads)
        elif part == "normvec":
            use_elementwise(part, lambda text: text + ADD_RMSNORM4)
            norm_launch("add_rmsnorm4", lambda C: C // 16)
        elif part == "normoff":
            be.gemm_norm = False
        elif part == "normon":
            be.gemm_norm = True
        elif part.startswith("splitrows"):
            cuda_gemm.NORM_SPLIT_ROWS = int(part[9:])
        elif part.startswith("scalarrows"):
            cuda_gemm.FINISH_SCALAR_ROWS = int(part[10:])
        elif part == "onepart":
            cuda_gemm.NormedRows.finish = lambda rows: ("_finish", (rows.partials, np.int32(1), np.float32(rows.eps)))
        elif part == "nowg":
            be.attention_wgmma = False
        elif part == "w4":
            be.attention_warps = 4
        elif part == "nocmerge":
            be.attention_cluster_merge = False
        elif part.startswith("split") and part[5:].isdigit():
            be.attention_splits = int(part[5:])
        elif part == "notrig":
            be.attention_early_trigger = False
        elif part == "basegemm":
            use_base_gemm()
        elif part == "rings2":  # one-warpgroup rings small enough for two blocks an SM
            use_rings({**COMMITTED_RINGS, **SMALL_RINGS})
        elif part != "rule":
            raise ValueError(part)


def batch_decode_time(batch: int, context: int) -> float:
    """Seconds per plain decode step of `batch` sequences at `context` keys each (a graph replayed, as step_times)."""
    from minispec.bench_gpu import time_gpu
    from minispec.step import StepItem, build_plan
    from minispec.tree import Tree

    cache = model.new_cache(batch * (-(-(context + 64) // 16) + 1), 16)
    items = []
    for b in range(batch):
        table = []
        cache.prepare(table, 0, context + 64)
        items.append(StepItem.tree(table, context, Tree(np.array([b + 1]), [-1])))
    plan = build_plan(items, 16)
    return time_gpu(lambda: model.forward(plan, cache).argmax(), 2, 10)


def main():
    floor = weight_bytes(model.weights) / copy_bandwidth()
    print(f"# dispatch_ab on {card_name()}: 8B shapes, context 512, weight floor {floor * 1e3:.3f} ms; ms a step", flush=True)
    for variant in [v for v in VARIANTS if v in ("normvec", "normpre")]:  # the probe kernel against the committed one on random rows (sums in another order)
        x, res = cp.random.standard_normal((64, 4096), dtype=cp.float32), cp.random.standard_normal((64, 4096), dtype=cp.float32)
        weight = cp.random.standard_normal(4096, dtype=cp.float32)
        apply("rule")
        ref = [a.astype(cp.float32) for a in be.add_rmsnorm(x, res.copy(), weight, 1e-5)]
        apply(variant)
        got = [a.astype(cp.float32) for a in be.add_rmsnorm(x, res.copy(), weight, 1e-5)]
        apply("rule")
        print(f"# {variant} against add_rmsnorm: out max |diff| {float(abs(got[0] - ref[0]).max()):.3g} (max |out| "
              f"{float(abs(ref[0]).max()):.3g}), residual equal {bool((got[1] == ref[1]).all())}", flush=True)
    results = {}
    for r in range(ROUNDS):
        for variant in in_turn(VARIANTS, r):
            apply(variant)
            steps = step_times(model, 512, tree_sizes=TREES)
            steps["ahead"] = decode_ahead_time(model, 512)
            steps["B4"] = batch_decode_time(4, 512)
            for key, t in steps.items():
                results.setdefault((variant, key), []).append(t)
            print(f"round {r} {variant:16s} " + "  ".join(f"{k}: {t * 1e3:.3f}" for k, t in steps.items()), flush=True)
            apply("rule")
    print("medians: ms (x floor for T = 1 and ahead, x plain for trees)")
    for variant in VARIANTS:
        med = {key: float(np.median(results[(variant, key)])) for key in (1, *TREES, "ahead", "B4")}
        cells = [f"T=1 {med[1] * 1e3:.3f} ({med[1] / floor:.3f}x)"]
        cells += [f"T={T} {med[T] * 1e3:.3f} ({med[T] / med[1]:.3f}x)" for T in TREES]
        cells.append(f"ahead {med['ahead'] * 1e3:.3f} ({med['ahead'] / floor:.3f}x)")
        cells.append(f"B=4 {med['B4'] * 1e3:.3f} ({med['B4'] / med[1]:.3f}x)")
        print(f"{variant:16s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
