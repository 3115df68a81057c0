"""Device probe: does add_rmsnorm's residual read before pdl_wait see the values the norm before wrote? The kernel
reads them early (__ldcg, as the change under test) and again after the wait, uses the late values, and counts the
early ones that differ (a __device__ counter, read by the host) by the norm's row count. The 8B step's graphs at
T = 1, 4, 16, 64 (random weights, context 512), with programmatic dependent launch and without.

  PYTHONPATH=$PWD python3 notes/scripts/norm_early_probe.py"""
import sys

sys.path.insert(0, ".")
from minispec.bench_gpu import backend_with_edit, card_name, llama_8b_config, random_model_on_gpu, require_gpu, step_times, swap  # noqa: E402
from minispec.model import Model  # noqa: E402

cp = require_gpu()


def edit(text: str) -> str:
    text = swap(text, "#define NORM_HELD 8", "__device__ unsigned long long stale_values, checked_values;\n#define NORM_HELD 8")
    text = swap(text, "float held[NORM_HELD], scaled_by[NORM_HELD];", "float held[NORM_HELD], scaled_by[NORM_HELD], carried[NORM_HELD];")
    text = swap(text, "            scaled_by[k] = c < C ? weight[c] : 0.0f;\n",
                "            scaled_by[k] = c < C ? weight[c] : 0.0f;\n"
                "            carried[k] = c < C && has_residual ? __ldcg(residual + base + c) : 0.0f;\n")
    return swap(text, "held[k] = c < C ? x[base + c] + (has_residual ? residual[base + c] : 0.0f) : 0.0f;",
                "const float late = c < C && has_residual ? residual[base + c] : 0.0f;\n"
                "            if (c < C && has_residual) { atomicAdd(&checked_values, 1ull); if (__float_as_uint(late) != __float_as_uint(carried[k])) atomicAdd(&stale_values, 1ull); }\n"
                "            held[k] = c < C ? x[base + c] + late : 0.0f;")


print(f"# norm_early_probe on {card_name()}: 8B shapes, context 512", flush=True)
for pdl in (True, False):
    be = backend_with_edit("elementwise.cu", "add_rmsnorm", edit)
    be.pdl = be.pdl and pdl
    module = be.modules[("elementwise.cu", None)]
    cp.random.seed(0)
    model = Model(llama_8b_config(), random_model_on_gpu(llama_8b_config(), be), be)
    counters = [cp.ndarray((1,), dtype=cp.uint64, memptr=module.get_global(name)) for name in ("stale_values", "checked_values")]
    for T in (1, 4, 16, 64):
        for counter in counters:
            counter[...] = 0
        times = step_times(model, 512, tree_sizes=(T,))
        cp.cuda.Device().synchronize()
        stale, checked = (int(c.get()[0]) for c in counters)
        print(f"pdl {pdl!s:5}  T = {T:2d} (with T = 1 first): {stale} stale of {checked} residual values read early; "
              f"step {times[T] * 1e6:.0f} µs", flush=True)
    del model, be
