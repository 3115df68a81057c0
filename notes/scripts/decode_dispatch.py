"""Device probe: decode-like attention (few rows per KV head: the mma.sync kernel of 4 warps by default) against
the wgmma kernel forced, at its automatic split count and at 8 / 16 / 32 shares, over contexts and batch sizes,
beside the K/V floor. Each figure a captured graph of 20 calls (kernel + merge), as `bench attention` times them."""
import sys
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import attention_case, time_captured, copy_bandwidth, card_name, require_gpu

cp = require_gpu()
be = CudaBackend("bfloat16")
bw = copy_bandwidth()
print(card_name(), f"copy {bw/1e12:.2f} TB/s", flush=True)
heads = {"8B": (32, 8, 128), "smol": (9, 3, 64)}
cases = [(h, B, T, ctx) for h in ("8B", "smol") for B, T in ((1, 1), (1, 4), (4, 1), (16, 1))
         for ctx in (1024, 2048, 4096, 8192, 16384, 32768) if B * ctx <= 16 * 8192]
for name, B, T, ctx in cases:
    H, Hkv, D = heads[name]
    q, k, v, plan = attention_case(cp, be, B, T, ctx, H, Hkv, D)
    floor = B * (ctx + T) * Hkv * D * 4 / bw
    res = [("auto", time_captured(lambda: be.attention(q, k, v, plan, 0.1)))]
    be.attention_warps, be.attention_wgmma = 8, True
    for splits in (None, 8, 16, 32):
        be.attention_splits = splits
        res.append((f"wg{splits or 'auto'}", time_captured(lambda: be.attention(q, k, v, plan, 0.1))))
    be.attention_warps = be.attention_wgmma = be.attention_splits = None
    print(f"{name} B={B} T={T} ctx={ctx}: floor {floor*1e6:.1f} µs | " + " ".join(f"{n} {t*1e6:.1f} ({floor/t:.2f})" for n, t in res), flush=True)
