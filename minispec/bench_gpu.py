"""GPU benchmarks: `minispec bench gemm | attention | e2e`. Every figure is printed beside a limit or a
peer measured in the same run (copy bandwidth, cuBLAS, PyTorch SDPA, transformers), with the card named."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from .errors import MinispecError


def require_gpu():
    from .backends import cuda_available

    if not cuda_available():
        raise MinispecError("GPU benchmarks need a CUDA GPU and CuPy: use `minispec bench spec --device cpu` on a CPU")
    import cupy

    return cupy


def time_gpu(fn, warmup: int = 3, repeat: int = 20) -> float:
    """Median seconds of fn() measured with CUDA events."""
    cp = require_gpu()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def captured_graph(fn, reps: int = 20):
    """`reps` calls of fn() captured into one CUDA graph on the compute stream: (graph, stream, the pool blocks its
    launches use, which must outlive it)."""
    cp = require_gpu()
    from .backends.cuda_backend import compute_stream

    stream = compute_stream(cp)
    fn()  # compile, and leave pool blocks of the right sizes
    keep, previous, pool = [], cp.cuda.get_allocator(), cp.get_default_memory_pool()
    cp.cuda.set_allocator(lambda size: keep.append(pool.malloc(size)) or keep[-1])
    try:
        stream.begin_capture()
        for _ in range(reps):
            fn()
        graph = stream.end_capture()
    finally:
        cp.cuda.set_allocator(previous)
    return graph, stream, keep


def time_captured(fn, reps: int = 20) -> float:
    """Seconds per fn() on the GPU alone: `reps` calls captured into one CUDA graph, the graph timed."""
    graph, stream, _kept = captured_graph(fn, reps)
    return time_gpu(lambda: graph.launch(stream), 2, 10) / reps


def weight_copies(cp, N: int, K: int) -> list:
    """Copies of one random [N, K] weight (fp16 bits, bf16-sized), at least twice the L2 in all, so that calls
    taking them in turn read their weights from memory, as a step's layers do."""
    l2_bytes = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    weight = cp.asarray((np.random.default_rng(0).standard_normal((N, K), dtype=np.float32) / 30).astype(np.float16)).view(cp.uint16)
    return [weight] + [weight.copy() for _ in range(-(-2 * l2_bytes // weight.nbytes) - 1)]


def time_async(fn, reps: int = 20) -> float:
    """Seconds per fn() for a peer that cannot be captured: `reps` back-to-back asynchronous calls."""
    return time_gpu(lambda: [fn() for _ in range(reps)], 1, 5) / reps


def time_torch(torch, fn, reps: int = 20) -> float:
    """Seconds per fn() for a PyTorch peer, with PyTorch's own events on its own stream."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(5):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / reps)
    return float(np.median(times))


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, counting bytes read + written (bytes/s)."""
    cp = require_gpu()
    source = cp.empty(1 << 30, dtype=cp.uint16)
    destination = cp.empty_like(source)
    seconds = time_gpu(lambda: destination.__setitem__(Ellipsis, source), 2, 10)
    return 2 * (1 << 31) / seconds  # both buffers go back to the pool on return


def backend_with_edit(file: str, kernel: str, edit, head_dim: int | None = None):
    """A bf16 CudaBackend whose kernels/`file` (holding `kernel`; for the head dim given, a file of PER_HEAD_DIM)
    is compiled from edit(its text): A/B probes of a kernel change run by turns in one process
    (notes/scripts/gemm_trigger_ab.py); each backend keeps its own modules, so the file is read, edited and
    compiled here, once."""
    from .backends import cuda_backend

    original = cuda_backend.kernel_source
    cuda_backend.kernel_source = lambda name: edit(original(name)) if name == file else original(name)
    try:
        backend = cuda_backend.CudaBackend("bfloat16")
        backend.kernel(file, kernel, head_dim)
    finally:
        cuda_backend.kernel_source = original
    return backend


def swap(text: str, old: str, new: str) -> str:
    """text with its one occurrence of `old` replaced (a kernel edit for backend_with_edit: an anchor that moved
    or repeats fails here, not as a probe of the wrong code)."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def in_turn(names: list, round_: int) -> list:
    """The variants of an A/B probe in round `round_`'s order, rotated every round: a variant always timed first
    had been 1-3 µs faster on identical code (an A/A control of tree attention's, notes/attention_ab_h100_stop35.log)."""
    k = round_ % len(names)
    return names[k:] + names[:k]


def random_bf16(cp, shape, scale: float = 1.0):
    """bf16 bits (uint16) of normal values times `scale`, made on the GPU: the top half of each float32."""
    return ((cp.random.standard_normal(shape, dtype=cp.float32) * np.float32(scale)).view(cp.uint32) >> 16).astype(cp.uint16)


def tensor_rate(backend) -> float:
    """Dense bf16 products with fp32 sums on the tensor cores, measured (flops/s): cuBLAS on an 8192-cube, captured
    (CuPy's fp16 matmul where the backend found no cuBLAS: the same rate on Hopper). Attention's two products are
    this arithmetic, so flops / this rate is the time no kernel of them beats on the card."""
    cp, n = backend.cp, 8192
    if backend.cublas is None:
        x16 = cp.random.standard_normal((n, n), dtype=cp.float32).astype(cp.float16)
        return 2 * n**3 / time_async(lambda: cp.matmul(x16, x16.T), 5)
    x, w = random_bf16(cp, (n, n)), random_bf16(cp, (n, n))
    previous, backend.gemm = backend.gemm, "cublas"
    try:
        return 2 * n**3 / time_captured(lambda: backend.linear(x, w), 5)
    finally:
        backend.gemm = previous


def card_name() -> str:
    cp = require_gpu()
    return cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()


# ----------------------------------------------------------------------------- gemm


def bench_gemm(args) -> None:
    cp = require_gpu()
    from .backends.cuda_backend import CudaBackend

    backend = CudaBackend("bfloat16")
    bandwidth = copy_bandwidth()
    shapes = {"smollm2 qkv": (576, 960), "smollm2 gate/up": (576, 3072), "smollm2 down": (1536, 576), "8B qkv": (4096, 6144), "8B o": (4096, 4096), "8B gate/up": (4096, 28672), "8B down": (14336, 4096), "8B lm head": (4096, 128256)}
    l2_bytes = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    print(f"minispec bench gemm on {card_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write); "
          "own kernel and cuBLAS (ctypes, bf16) timed as captured graphs of 20 calls, CuPy fp16 matmul as 20 async calls; "
          f"consecutive calls read different copies of the weights (at least 2 x the {l2_bytes >> 20} MiB L2 in all), as a step's layers do; "
          "the three in an order rotated from one M to the next")
    print("own: the own kernel `linear` takes (kernel: gemm_wgmma on Hopper at 17-64 rows, and up to 16 where a block of one "
          "warpgroup streams >= 512 KB; else gemm_stream where K % 64 == 0, else gemm_bf16); serves: the engine's choice (own_gemm_serves)")
    print(f"{'shape':<16} {'M':>4} {'own µs':>8} {'cuBLAS µs':>10} {'CuPy µs':>10} {'floor µs':>9} {'own/floor':>10} {'own GB/s':>9} {'% of copy':>9} {'kernel':>7} {'serves':>7}")
    for name, (K, N) in shapes.items():
        copies = weight_copies(cp, N, K)
        turn = itertools.count()
        next_weight = lambda: copies[next(turn) % len(copies)]  # noqa: E731
        floor = N * K * 2 / bandwidth
        for M in (1, 2, 4, 8, 16, 32, 64, 128):
            x16 = cp.random.standard_normal((M, K), dtype=cp.float32).astype(cp.float16)
            x = x16.view(cp.uint16)  # random bits pattern of a bf16-sized operand
            times = {}
            for peer in in_turn(["own", "cublas", "cupy"], M.bit_length()):  # each timed first at some M (in_turn)
                if peer == "cupy":  # cuBLAS fp16 through CuPy (same bytes as bf16)
                    times[peer] = time_async(lambda: cp.matmul(x16, next_weight().view(cp.float16).T))
                elif peer == "own" or backend.cublas:
                    backend.gemm = peer
                    times[peer] = time_captured(lambda: backend.linear(x, next_weight()))
                else:
                    times[peer] = float("nan")
            backend.gemm = None
            own, captured_cublas, cublas = times["own"], times["cublas"], times["cupy"]
            kernel = backend.own_kernel(M, N, K)
            print(f"{name:<16} {M:>4} {own * 1e6:>8.1f} {captured_cublas * 1e6:>10.1f} {cublas * 1e6:>10.1f} {floor * 1e6:>9.1f} {own / floor:>10.2f} {N * K * 2 / own / 1e9:>9.0f} {N * K * 2 / own / bandwidth * 100:>8.0f}% {kernel:>7} {'own' if backend.own_gemm_serves(M, N, K) else 'cuBLAS':>7}")


# ----------------------------------------------------------------------------- attention


def attention_case(cp, backend, B, T, context, H, Hkv, D, P=16, causal=False):
    from .step import StepItem, build_plan
    from .tree import Tree

    rng = np.random.default_rng(0)
    pages_per_seq = -(-(context + T) // P)
    NP = B * pages_per_seq
    k_cache, v_cache = random_bf16(cp, (NP, Hkv, P, D)), random_bf16(cp, (NP, Hkv, P, D))
    items = []
    for b in range(B):
        table = list(range(b * pages_per_seq, (b + 1) * pages_per_seq))
        if causal:
            items.append(StepItem.chunk(table, context, np.zeros(T, dtype=np.int64), all_logits=True))
        else:
            parents = [-1] + [int(rng.integers(0, i)) for i in range(1, T)]
            items.append(StepItem.tree(table, context, Tree(np.zeros(T), parents)))
    plan = backend.prepare_plan(build_plan(items, P))
    q = cp.random.standard_normal((B * T, H, D), dtype=cp.float32)
    return q, k_cache, v_cache, plan


def bench_attention(args) -> None:
    cp = require_gpu()
    from .backends.cuda_backend import CudaBackend

    backend = CudaBackend("bfloat16")
    bandwidth, rate = copy_bandwidth(), tensor_rate(backend)
    try:
        import torch
    except ImportError:
        torch = None
    print(f"minispec bench attention on {card_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; tensor cores {rate / 1e12:.0f} "
          "TFLOP/s (cuBLAS bf16, 8192-cube); page size 16; bf16 KV; own kernel timed as a captured graph of 20 calls (kernel + split "
          "merge, or the kernel alone where its cluster merges its shares; tree and no-mask each the mean of two, in the order tree, no mask, no mask, tree), SDPA (dense bool mask, gathered K/V) as 20 async calls")
    print("floor: K/V bytes / copy bandwidth; tensor: the two products' flops (4 x rows x keys x D) / the tensor-core rate; "
          "limit/tree: the larger of the two over the kernel's time")
    print(f"{'heads':<10} {'B':>3} {'T':>3} {'context':>8} {'tree µs':>9} {'no-mask µs':>10} {'SDPA µs':>9} {'floor µs':>9} "
          f"{'tensor µs':>9} {'floor/tree':>10} {'limit/tree':>10}")
    shapes = [("8B 32/8/128", 32, 8, 128), ("smol 9/3/64", 9, 3, 64)]
    contexts = (1024, 8192) if args.quick else (1024, 8192, 32768)
    for name, H, Hkv, D in shapes:
        for B in (1, 16) if not args.quick else (1,):
            for T in (1, 16, 64):
                for context in contexts:
                    if B * context > 16 * 8192:
                        continue
                    q, k_cache, v_cache, plan = attention_case(cp, backend, B, T, context, H, Hkv, D)
                    q2, k2, v2, plan2 = attention_case(cp, backend, B, T, context, H, Hkv, D, causal=True)
                    masked = lambda: time_captured(lambda: backend.attention(q, k_cache, v_cache, plan, 0.1))  # noqa: E731
                    unmasked = lambda: time_captured(lambda: backend.attention(q2, k2, v2, plan2, 0.1))  # noqa: E731
                    # in the order tree, no mask, no mask, tree: a kernel timed first had run 1-3 µs faster on the same
                    # code (notes/attention_ab_h100_stop35.log), which would hide part of the mask's cost
                    tree, plain = masked(), unmasked()
                    plain, tree = (plain + unmasked()) / 2, (tree + masked()) / 2
                    sdpa = float("nan")
                    if torch is not None and B == 1:
                        S = context + T
                        kt = torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16)
                        vt = torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16)
                        qt = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
                        mask = torch.ones(T, S, dtype=torch.bool, device="cuda")
                        sdpa = time_torch(torch, lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask))
                    floor = B * (context + T) * Hkv * D * 2 * 2 / bandwidth
                    tensor = 4 * B * T * H * (context + T) * D / rate  # every row against every key (a tree row sees about all)
                    print(f"{name:<10} {B:>3} {T:>3} {context:>8} {tree * 1e6:>9.1f} {plain * 1e6:>10.1f} {sdpa * 1e6:>9.1f} {floor * 1e6:>9.1f} "
                          f"{tensor * 1e6:>9.1f} {floor / tree:>10.2f} {max(floor, tensor) / tree:>10.2f}")


# ----------------------------------------------------------------------------- end to end


def random_model_on_gpu(config, backend):
    """Random bf16 weights with the config's shapes, made on the GPU (no download)."""
    cp = backend.cp
    from .checkpoint import LayerWeights, ModelWeights

    def matrix(n, k):
        return random_bf16(cp, (n, k), 1 / np.sqrt(k))

    ones = lambda n: cp.ones(n, dtype=cp.float32)  # noqa: E731
    c = config
    layers = [
        LayerWeights(ones(c.hidden_size), matrix(c.qkv_size, c.hidden_size), matrix(c.hidden_size, c.num_heads * c.head_dim),
                     ones(c.hidden_size), matrix(2 * c.intermediate_size, c.hidden_size), matrix(c.hidden_size, c.intermediate_size))
        for _ in range(c.num_layers)
    ]
    embed = matrix(c.vocab_size, c.hidden_size)
    return ModelWeights(embed, layers, ones(c.hidden_size), matrix(c.vocab_size, c.hidden_size))


def llama_8b_config():
    from .config import ModelConfig

    return ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False)


def smollm2_135m_config():
    """The default model's shapes (for random-weight probes that need no download)."""
    from .config import ModelConfig

    return ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                       head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)


def weight_bytes(weights) -> int:
    arrays = [weights.embed, weights.final_norm] + ([] if weights.lm_head is weights.embed else [weights.lm_head])
    for layer in weights.layers:
        arrays += [layer.attn_norm, layer.wqkv, layer.wo, layer.mlp_norm, layer.w_gate_up, layer.w_down]
    return sum(a.nbytes for a in arrays) - weights.embed.nbytes  # the embedding is gathered, not streamed


def tree_step_plans(model, context: int, sizes):
    """(T, plan, cache) of a batch-1 tree step of T nodes at `context` keys for each T in `sizes`, in one cache:
    random trees whose nodes hang from one of the 4 before them (step_times, step_timelines)."""
    from .step import StepItem, build_plan
    from .tree import Tree

    cache = model.new_cache(-(-(context + max(sizes)) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, context + max(sizes))
    rng = np.random.default_rng(0)
    for T in sizes:
        parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
        yield T, build_plan([StepItem.tree(table, context, Tree(rng.integers(0, 1000, T), parents))], 16), cache


def step_times(model, context: int, tree_sizes=(4, 16, 32, 64)):
    """Seconds per forward: plain decode (T = 1) and tree verify (T in tree_sizes), batch 1, at `context`."""
    return {T: time_gpu(lambda: model.forward(plan, cache).argmax(), 2, 10)
            for T, plan, cache in tree_step_plans(model, context, (1, *tree_sizes))}


def decode_ahead_time(model, context: int, steps: int = 32, params=None) -> float:
    """Seconds per plain decode step as Engine.decode_ahead runs them, batch 1, from `context`: each step's
    token is the previous step's argmax (or, with sampling `params`, its draw) on the device, and the host
    copies a step's token back while the next step runs (plans built on the host in the loop, as the engine
    does)."""
    from .step import StepItem, build_plan
    from .tree import Tree

    backend = model.backend
    cache = model.new_cache(-(-(context + steps + 1) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, context + steps + 1)
    rng = np.random.default_rng(0)

    def next_ids(logits):
        return logits.argmax_device() if params is None else logits.sample_device([params], [rng.random()])

    def run():
        ids = next_ids(model.forward(build_plan([StepItem.tree(table, context, Tree.single(0))], 16), cache))
        read = backend.to_host_soon(ids, defer=True)
        for i in range(1, steps):
            plan = build_plan([StepItem.tree(table, context + i, Tree.single(0))], 16)
            ids = next_ids(model.forward(plan, cache, ids))
            previous, read = read, backend.to_host_soon(ids, defer=True)
            previous()  # step i - 1's token, while step i runs
        read()

    return time_gpu(run, 2, 7) / steps


FUSED_PHASES = ("qkv+rope", "attention", "merge", "o-proj", "gate/up", "down")


def fused_stamps(model, tree_size: int = 1, context: int = 512, extra: int = 0) -> np.ndarray:
    """The %globaltimer stamps (ns) block 0 of the fused-layers kernel writes in a decode step (run on that kernel
    even where the engine takes kernels/cluster_decode.cu), or a tree step of `tree_size` nodes: [1 + 6 L] after
    every grid barrier, then `extra` more for a build that stamps inside the phases (fused_layers.cuh, FUSED_TRACE).
    The tree step runs last, so its stamps stay."""
    backend = model.backend
    cp = backend.cp
    backend.fused_clock = cp.zeros(1 + 6 * model.num_layers + extra, dtype=cp.uint64)
    backend.graphs.clear()  # the clock pointer is captured into the graph
    cluster_decode, backend.cluster_decode = backend.cluster_decode, False  # decode on the fused kernel too (its stamps)
    try:
        step_times(model, context, () if tree_size == 1 else (tree_size,))
        return cp.asnumpy(backend.fused_clock).astype(np.int64)
    finally:
        backend.fused_clock = None
        backend.cluster_decode = cluster_decode
        backend.graphs.clear()


def layer_phases(stamps: np.ndarray, num_layers: int) -> np.ndarray:
    """Microseconds per layer of each of the FUSED_PHASES, averaged over the layers after the first."""
    return np.diff(stamps[: 1 + 6 * num_layers]).reshape(num_layers, 6)[1:].mean(axis=0) / 1e3


def fused_phase_times(model, tree_size: int = 1) -> np.ndarray:
    """µs per layer of each phase of the fused-layers kernel at context 512 (see fused_stamps)."""
    return layer_phases(fused_stamps(model, tree_size), model.num_layers)


def bench_e2e(args) -> None:
    require_gpu()
    from .llm import LLM
    from .model import Model
    from .sampling import SamplingParams

    bandwidth = copy_bandwidth()
    print(f"minispec bench e2e on {card_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    llm = LLM(model=args.model, device="cuda")
    backend = llm.backend
    # end-to-end decoding on the default model first, as a fresh process runs it: measured after the step tables (the
    # 8B model's rows) the same code had run 7% slower than in fresh processes on the same machine (3,320 against
    # 3,542-3,580 tokens/s, notes/generate_rate_ab_h200_stop58.log)
    from .bench import SPEC_PROMPTS, timed_generate

    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["chat"]}])
    plain_rate, _ = timed_generate(llm, ids, SamplingParams(temperature=0, max_tokens=256, ignore_eos=True), repeats=5)
    print(f"plain greedy decode, default model: {plain_rate:.0f} tokens/s (median of 5 runs, as every rate below)")
    print("  n-gram trees against plain decoding on input-grounded prompts, the two by turns (greedy: two rounds):")
    # n-gram tree speculation at the default budget vs our plain decode, greedy, then sampled (lossless verification)
    sampled_seeds = (0, 1, 2, 3)
    for label, params, seeds in (("", SamplingParams(temperature=0, max_tokens=128), (None,)),
                                 (f" (sampled, temperature 0.7, 128 tokens a run, geometric means over seeds {sampled_seeds})",
                                  SamplingParams(temperature=0.7, max_tokens=128, ignore_eos=True), sampled_seeds)):
        if label:
            print(f"  the same{label}:")
        for key, plain, ngram, per_forward in speculation_rates(llm, params, seeds):
            print(f"  {key:<10} plain {plain:>7.0f} tok/s   n-gram tree {ngram:>7.0f} tok/s ({per_forward:.2f} tokens/forward)  x{ngram / plain:.2f}")
    rows = [("default (SmolLM2-135M)", llm.model)]
    if not args.quick:
        config = llama_8b_config()
        rows.append(("random Llama-3.1-8B shapes", Model(config, random_model_on_gpu(config, backend), backend)))
    print("\nms/step: the engine's choice (fused layers for steps of <= 16 rows on small models, those of 5-16 rows on tensor cores;")
    print("else, and on large models, layer by layer as a CUDA graph); layered: the layer-by-layer kernels as a CUDA graph;")
    print("no graph: the same launched one by one from Python")
    print(f"{'model':<28} {'step':<12} {'ms/step':>8} {'layered':>8} {'no graph':>9} {'floor ms':>9} {'x floor':>8} {'x plain':>8}")
    for name, model in rows:
        floor = weight_bytes(model.weights) / bandwidth
        times = step_times(model, context=512)
        fused_max_rows, backend.fused_max_rows = backend.fused_max_rows, 0
        layered = step_times(model, context=512)
        backend.use_graphs = False
        eager = step_times(model, context=512)
        backend.use_graphs, backend.fused_max_rows = True, fused_max_rows
        for T, seconds in times.items():
            label = "plain decode" if T == 1 else f"tree T={T}"
            print(f"{name:<28} {label:<12} {seconds * 1e3:>8.3f} {layered[T] * 1e3:>8.3f} {eager[T] * 1e3:>9.3f} {floor * 1e3:>9.3f} "
                  f"{seconds / floor:>8.2f} {seconds / times[1]:>8.2f}")
        ahead = decode_ahead_time(model, 512)
        print(f"  plain decode one step ahead (the engine's greedy loop: the host works while the GPU runs the next step): "
              f"{ahead * 1e3:.3f} ms/step, {ahead / floor:.2f}x floor")
        sampled = decode_ahead_time(model, 512, params=SamplingParams(temperature=0.8, top_k=50, top_p=0.9))
        print(f"  sampled decode one step ahead (temperature 0.8, top-k 50, top-p 0.9): {sampled * 1e3:.3f} ms/step, "
              f"{sampled / ahead:.2f}x greedy")
        for T in (1, 16):
            if backend.fused_row_limit(model) < T:  # the engine runs this step layer by layer
                continue
            phases = fused_phase_times(model, T)
            label = f"tree T={T}" if T > 1 else "decode"
            if T == 1 and backend.cluster_decode:  # fused_stamps ran decode on the fused kernel, not the engine's
                label += " (the fused kernel; the engine's decode is cluster decode)"
            print(f"  fused {label}, µs per layer: " + ", ".join(f"{n} {t:.1f}" for n, t in zip(FUSED_PHASES, phases)))
        backend.graphs.clear()
    del rows, model  # (the 8B model's 16 GB go back to the pool before transformers loads)
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("transformers/torch not installed: no peer row")
        return
    model = AutoModelForCausalLM.from_pretrained(str(llm.model_dir), dtype=torch.bfloat16).cuda().eval()
    x = torch.tensor([llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["chat"]}])], device="cuda")
    for label, extra in (("eager", {}), ("static cache", {"cache_implementation": "static"})):
        if args.quick and extra:
            continue
        with torch.no_grad():
            # the warm-up is the timed generation itself: a static cache is sized by the generation's length, and a
            # shorter warm-up left its compilation (~50 s) inside the timed run (stops 36-41 printed 5 tokens/s)
            model.generate(x, max_new_tokens=256, min_new_tokens=256, do_sample=False, **extra)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(x, max_new_tokens=256, min_new_tokens=256, do_sample=False, **extra)
            torch.cuda.synchronize()
        rate = 256 / (time.perf_counter() - start)
        print(f"transformers generate ({label}), same model and card: {rate:.0f} tokens/s; minispec plain / transformers = {plain_rate / rate:.1f}x")


def speculation_rates(llm, params, seeds=(None,)):
    """Per input-grounded prompt: (name, plain tokens/s, n-gram tree tokens/s, n-gram tokens a forward), each rate the
    median of 5 generations after a warm-up (bench.timed_generate), at the engine's default tree budget; each rate and
    the tokens a forward the geometric mean over rounds, a round a seed (sampled: a sampled run's text, and so its
    speed, moves with the seed by +-30%, notes/sampled_gate_h100_stop36.log), or two for one seed. A round's plain and
    n-gram runs go side by side, in turn (plain first, then the n-gram drafter first): with plain always first, the
    sampled rows measured 0.85-0.92x over stops 45-57; by turns they measured 0.91-0.98x over these 4 seeds and
    0.98-1.01x over 8 (notes/bench_e2e_h200_stop57_turns.log, notes/sampled_ngram_h200_stop57.log)."""
    from .bench import INPUT_GROUNDED, LONG_PROMPTS, SPEC_PROMPTS, timed_generate

    rounds = list(seeds) if len(seeds) > 1 else list(seeds) * 2
    prompts = {**{key: SPEC_PROMPTS[key] for key in INPUT_GROUNDED}, **LONG_PROMPTS}
    for key, text in prompts.items():
        ids = llm.chat_prompt([{"role": "user", "content": text}])
        logs = np.zeros(3)  # log plain rate, log n-gram rate, log tokens a forward, summed over the rounds
        for r, seed in enumerate(rounds):
            run = params if seed is None else dataclasses.replace(params, seed=seed)
            for draft in in_turn([None, "ngram"], r):
                llm.use_drafter(draft)
                rate, result = timed_generate(llm, ids, run, repeats=5)
                logs[0 if draft is None else 1] += np.log(rate)
                if draft is not None:
                    logs[2] += np.log(result.stats.tokens_per_step)
        llm.use_drafter(None)
        yield (key, *map(float, np.exp(logs / len(rounds))))


def step_timeline(model, plan, cache, records, replays: int = 5):
    """The StepTimeline of `plan`'s step (minispec/timeline.py): captured first, then `replays` replays recorded."""
    from .timeline import StepTimeline

    cp = require_gpu()
    for _ in range(3):  # compile, capture, replay once
        model.forward(plan, cache).argmax()
    records.take()
    for _ in range(replays):
        model.forward(plan, cache).argmax()
        cp.cuda.Device().synchronize()
    return StepTimeline.of(records.take(), replays)


def step_timelines(model, sizes, records, context: int = 512):
    """(T, StepTimeline) of a batch-1 tree step of T nodes at `context` keys for each T in `sizes` (tree_step_plans)."""
    for T, plan, cache in tree_step_plans(model, context, sizes):
        yield T, step_timeline(model, plan, cache, records)


def bench_timeline(args) -> None:
    """The 8B-shape step's kernels inside its graph, at one row and 64 (a tree verify step): each kernel's marginal
    time, the mean over the middle layers (minispec/timeline.py)."""
    from .backends.cuda_backend import CudaBackend
    from .model import Model
    from .timeline import KernelRecords

    require_gpu()  # (counts the devices: makes no context)
    records = KernelRecords()  # before the GPU context: every kernel recorded
    try:
        backend, cfg = CudaBackend(), llama_8b_config()
        model = Model(cfg, random_model_on_gpu(cfg, backend), backend)
        print(f"minispec bench timeline on {card_name()}: random Llama-3.1-8B shapes, batch 1, context 512, µs; a "
              f"kernel's marginal time is its end less the latest end before it (what it adds to the step), idle the "
              f"time before it that no kernel ran")
        for T, timeline in step_timelines(model, (1, 64), records):
            print(f"\nT = {T}: {len(timeline.names)} kernels a step, {timeline.period} a layer; first start to last end "
                  f"{timeline.span:.1f} µs, idle {timeline.idle.sum():.1f}")
            print(timeline.table())
    finally:
        records.close()


RUNNERS = {"gemm": bench_gemm, "attention": bench_attention, "e2e": bench_e2e, "timeline": bench_timeline}
