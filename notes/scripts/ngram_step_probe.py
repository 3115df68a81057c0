"""Device probe: the ngram_advance kernel's GPU time (kernels/ngram_step.cu) on the default model's cache shapes
(30 layers, 3 KV heads of 64, pages of 16), a history of HISTORY tokens that copies spans of itself, and argmax ids
that accept a random path of each drafted tree; CUDA events around each launch, medians over the steps.

  PYTHONPATH=$PWD python3 notes/scripts/ngram_step_probe.py [HISTORY ...]
"""
import sys

import numpy as np

from minispec import SamplingParams
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import card_name
from minispec.drafters import NGRAM_BUDGET, NgramDrafter
from minispec.kv_cache import KVCache
from minispec.ngram_device import NgramParams, state_row, tree_rows
from minispec.step import StepItem, build_plan_one, pow2_bucket
from minispec.tree import Tree


class Owner:
    pass


def copying_text(rng, length: int, vocab: int = 2000) -> list[int]:
    """Fresh tokens, with spans of 8-40 copied from earlier in it a third of the time."""
    tokens = rng.integers(0, vocab, 16).tolist()
    while len(tokens) < length:
        if rng.random() < 0.33:
            start = int(rng.integers(0, len(tokens) - 8))
            tokens += tokens[start : start + int(rng.integers(8, 40))]
        else:
            tokens += rng.integers(0, vocab, int(rng.integers(1, 12))).tolist()
    return tokens[:length]


cuda, rng = CudaBackend(), np.random.default_rng(0)
cp = cuda.cp
# a 100 µs spin ahead of each timed launch: the events then time the GPU's work, not the host's launch
spin = cp.RawKernel(r"""extern "C" __global__ void spin(long long cycles) {
    long long start = clock64(); while (clock64() - start < cycles) {} }""", "spin")
for history in [int(a) for a in sys.argv[1:]] or [200, 1000, 4000]:
    max_len = history + 2000
    cache = KVCache(cuda, 30, max_len // 16 + 64, 3, 16, 64)
    owner, drafter = Owner(), NgramDrafter(NGRAM_BUDGET)
    N, W = pow2_bucket(NGRAM_BUDGET.nodes), cache.pages_for(max_len + 64) + 1

    class Seq:
        tokens, params = copying_text(rng, history), SamplingParams(temperature=0)

    tree = drafter.propose([Seq], [max_len])[0] if len(Seq.tokens) > 1 else Tree.single(Seq.tokens[-1])
    tree = tree if len(tree) > 1 else Tree(Seq.tokens[-1:] + Seq.tokens[:15], [-1] + list(range(15)))
    L, table = len(Seq.tokens) - 1, []
    cache.prepare(table, L, 3 * N)
    buffers = cuda.ngram_buffers(owner, cache, N, W, max_len + 4 * N)
    cuda.ngram_load(buffers, Seq.tokens, state_row(L, len(tree), 1, 2, 0, 0), tree_rows(tree), build_plan_one(StepItem.tree(table, L, tree), 16))
    params = NgramParams.of(drafter, max_len)
    times, sizes, taken = [], [], []
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    for step in range(60):
        T = int(cuda.to_host(buffers.state)[1])
        tokens, parents = cuda.to_host(buffers.tree)[:, :T]
        ids = rng.integers(0, 2000, N).astype(np.int32)
        node = 0
        while True:  # a random path: each drafted child taken with probability 0.8
            kids = [c for c in range(T) if parents[c] == node]
            if not kids or rng.random() > 0.8:
                break
            child = int(rng.choice(kids))
            ids[node], node = tokens[child], child
        device_ids = cp.asarray(ids)
        with cuda.stream:
            spin((1,), (1,), (np.int64(180000),))
        start.record(cuda.stream)
        cuda.ngram_advance(cache, buffers, device_ids, step % 2, params)
        stop.record(cuda.stream)
        stop.synchronize()
        record = cuda.ngram_read(buffers, step % 2)
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1000)
        sizes.append(int(record[1]))
        taken.append(int(record[0]))
        L = int(record[2])
        pages = len(table)
        cache.prepare(table, L, 3 * N)
        if len(table) != pages:
            cuda.ngram_table(buffers, table)
    times = np.array(times[5:])
    print(f"{card_name()} history {history}: ngram_advance median {np.median(times):.1f} µs (min {times.min():.1f}, max "
          f"{times.max():.1f}); trees of {np.mean(sizes):.1f} nodes, {np.mean(taken):.2f} tokens a step")
