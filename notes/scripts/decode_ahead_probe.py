"""Device probe: plain decode step with the host in the loop vs one step ahead (bench_gpu.decode_ahead_time)."""
import sys
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import random_model_on_gpu, llama_8b_config, step_times, decode_ahead_time, weight_bytes, copy_bandwidth, card_name
from minispec.model import Model

bw = copy_bandwidth()
print(card_name(), f"copy {bw/1e12:.2f} TB/s", flush=True)
be = CudaBackend()
cfg = llama_8b_config()
model = Model(cfg, random_model_on_gpu(cfg, be), be)
floor = weight_bytes(model.weights) / bw
sync = step_times(model, 512, ())[1]
ahead = decode_ahead_time(model, 512)
print(f"8B shapes: step with host {sync*1e3:.3f} ms ({sync/floor:.2f}x floor)  one step ahead {ahead*1e3:.3f} ms ({ahead/floor:.2f}x)  floor {floor*1e3:.3f}", flush=True)
