"""Device probe: programmatic dependent launch (backends/driver.py, kernels/pdl.cuh) off and on, interleaved in one
process, on random weights (no download):
- every step's logits with PDL off and on (the same kernels and launch shapes: they must be the same bits);
- each step's captured graph launched 20 times back to back (GPU time, no host work between), context 512:
  plain decode and tree verify T = 4 / 16 / 64 at Llama-3.1-8B and SmolLM2-135M shapes, on the small model also
  the layered path (fused kernel off) and 128- / 512-row prefill chunks;
- the 8B qkv, O and down GEMMs alone as bench gemm times them (graphs of 20 calls, consecutive calls on other
  copies of the weights), % of copy bandwidth: the own kernels with PDL off and on, cuBLAS beside them at 32-64 rows;
  on the 8B model also every step with the own GEMMs for every product.
  python3 notes/scripts/pdl_probe.py [8b] [smol] [gemm]"""
import itertools
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import (card_name, copy_bandwidth, llama_8b_config, random_model_on_gpu, require_gpu,  # noqa: E402
                                smollm2_135m_config, time_captured, time_gpu)
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
which = sys.argv[1:] or ["gemm", "8b", "smol"]
bandwidth = copy_bandwidth()
print(f"{card_name()}: copy {bandwidth / 1e12:.2f} TB/s", flush=True)


def plan_for(model, T, context=512):
    rng = np.random.default_rng(T)
    cache = model.new_cache(-(-(context + 64) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, context + 64)
    parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
    return build_plan([StepItem.tree(table, context, Tree(rng.integers(0, 1000, T), parents))], 16), cache


def logits(model, plan, cache, pdl):
    model.backend.pdl = pdl
    model.backend.graphs.clear()
    model.backend.use_graphs = False
    eager = model.forward(plan, cache).host()
    model.backend.use_graphs = True
    return eager, model.forward(plan, cache).host()


def graph_ms(model, plan, cache):
    """ms per step of the plan's captured graph alone, 20 launches back to back."""
    be, captured = model.backend, []
    put = be.graphs.put
    be.graphs.put = lambda objects, extra, value: captured.append(value) or put(objects, extra, value)
    be.graphs.clear()
    model.forward(plan, cache).host()
    be.graphs.put = put
    graph = captured[-1].graph
    return time_gpu(lambda: [graph.launch(be.stream) for _ in range(20)], 2, 10) / 20 * 1e3


if "gemm" in which:
    be = CudaBackend()
    l2 = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    for name, (K, N) in {"8B qkv": (4096, 6144), "8B o": (4096, 4096), "8B down": (14336, 4096)}.items():
        weight = cp.asarray((np.random.default_rng(0).standard_normal((N, K), dtype=np.float32) / 30).astype(np.float16)).view(cp.uint16)
        copies = [weight] + [weight.copy() for _ in range(-(-2 * l2 // weight.nbytes) - 1)]
        turn = itertools.count()
        row = []
        for M in (1, 4, 16, 32, 64):
            x = cp.random.standard_normal((M, K), dtype=cp.float32).astype(cp.float16).view(cp.uint16)
            cells = []
            for gemm, pdl in [("own", False), ("own", True)] + ([("cublas", False)] if M > 16 else []):
                be.gemm, be.pdl = gemm, pdl
                t = time_captured(lambda: be.linear(x, copies[next(turn) % len(copies)]))
                cells.append(f"{gemm}{'+pdl' if pdl else ''} {N * K * 2 / t / bandwidth * 100:.0f}%")
            be.gemm = None
            row.append(f"M={M}: " + " ".join(cells))
        print(f"{name}: " + "  |  ".join(row), flush=True)
        del copies, weight

for name in [w for w in which if w in ("8b", "smol")]:
    cfg = llama_8b_config() if name == "8b" else smollm2_135m_config()
    be = CudaBackend()
    model = Model(cfg, random_model_on_gpu(cfg, be), be)
    print(f"{name}: {cfg.num_layers} layers", flush=True)
    sizes = (1, 4, 16, 64)
    plans = {T: plan_for(model, T) for T in sizes}
    for T, (plan, cache) in plans.items():
        off, on = logits(model, plan, cache, False), logits(model, plan, cache, True)
        same = [bool(np.array_equal(a, b, equal_nan=True)) for a, b in ((off[0], on[0]), (off[1], on[1]), (off[0], off[1]))]
        print(f"  T = {T}: same bits PDL on/off eager, replayed, off eager/replayed: {same}", flush=True)
    for label, fused in [("engine", None)] + ([("layered", 0)] if name == "smol" else []):
        be.fused_max_rows = fused
        for run in range(2):
            for pdl in (False, True):
                be.pdl = pdl
                line = "  ".join(f"T={T} {graph_ms(model, *plans[T]):.3f}" for T in sizes)
                print(f"  {label:8s} pdl={int(pdl)} run {run}: ms  {line}", flush=True)
    be.fused_max_rows = None
    if name == "8b":  # the own GEMMs for every product (gemm_wgmma for qkv, O and down at 17-64 rows too)
        for pdl in (False, True):
            be.pdl, be.gemm = pdl, "own"
            print(f"  own GEMMs pdl={int(pdl)}: ms  " + "  ".join(f"T={T} {graph_ms(model, *plans[T]):.3f}" for T in sizes), flush=True)
        be.gemm = None
    del model, plans
    cp.get_default_memory_pool().free_all_blocks()
