"""Device probe: variants of the tree attention kernels (kernels/attention_wgmma.cu, attention.cu) by turns in one process (bench_gpu.backend_with_edit), the
whole call (kernel + merge, as `bench attention` times it) for 8B heads, against the K/V floor, and whether each
variant's output equals the first variant's bits (or how far it strays).

  base     the committed kernel
  same     the committed kernel again, in a backend of its own (an A/A control: the harness's own spread)
  rampR    the wgmma producer issues tile j < RING only once tile j - R has landed (R tiles in flight at first):
           every block's first tiles no longer queue behind the whole grid's ring fills
  poly     half of the softmax's exponentials by a cubic polynomial on the FMA pipe instead of ex2 on the SFU
  qfirstK  the wgmma producer issues K tiles, then waits (a named barrier) until the consumers have issued their Q
           loads, then the rest: Q's loads no longer queue behind the whole grid's ring fills
  merge8   attention_merge keeps eight shares' partials in flight a warp instead of four

    python3 notes/scripts/attention_ab.py [rounds] [variant,variant,...]
"""
import sys

import numpy as np

from minispec.bench_gpu import attention_case, backend_with_edit, card_name, copy_bandwidth, in_turn, require_gpu, swap, time_captured

cp = require_gpu()
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["base", "ramp1", "ramp2", "ramp3", "poly"]
CASES = [(1, 64, 512), (1, 64, 2048), (1, 64, 8192), (1, 64, 32768), (4, 64, 8192), (16, 64, 8192), (1, 1, 16384)]

WAIT = "            if (j >= RING) mbarrier_wait(empty + j % RING, (j / RING - 1) & 1);  // tile j - RING's readers are done\n"
EXP = "__device__ __forceinline__ float exp2_fast(float x) {"
POLY = """__device__ __forceinline__ float exp2_poly(float x) {  // 2^x on the FMA pipe: 2^round(x) 2^f, |f| <= 1/2
    x = fmaxf(x, -126.0f);
    const float shifted = x + 12582912.0f, whole = shifted - 12582912.0f, f = x - whole;
    const float p = fmaf(fmaf(fmaf(0.05508868f, f, 0.24260405f), f, 0.69327623f), f, 0.99992895f);
    return x <= -126.0f ? 0.0f : __int_as_float(__float_as_int(p) + ((__float_as_int(shifted) - 0x4b400000) << 23));
}
"""


def patched(source: str, variant: str) -> str:
    if variant.startswith("ramp"):
        ramp = int(variant[4:])
        source = swap(source, WAIT, WAIT + f"            else if (j >= {ramp}) mbarrier_wait(full + (j - {ramp}) % RING, 0);\n")
    elif variant == "poly":
        source = swap(source, EXP, POLY + EXP)
        source = swap(source, "s[nt][1] = exp2_fast(s[nt][1] - base0);", "s[nt][1] = exp2_poly(s[nt][1] - base0);")
        source = swap(source, "s[nt][3] = exp2_fast(s[nt][3] - base1);", "s[nt][3] = exp2_poly(s[nt][3] - base1);")
    elif variant.startswith("qfirst"):
        first = int(variant[6:])
        count = "(256 + 32 * producers)"
        source = swap(source, "            if (j == early) pdl_wait();\n",
                      f"            if (j == {first}) asm volatile(\"bar.sync 1, %0;\\n\" :: \"r\"{count} : \"memory\");\n"
                      "            if (j == early) pdl_wait();\n")
        # a share of fewer tiles meets the barrier after its loop (the consumers always arrive)
        source = swap(source, "            load_tile(j, page);\n        }\n        return;\n",
                      f"            load_tile(j, page);\n        }}\n        if (tile_count <= {first}) asm volatile(\"bar.sync 1, %0;\\n\" :: \"r\"{count} : \"memory\");\n        return;\n")
        source = swap(source, "    if (active) load_query<D>(q, r, scale, t, qa);\n",
                      "    if (active) load_query<D>(q, r, scale, t, qa);\n"
                      f"    asm volatile(\"bar.arrive 1, %0;\\n\" :: \"r\"{count} : \"memory\");\n")
    elif variant == "merge8":
        merge = source[source.index("attention_merge("):]
        new = merge.replace("first += 4 * W", "first += 8 * W").replace("float4 x[4];", "float4 x[8];")
        new = new.replace("for (int i = 0; i < 4; i++) {\n            const int s = first + W * i;\n            const float* o",
                          "for (int i = 0; i < 8; i++) {\n            const int s = first + W * i;\n            const float* o")
        new = new.replace("for (int i = 0; i < 4; i++) {\n            const int s = first + W * i;\n            const float ws",
                          "for (int i = 0; i < 8; i++) {\n            const int s = first + W * i;\n            const float ws")
        assert new.count("i < 8") == 2 and "x[8]" in new and "8 * W" in new
        source = source.replace(merge, new)
    else:
        assert variant in ("base", "same"), variant
    return source


bw = copy_bandwidth()
print(card_name(), f"copy {bw / 1e12:.2f} TB/s; variants {VARIANTS}, {ROUNDS} rounds", flush=True)
# the file each variant edits (since stop 49 the wgmma kernel and the softmax it inlines are attention_wgmma.cu's text,
# the merge attention.cu's); an unedited file is the committed one
FILES = {"merge8": ("attention.cu", "attention_merge", None)}  # (file, kernel, head dim)
backends = {}
for v in VARIANTS:
    file, kernel, head_dim = FILES.get(v, ("attention_wgmma.cu", "tree_attention_wgmma_d128_k64", 128))
    backends[v] = backend_with_edit(file, kernel, lambda s, v=v: patched(s, v), head_dim)
inputs = {case: attention_case(cp, backends[VARIANTS[0]], *case, 32, 8, 128) for case in CASES}
times = {(v, c): [] for v in VARIANTS for c in CASES}
for c, (q, k, v_, plan) in inputs.items():
    ref = None
    for v in VARIANTS:
        be = backends[v]
        out = be.attention(q, k, v_, plan, 0.1).view(cp.uint16)
        cp.cuda.Device().synchronize()
        if ref is None:
            ref = out.copy()
            continue
        same = bool((out == ref).all())
        a, b = ((x.astype(cp.uint32) << 16).view(cp.float32) for x in (out, ref))
        print(f"  {c}: {v} same bits as {VARIANTS[0]}: {same}; max |diff| {float(cp.abs(a - b).max()):.3g} (max |out| {float(cp.abs(b).max()):.3g})")
for r in range(ROUNDS):  # the variants take turns case by case, in an order that rotates every round (in_turn)
    for c, (q, k, v_, plan) in inputs.items():
        for v in in_turn(VARIANTS, r):
            times[v, c].append(time_captured(lambda: backends[v].attention(q, k, v_, plan, 0.1)))
print(f"{'B T ctx':<16} {'floor µs':>9} " + " ".join(f"{v:>14}" for v in VARIANTS))
for c in CASES:
    B, T, ctx = c
    floor = B * (ctx + T) * 8 * 128 * 4 / bw
    cells = [f"{np.median(times[v, c]) * 1e6:7.1f} ({floor / np.median(times[v, c]):.2f})" for v in VARIANTS]
    print(f"{str(c):<16} {floor * 1e6:9.1f} " + " ".join(f"{x:>14}" for x in cells))
    print(f"{'':<16} {'spread':>9} " + " ".join(f"{(max(times[v, c]) - min(times[v, c])) * 1e6:>14.1f}" for v in VARIANTS))
print("µs: the median of the rounds, each 20 calls in a graph; (floor / time); spread: max - min over the rounds")
