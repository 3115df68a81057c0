"""Device probe: time of the sampling kernels on one step's logits (the vocabularies of the default model and of
Llama 3). Host calls (greedy argmax, one sampled token, sampled tree verification at T = 16) wait for their result,
so their times include uploads, launch and the copy back; `kernel` lines time the sample_rows kernel alone (a
captured graph of 20 launches) for each filter; then greedy against sampled decode one step ahead (bench e2e's
lines) on random weights with the default model's shapes. Usage: PYTHONPATH=$PWD python3 notes/scripts/sampling_probe.py"""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec import SamplingParams
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, require_gpu, time_captured, time_gpu
from minispec.tree import Tree
from minispec.verify import verify_chosen

cp = require_gpu()
be = CudaBackend()
print(card_name())
rng = np.random.default_rng(0)
params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
for V in (49152, 128256):
    logits = cp.asarray(rng.normal(size=(16, V)).astype(np.float32) * 3)
    one = logits[:1]
    argmax = time_gpu(lambda: be.to_host(be.argmax_device(one)), 3, 20)
    argmax16 = time_gpu(lambda: be.to_host(be.argmax_device(logits)), 3, 20)
    sample = time_gpu(lambda: be.sample_rows(logits, [0], [params], [0.5]), 3, 20)
    tree = Tree(rng.integers(0, V, 16), [-1] + list(range(15)))
    verify = time_gpu(lambda: verify_chosen(tree, be.sample_rows(logits, range(16), [params] * 16, rng.random(16))), 3, 20)
    print(f"V = {V}: argmax 1 row {argmax*1e6:.1f} us, 16 rows {argmax16*1e6:.1f} us; sample 1 row {sample*1e6:.1f} us; "
          f"sampled verification T=16 (16 draws, the walk) {verify*1e6:.1f} us", flush=True)
    tokens = cp.empty(16, dtype=cp.int32)
    cluster = hasattr(be, "sampling_kernel")  # since stop 22 a row spreads over a cluster of blocks
    for rows, settings in ((1, dict(temperature=0.8)), (1, dict(temperature=0.8, top_k=50)), (1, dict(temperature=0.8, top_p=0.9)),
                           (1, dict(temperature=0.8, min_p=0.05)), (1, dict(temperature=0.8, top_k=50, top_p=0.9)),
                           (16, dict(temperature=0.8, top_k=50, top_p=0.9))):
        p = SamplingParams(**settings)
        packed = be.put([(r, p.temperature, p.top_k, p.top_p, p.min_p, 0.5) for r in range(rows)], np.float64)
        if cluster:
            from minispec.backends.cuda_sampling import SAMPLE_CLUSTER, SAMPLE_THREADS

            kernel, shared = be.sampling_kernel("sample_rows", V)
            launch = lambda: be.launch(kernel, (SAMPLE_CLUSTER, rows), (SAMPLE_THREADS,), (logits, packed, tokens, np.uint64(0), np.int32(V), np.uint64(0), np.uint64(0)), shared)  # noqa: E731
        else:
            probs = cp.empty((16, V), dtype=cp.float32)
            kernel = be.kernel("sampling_draw.cu", "sample_rows")
            launch = lambda: kernel((rows,), (1024,), (logits, packed, probs, tokens, np.int32(V)))  # noqa: E731
        t = time_captured(launch)
        print(f"  kernel sample_rows, {rows} row(s), {settings}: {t*1e6:.1f} us", flush=True)

# sampled decode one step ahead on random weights with the default model's shapes (bench e2e's line)
from minispec.bench_gpu import decode_ahead_time, random_model_on_gpu, smollm2_135m_config
from minispec.model import Model

config = smollm2_135m_config()
model = Model(config, random_model_on_gpu(config, be), be)
greedy = decode_ahead_time(model, 512)
sampled = decode_ahead_time(model, 512, params=params)
print(f"default model's shapes, decode one step ahead at 512 keys: greedy {greedy*1e6:.1f} us, sampled (t 0.8, top-k 50, top-p 0.9) "
      f"{sampled*1e6:.1f} us ({sampled/greedy:.3f}x)", flush=True)
