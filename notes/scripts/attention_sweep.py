"""Device probe: tensor-core attention split/warp sweep against the K/V floor (`short`: the contexts of bench e2e).
Columns w<4|8>s<splits>: the mma.sync kernel; wgs<splits>: the 8-warp kernel on wgmma (Hopper)."""
import sys
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, time_captured, copy_bandwidth, card_name, require_gpu

cp = require_gpu()
be = CudaBackend("bfloat16")
bw = copy_bandwidth()
print(card_name(), f"copy {bw/1e12:.2f} TB/s", flush=True)
cases = [("8B", 32, 8, 128, 1, 1, 8192), ("8B", 32, 8, 128, 1, 16, 8192), ("8B", 32, 8, 128, 1, 64, 8192),
         ("8B", 32, 8, 128, 1, 64, 32768), ("8B", 32, 8, 128, 16, 64, 8192), ("8B", 32, 8, 128, 1, 64, 1024),
         ("smol", 9, 3, 64, 1, 1, 8192), ("smol", 9, 3, 64, 1, 64, 8192)]
split_counts = (None, 2, 4, 8, 16, 32)
if sys.argv[1:] == ["short"]:  # the contexts of bench e2e's steps
    cases = [("8B", 32, 8, 128, 1, 64, 512), ("8B", 32, 8, 128, 1, 16, 512), ("8B", 32, 8, 128, 1, 64, 2048)]
    split_counts = (None, 1, 2, 3, 4, 8)
for name, H, Hkv, D, B, T, ctx in cases:
    q, k, v, plan = attention_case(cp, be, B, T, ctx, H, Hkv, D)
    floor = B * (ctx + T) * Hkv * D * 4 / bw
    res = []
    for warps in (None, 4, 8, "wg"):
        for splits in split_counts:
            if (warps is None) != (splits is None) or (warps == "wg" and not be.hopper):
                continue
            be.attention_warps, be.attention_splits = (8 if warps == "wg" else warps), splits
            be.attention_wgmma = None if warps is None else warps == "wg"
            t = time_captured(lambda: be.attention(q, k, v, plan, 0.1))
            res.append((f"wgs{splits}" if warps == "wg" else f"w{warps}s{splits}", t))
    be.attention_warps = be.attention_splits = be.attention_wgmma = None
    best = min(res[1:], key=lambda r: r[1])
    print(f"{name} B={B} T={T} ctx={ctx}: floor {floor*1e6:.1f} µs  auto {res[0][1]*1e6:.1f} ({floor/res[0][1]:.2f})  best {best[0]} {best[1]*1e6:.1f} ({floor/best[1]:.2f})  | "
          + " ".join(f"{n}:{t*1e6:.1f}" for n, t in res[1:]), flush=True)
