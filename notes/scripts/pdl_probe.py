"""Device probe: programmatic dependent launch (backends/driver.py, kernels/pdl.cuh) on and off, interleaved in one
process, on random models with Llama-3.1-8B and SmolLM2-135M shapes (no download), context 512:
- every step's logits with PDL on and off (the same kernels and launch shapes: they must be the same bits);
- the step's captured graph launched 20 times back to back, plain decode and tree verify, on the small model also the layered path
  (fused kernel off) and 128- / 512-row prefill chunks; "late": kernels built without the early trigger (the
  next kernel launches when this one ends, PDL_NO_EARLY_TRIGGER).
  python3 notes/scripts/pdl_probe.py [8b] [smol]"""
import sys

import numpy as np

sys.path.insert(0, ".")
import minispec.backends.cuda_backend as cb  # noqa: E402
from minispec.bench_gpu import card_name, llama_8b_config, random_model_on_gpu, require_gpu, smollm2_135m_config, time_gpu  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

cp = require_gpu()
which = [a for a in sys.argv[1:]] or ["8b", "smol"]
print(card_name(), flush=True)
source = cb.kernel_source


def late_source(name):
    return ("#define PDL_NO_EARLY_TRIGGER\n" if not name.startswith("fused") else "") + source(name)


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


def graph_times(model, sizes, context=512):
    """ms per step of the step's captured graph alone, 20 launches back to back (no host work between)."""
    be, out, captured = model.backend, {}, []
    put = be.graphs.put
    be.graphs.put = lambda objects, extra, value: captured.append(value) or put(objects, extra, value)
    for T in sizes:
        plan, cache = plan_for(model, T, context)
        model.forward(plan, cache).host()  # captures
        graph = captured[-1].graph
        out[T] = time_gpu(lambda: [graph.launch(be.stream) for _ in range(20)], 2, 10) / 20 * 1e3
    be.graphs.put = put
    return out


def prefill_time(model, rows):
    """ms of a rows-token prefill chunk's captured graph, as graph_times."""
    be, captured = model.backend, []
    put = be.graphs.put
    be.graphs.put = lambda objects, extra, value: captured.append(value) or put(objects, extra, value)
    rng = np.random.default_rng(rows)
    cache = model.new_cache(-(-(rows + 16) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, rows)
    model.forward(build_plan([StepItem.chunk(table, 0, rng.integers(0, 1000, rows))], 16), cache).host()
    be.graphs.put = put
    graph = captured[-1].graph
    return time_gpu(lambda: [graph.launch(be.stream) for _ in range(20)], 2, 10) / 20 * 1e3


def differ(a, b):
    bad = np.argwhere(~((a == b) | (np.isnan(a) & np.isnan(b))))
    return f"{len(bad)}" + (f" (first at {tuple(bad[0])}: {a[tuple(bad[0])]} vs {b[tuple(bad[0])]})" if len(bad) else "")


for name in which:
    cfg = llama_8b_config() if name == "8b" else smollm2_135m_config()
    backends = {}
    backends["early"] = cb.CudaBackend()
    weights = random_model_on_gpu(cfg, backends["early"])
    cb.kernel_source = late_source
    backends["late"] = cb.CudaBackend()  # its own modules, built from the patched source now
    for file, kernel in (("elementwise.cu", "embedding"), ("gemm.cu", "gemm_bf16"), ("attention.cu", "attention_merge"),
                         ("sampling.cu", "argmax_merge"), ("kv_cache.cu", "gather_slots")):
        backends["late"].kernel(file, kernel)
    cb.kernel_source = source
    models = {k: Model(cfg, weights, be) for k, be in backends.items()}
    print(f"{name}: {cfg.num_layers} layers", flush=True)
    for T in (1, 4, 16, 64):
        plan, cache = plan_for(models["early"], T)
        off = logits(models["early"], plan, cache, False)
        early = logits(models["early"], plan, cache, True)
        late = logits(models["late"], plan, cache, True)
        print(f"  T = {T}: off eager vs replayed {differ(*off)}; PDL early eager / replayed vs off {differ(early[0], off[0])} / "
              f"{differ(early[1], off[1])}; late {differ(late[0], off[0])} / {differ(late[1], off[1])}", flush=True)
    modes = [("engine", None)] + ([("layered", 0)] if name == "smol" else [])
    variants = [("off", "early", False), ("early", "early", True), ("late", "late", True)]
    for label, fused in modes:
        for run in range(2):
            for vname, key, pdl in variants:
                model, be = models[key], backends[key]
                be.fused_max_rows, be.pdl = fused, pdl
                be.graphs.clear()
                t = graph_times(model, (1, 4, 16, 64))
                line = "  ".join(f"T={T} {s:.3f}" for T, s in t.items())
                if name == "smol" and label == "engine":
                    line += "  " + "  ".join(f"prefill {r} {prefill_time(model, r):.3f}" for r in (128, 512))
                print(f"  {label:8s} {vname:5s} run {run}: ms  {line}", flush=True)
    del models, weights, backends
    cp.get_default_memory_pool().free_all_blocks()
