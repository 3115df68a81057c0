"""Device probe: where a tree attention call's time goes. For each case, the whole call (kernel + merge, as
`bench attention` times it), the attention kernel alone (the merge launch skipped), the merge alone (on the
kernel's partials), and one split (no merge), each as a captured graph of 20 calls, against the K/V floor.
`mma`: the shapes that take the mma.sync kernel (decode and small trees of the 8B heads) instead."""
import sys
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, time_captured, copy_bandwidth, card_name, require_gpu

cp = require_gpu()
be = CudaBackend("bfloat16")
bw = copy_bandwidth()
print(card_name(), f"copy {bw/1e12:.2f} TB/s", flush=True)
merge = be.kernel("attention.cu", "attention_merge")
launch = be.launch
cases = [(1, 64, 512), (1, 64, 2048), (1, 64, 8192), (1, 64, 32768), (1, 16, 8192), (4, 64, 8192)]
if sys.argv[1:] == ["mma"]:
    cases = [(1, 1, 512), (1, 1, 2048), (1, 1, 8192), (1, 4, 512), (1, 16, 512), (1, 16, 1024), (8, 1, 2048), (4, 16, 512)]
for B, T, ctx in cases:
    q, k, v, plan = attention_case(cp, be, B, T, ctx, 32, 8, 128)
    floor = B * (ctx + T) * 8 * 128 * 4 / bw
    whole = time_captured(lambda: be.attention(q, k, v, plan, 0.1))
    seen = []
    be.launch = lambda kernel, grid, *a, **kw: seen.append((kernel, grid, a, kw)) or (kernel is not merge and launch(kernel, grid, *a, **kw))
    alone = time_captured(lambda: be.attention(q, k, v, plan, 0.1))
    be.launch = launch
    calls = [c for c in seen if c[0] is merge]
    merged = time_captured(lambda: launch(calls[-1][0], calls[-1][1], *calls[-1][2], **calls[-1][3])) if calls else 0.0
    be.attention_splits = 1
    one = time_captured(lambda: be.attention(q, k, v, plan, 0.1))
    be.attention_splits = None
    grid = [c[1] for c in seen if c[0] is not merge][-1]
    print(f"B={B} T={T} ctx={ctx}: floor {floor*1e6:.1f} µs  whole {whole*1e6:.1f} ({floor/whole:.2f})  kernel {alone*1e6:.1f}  "
          f"merge {merged*1e6:.1f}  one split {one*1e6:.1f}  grid {grid}", flush=True)
