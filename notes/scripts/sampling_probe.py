"""Device probe: time of the sampling kernels on one step's logits (the vocabularies of the default model and of
Llama 3). Host calls (greedy argmax, one sampled token, sampled tree verification at T = 16) wait for their result,
so their times include uploads, launch and the copy back; `kernel` lines time the sample_rows kernel alone (a
captured graph of 20 launches) for each filter."""
import sys

import numpy as np

sys.path.insert(0, ".")
from minispec import SamplingParams
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name, require_gpu, time_captured, time_gpu
from minispec.tree import Tree

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
    verify = time_gpu(lambda: be.verify_tree(logits, 0, tree, params, rng.random(17)), 3, 20)
    print(f"V = {V}: argmax 1 row {argmax*1e6:.1f} us, 16 rows {argmax16*1e6:.1f} us; sample 1 row {sample*1e6:.1f} us; "
          f"verify_tree T=16 (chain) {verify*1e6:.1f} us", flush=True)
    probs = cp.empty((1, V), dtype=cp.float32)
    tokens = cp.empty(1, dtype=cp.int32)
    for settings in (dict(temperature=0.8), dict(temperature=0.8, top_k=50), dict(temperature=0.8, top_p=0.9), dict(temperature=0.8, min_p=0.05),
                     dict(temperature=0.8, top_k=50, top_p=0.9)):
        p = SamplingParams(**settings)
        args = (logits, be.put([(0, p.temperature, p.top_k, p.top_p, p.min_p, 0.5)], np.float64), probs, tokens, np.int32(V))
        kernel = be.kernel("sampling.cu", "sample_rows")
        t = time_captured(lambda: kernel((1,), (1024,), args))
        print(f"  kernel sample_rows {settings}: {t*1e6:.1f} us", flush=True)
