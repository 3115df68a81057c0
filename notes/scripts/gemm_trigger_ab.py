"""Where a GEMM lets the next kernel launch (griddepcontrol.launch_dependents, kernels/pdl.cuh), by turns in one
process: each variant is kernels/gemm.cu patched (`patched`), compiled into its own CudaBackend.

  stop34  the committed code: gemm_stream triggers once its last stage's copies are issued
  stop33  gemm_stream triggers once its ring has drained, before its reduction
  start   gemm_stream and gemm_wgmma trigger first thing
  last+2, last*2, half   gemm_stream triggers 2 or STAGES stages before its last copies, or half-way
  fill    stop 34's trigger, and gemm_stream copies every ring slot's weights before its wait (not all but one)

Prints, per variant and round: bench gemm's chains (20 calls in a graph, consecutive calls on different weight
copies) as % of copy bandwidth, with cuBLAS beside them where cuBLAS serves, own forced ('own') and gemm_stream
forced ('stream'); then the 8B random model's step times (the engine's own dispatch) at 512 keys; and whether
every variant gives the same bits.

    python3 notes/scripts/gemm_trigger_ab.py [rounds] [variant,variant,...]
"""

import sys

from minispec.bench_gpu import (backend_with_edit, card_name, copy_bandwidth, in_turn, llama_8b_config, random_model_on_gpu,
                                require_gpu, step_times, swap, time_captured)
from minispec.model import Model

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "down": (14336, 4096), "gate/up": (4096, 28672)}
ROWS = (1, 4, 16, 32, 64)
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["stop33", "stop34", "fill"]

TRIGGER = "        if (step + STAGES >= steps) pdl_trigger();\n"
DRAINED = "    cp_async_wait<0>();\n"
EARLY = "    for (int s = 0; s < STAGES - 1; s++)\n        if (s < steps) load_weights(s);"
REFILL = "if (step + STAGES - 1 < steps) load_weights(step + STAGES - 1), load_x(step + STAGES - 1);"
STREAM_BODY = "    using namespace stream;\n"
WGMMA_BODY = "    extern __shared__ __align__(128) unsigned char shared[];\n    unsigned char* base ="


def patched(source: str, variant: str) -> str:
    """kernels/gemm.cu as `variant` has it (the committed text is stop 34's)."""
    if variant == "stop33":  # gemm_stream triggers once its ring has drained
        source = swap(source, TRIGGER, "")
        source = swap(source, DRAINED, DRAINED + "    pdl_trigger();\n")
    elif variant == "start":  # both kernels trigger first thing
        source = swap(source, STREAM_BODY, STREAM_BODY + "    pdl_trigger();\n")
        source = swap(source, WGMMA_BODY, "    pdl_trigger();\n" + WGMMA_BODY)
    elif variant in ("last+2", "last*2", "half"):  # gemm_stream triggers that many stages before its last copies
        left = {"last+2": "STAGES + 2", "last*2": "2 * STAGES", "half": "steps - steps / 2"}[variant]
        source = swap(source, TRIGGER, TRIGGER.replace("STAGES >= steps", f"{left} >= steps"))
    elif variant == "fill":  # gemm_stream copies every ring slot's weights before the wait, not all but one
        source = swap(source, EARLY, EARLY.replace("s < STAGES - 1", "s < STAGES"))
        source = swap(source, REFILL, "if (step + STAGES - 1 < steps) {\n            if (step > 0) load_weights(step + STAGES - 1);\n"
                                      "            load_x(step + STAGES - 1);\n        }")
    else:
        assert variant == "stop34", variant
    return source


def bf16(shape, scale=1.0):
    return (cp.random.standard_normal(shape, dtype=cp.float32) * scale).view(cp.uint32).__rshift__(16).astype(cp.uint16)


def main():
    variants = {name: backend_with_edit("gemm.cu", "gemm_stream_r8_k128_s4", lambda text, name=name: patched(text, name)) for name in VARIANTS}
    bandwidth = copy_bandwidth()
    print(f"GEMM trigger placement on {card_name()}, copy {bandwidth / 1e12:.2f} TB/s; % of copy bandwidth per call "
          "(graphs of 20 calls, consecutive calls on different weight copies, >= 100 MiB in all); the engine's dispatch "
          "(own up to 16 rows, own or cuBLAS above by its rule) and own forced ('own')", flush=True)
    operands = {}
    for name, (K, N) in SHAPES.items():
        weight = bf16((N, K)) & 0xBFFF
        copies = [weight] + [weight.copy() for _ in range(-(-(100 << 20) // weight.nbytes) - 1)]
        operands[name] = (K, N, copies, {M: bf16((M, K)) for M in ROWS})
    reference = {}
    for r in range(ROUNDS):
        for variant in in_turn(list(variants), r):  # (stop 34's calls ran them in one order, its kept variant second)
            backend, cells = variants[variant], []
            for name, (K, N, copies, xs) in operands.items():
                for M in ROWS:
                    for forced in ((None, "own", "stream") if M > 16 else (None,)):
                        backend.gemm = "own" if forced == "stream" else forced
                        turn = iter(range(10**9))
                        if forced == "stream":  # gemm_stream where gemm_wgmma would serve
                            y = cp.empty((M, N), dtype=cp.float32)
                            call = lambda: backend.gemm_stream(xs[M], copies[next(turn) % len(copies)], y)  # noqa: E731
                        else:
                            call = lambda: backend.linear(xs[M], copies[next(turn) % len(copies)])  # noqa: E731
                        t = time_captured(call)
                        cells.append(f"{name} M={M}{' ' + forced if forced else ''} {N * K * 2 / bandwidth / t * 100:.0f}%")
                        if forced == "stream":
                            backend.gemm_stream(xs[M], copies[0], y)
                        else:
                            y = backend.linear(xs[M], copies[0])
                        key = (name, M, forced)
                        bits = cp.asnumpy(y).tobytes()
                        if key in reference and reference[key][1] != bits:
                            print(f"  DIFFERENT BITS: {variant} {key} against {reference[key][0]}")
                        reference.setdefault(key, (variant, bits))
                backend.gemm = None
            print(f"round {r} {variant:<6} " + "  ".join(cells), flush=True)
    cp.get_default_memory_pool().free_all_blocks()
    config = llama_8b_config()
    weights = random_model_on_gpu(config, next(iter(variants.values())))
    for r in range(2):
        for variant in in_turn(list(variants), r):
            model = Model(config, weights, variants[variant])
            times = step_times(model, 512, (4, 16, 32, 64))
            print(f"8B steps round {r} {variant:<6} " + "  ".join(f"T={T} {t * 1e3:.3f} ms" for T, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
