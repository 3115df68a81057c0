"""target_distribution and top_indices against the form before stop 37 (a whole-row stable sort every call, read from
git at REV): the same bits on random rows (ties and flat rows included), and the time of one 49,152-token row.

    PYTHONPATH=$PWD python3 notes/scripts/target_distribution_probe.py [REV]
"""

import subprocess
import sys
import time

import numpy as np

from minispec import sampling

REV = sys.argv[1] if len(sys.argv) > 1 else "3840dab"
source = subprocess.run(["git", "show", f"{REV}:minispec/sampling.py"], capture_output=True, text=True, check=True).stdout
old = {}
exec(compile(source.replace("from .errors import MinispecError", "from minispec.errors import MinispecError"), "old_sampling", "exec"), old)

rng = np.random.default_rng(3)
for trial in range(8000):
    V = int(rng.choice([1, 2, 5, 17, 300, 2047, 4096, 20000]))
    x = rng.normal(size=V) * rng.choice([0.01, 0.1, 0.5, 3, 10])
    if trial % 3 == 0:
        x = np.round(x, 0)
    if trial % 7 == 0:
        x = np.zeros(V)
    params = sampling.SamplingParams(temperature=float(rng.choice([0.3, 0.7, 1.0, 2.0, 50.0])), top_k=int(rng.choice([0, 0, 1, 3, 50, 64, 65, V, V + 5])),
                                     top_p=float(rng.choice([1.0, 1.0, 0.5, 0.9, 0.99, 0.999999, 0.01])), min_p=float(rng.choice([0.0, 0.0, 0.05])))
    assert np.array_equal(sampling.target_distribution(x, params), old["target_distribution"](x, params)), (trial, V, params)
print(f"target_distribution: the same bits as {REV}'s in 8000 random rows")


def ms(f, *args, reps=20):
    start = time.perf_counter()
    for _ in range(reps):
        f(*args)
    return (time.perf_counter() - start) / reps * 1e3


for scale in (3, 0.3):  # peaked and flat rows
    x = rng.normal(size=49152) * scale
    for params in [sampling.SamplingParams(temperature=0.7), sampling.SamplingParams(temperature=0.7, top_p=0.9),
                   sampling.SamplingParams(temperature=0.8, top_k=50, top_p=0.9), sampling.SamplingParams(temperature=1.0, top_p=0.95)]:
        print(f"49,152 tokens, logits x {scale}, temperature {params.temperature}, top-k {params.top_k}, top-p {params.top_p}: "
              f"{ms(sampling.target_distribution, x, params):.2f} ms ({REV}: {ms(old['target_distribution'], x, params):.2f})")
x = rng.normal(size=49152)
print(f"a draft node's 4 most probable children: top_indices {ms(sampling.top_indices, x, 4):.2f} ms, "
      f"the whole stable sort {ms(lambda: np.argsort(-x, kind='stable')[:4]):.2f} ms")
