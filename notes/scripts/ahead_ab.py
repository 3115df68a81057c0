"""Device probe for A/B runs: decode one step ahead as the engine runs it (bench_gpu.decode_ahead_time: the next
step reads the previous one's argmax on the device, plans built on the host), greedy and sampled, on a random
model with the default model's shapes, at the contexts given. Runs in any build that has bench_gpu.decode_ahead_time,
so an older build copied beside this one can be timed in the same call:
PYTHONPATH=$PWD python3 notes/scripts/ahead_ab.py TAG 100 512
A TAG containing "cublas-head" puts the LM head back on cuBLAS (the rule before stop 24).
(The branch experiment/plan-advance's copy also takes "no-advance".)"""
import sys

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402
from minispec.bench_gpu import card_name, decode_ahead_time, random_model_on_gpu, require_gpu, smollm2_135m_config  # noqa: E402
from minispec.model import Model  # noqa: E402
from minispec.sampling import SamplingParams  # noqa: E402

require_gpu()
tag = sys.argv[1]
if "cublas-head" in tag:  # the LM head on cuBLAS, as before stop 24 (own kernels only where K % 128 == 0)
    from minispec.backends.cuda_gemm import stream_fits
    CudaBackend.own_gemm_serves = lambda self, M, N, K: (K % 128 == 0 and stream_fits(N, K)) if M <= 16 else (
        self.wgmma_gemm_fits(M, N, K) and -(-N // 128) >= self.sm_count)
contexts = [int(a) for a in sys.argv[2:]] or [100, 512]
cfg = smollm2_135m_config()
backend = CudaBackend()
model = Model(cfg, random_model_on_gpu(cfg, backend), backend)
sampled = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
line = [f"{tag:<8} {card_name()}"]
for context in contexts:
    greedy = decode_ahead_time(model, context, 64)
    drawn = decode_ahead_time(model, context, 64, sampled)
    line.append(f"ctx {context}: greedy {greedy * 1e6:6.1f} µs/step ({1 / greedy:5.0f}/s), sampled {drawn * 1e6:6.1f}")
print(" | ".join(line), flush=True)
