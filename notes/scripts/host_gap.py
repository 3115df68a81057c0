"""Device probe: a plain decode step with the host in the loop (forward + argmax to the host, as the engine and
bench e2e run it) against the same graph replayed back to back (host work overlapped: GPU time per step)."""
import sys
import numpy as np
sys.path.insert(0, ".")
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import random_model_on_gpu, llama_8b_config, smollm2_135m_config, step_times, weight_bytes, copy_bandwidth, card_name, require_gpu
from minispec.model import Model
from minispec.step import StepItem, build_plan
from minispec.tree import Tree

cp = require_gpu()
bw = copy_bandwidth()
print(card_name(), f"copy {bw/1e12:.2f} TB/s", flush=True)
smol = smollm2_135m_config()
be = CudaBackend()
for name, cfg in (("smollm2-shapes", smol), ("8B-shapes", llama_8b_config())):
    model = Model(cfg, random_model_on_gpu(cfg, be), be)
    floor = weight_bytes(model.weights) / bw
    sync = step_times(model, 512, ())[1]
    cache = model.new_cache(-(-(512 + 64) // 16) + 1, 16)
    table = []
    cache.prepare(table, 0, 512 + 64)
    plan = build_plan([StepItem.tree(table, 512, Tree(np.array([7]), [-1]))], 16)
    model.forward(plan, cache).argmax()
    s = be.stream
    times = []
    for _ in range(10):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(s)
        for _ in range(20):
            logits = model.forward(plan, cache)
        b.record(s)
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b) / 1e3 / 20)
    gpu = float(np.median(times))
    print(f"{name}: step with host {sync*1e3:.3f} ms ({sync/floor:.2f}x floor)  back-to-back replay {gpu*1e3:.3f} ms ({gpu/floor:.2f}x)  floor {floor*1e3:.3f}", flush=True)
    del model, cache
    be.graphs.clear()
