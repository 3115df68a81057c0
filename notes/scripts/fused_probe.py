"""Device probe: the fused-layers kernel on a random model with the default model's shapes (no download):
step times (decode, tree T = 16) at the contexts given (default 512), the per-phase breakdown of block 0's
%globaltimer stamps, and the whole kernel's span against the step (the rest: embedding, final norm, LM head,
argmax, gaps). `trace`: a build with stamps inside the phases too; `twice`: with `trace`, each layer runs its
attention twice, the second time with its code and data cached. Run from the repository root (or from a copy of
another build that has bench_gpu.fused_stamps, to compare in the same call):
python3 notes/scripts/fused_probe.py 512 2048 [t=1,4,16] [trace [twice]]
Since stop 15 the decode instance has no grid barrier after qkv and after attention (its units wait on counters
inside the phases), so in its trace those two "barrier" spans are empty and "barrier+stage" is the wait for every
merged row and the O staging."""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import (  # noqa: E402
    FUSED_PHASES, card_name, fused_stamps, layer_phases, random_model_on_gpu, require_gpu, smollm2_135m_config, step_times)
from minispec.model import Model  # noqa: E402

require_gpu()
smol = smollm2_135m_config()
backend = CudaBackend()
model = Model(smol, random_model_on_gpu(smol, backend), backend)
contexts = [int(a) for a in sys.argv[1:] if a.isdigit()] or [512]
# t=1,4,16: the step sizes whose stamps are read (default 1 and 16; step times are taken for the trees among them)
sizes = [int(v) for a in sys.argv[1:] if a.startswith("t=") for v in a[2:].split(",")] or [1, 16]
print(card_name(), "SmolLM2-135M shapes, random weights", flush=True)
TRACE = "trace" in sys.argv  # block 0's stamps inside the phases too (kernels/fused_layers.cuh, FUSED_TRACE)
if TRACE:
    import minispec.backends.cuda_backend as cb
    source = cb.kernel_source
    defines = "#define FUSED_TRACE\n" + ("#define FUSED_TRACE_TWICE\n" if "twice" in sys.argv else "")
    cb.kernel_source = lambda name: (defines if name.startswith("fused_layers") else "") + source(name)
L = smol.num_layers
# (the span that ends at an event, 12: a trace point or 6: a phase stamp, its index in the layer) in time order
EVENTS = [("stage norm", 12, 0), ("qkv GEMV+prefetch", 12, 1), ("barrier", 6, 1),
          ("attention", 12, 2), ("barrier", 6, 2), ("merge", 12, 3), ("barrier+stage", 12, 4), ("o GEMV", 12, 5),
          ("barrier", 6, 4), ("stage norm", 12, 6), ("gate/up GEMV", 12, 7), ("barrier", 6, 5), ("stage act", 12, 8),
          ("down GEMV", 12, 9), ("barrier", 6, 6)]


def trace_spans(stamps, layers=range(1, L)):
    """µs per layer (mean over `layers`, by default 1..L-1) of each span between consecutive trace events."""
    rows = []
    for l in layers:
        times = [stamps[6 * l]] + [stamps[1 + 6 * L + 11 * l + i] if stride == 12 else stamps[6 * l + i] for _, stride, i in EVENTS]
        rows.append(np.diff(np.array(times, dtype=np.int64)))
    return np.mean(rows, axis=0) / 1e3


for context in contexts:
    times = step_times(model, context, tuple(T for T in sizes if T > 1))
    line = [f"context {context}: decode {times[1] * 1e6:.0f} µs/step ({1 / times[1]:.0f}/s)"
            + "".join(f", tree T={T} {times[T] * 1e6:.0f} µs" for T in sizes if T > 1)]
    for T in sizes:
        stamps = fused_stamps(model, T, context, 11 * L if TRACE else 0)
        phases = layer_phases(stamps, L)
        first = (stamps[6] - stamps[0]) / 1e3
        span = (stamps[6 * L] - stamps[0]) / 1e3
        line.append(f"  T={T}: kernel span {span:.0f} µs (first layer {first:.1f}), µs per layer {phases.sum():.1f}: "
                    + ", ".join(f"{n} {t:.2f}" for n, t in zip(FUSED_PHASES, phases)))
        first_phases = np.diff(stamps[:7]) / 1e3  # layer 0 from the kernel's entry stamp
        line.append("    layer 0: " + ", ".join(f"{n} {t:.2f}" for n, t in zip(FUSED_PHASES, first_phases)))
        if "twice" in sys.argv:
            first = np.mean([stamps[1 + 6 * L + 11 * l + 10] - stamps[1 + 6 * l] for l in range(1, L)]) / 1e3
            second = np.mean([stamps[1 + 6 * L + 11 * l + 2] - stamps[1 + 6 * L + 11 * l + 10] for l in range(1, L)]) / 1e3
            line.append(f"    attention twice: first {first:.2f} µs, second {second:.2f} µs")
        if TRACE:
            line.append("    inside: " + ", ".join(f"{n} {t:.2f}" for (n, _, _), t in zip(EVENTS, trace_spans(stamps))))
            line.append("    layer 0 inside: " + ", ".join(f"{n} {t:.2f}" for (n, _, _), t in zip(EVENTS, trace_spans(stamps, [0]))))
    print("\n".join(line), flush=True)
