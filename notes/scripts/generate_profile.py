"""Where a short generation's time goes: prefill vs the decode steps, per bench prompt, plain and n-gram tree,
with prefill steps replayed from captured graphs (PREFILL_GRAPH_ROWS) and run eagerly.

python3 notes/scripts/generate_profile.py   (on the device, with the default model fetched; see gpu_session.sh)
"""

import time

import cupy as cp

from minispec import LLM, SamplingParams
from minispec.backends import cuda_backend
from minispec.bench import SPEC_PROMPTS

llm = LLM(device="cuda")
print(llm.backend.describe())
engine, spent = llm.engine, {}
prefill = engine.prefill


def timed_prefill(seqs):
    cp.cuda.get_current_stream().synchronize()
    start = time.perf_counter()
    out = prefill(seqs)
    llm.backend.stream.synchronize()
    spent["prefill"] = time.perf_counter() - start
    return out


engine.prefill = timed_prefill
limit = cuda_backend.PREFILL_GRAPH_ROWS
print(f"{'prompt':<10} {'prefill':<8} {'decoding':<7} {'prompt':>6} {'tokens':>6} {'steps':>5} {'total ms':>9} {'prefill ms':>10} {'rest ms':>8} {'tok/s':>7}")
for name, text in SPEC_PROMPTS.items():
    ids = llm.chat_prompt([{"role": "user", "content": text}])
    for rows, label in ((0, "eager"), (limit, "graph")):
        cuda_backend.PREFILL_GRAPH_ROWS = rows
        for draft in (None, "ngram"):
            llm.use_drafter(draft)
            params = SamplingParams(temperature=0, max_tokens=128)
            times = []
            for _ in range(4):  # the first run captures what the others replay
                start = time.perf_counter()
                result = llm.generate(ids, params)
                times.append((time.perf_counter() - start, spent["prefill"]))
            total, pre = sorted(times[1:])[1]
            n = len(result.token_ids)
            print(f"{name:<10} {label:<8} {draft or 'plain':<7} {len(ids):>6} {n:>6} {result.stats.steps:>5} {total * 1e3:>9.2f} "
                  f"{pre * 1e3:>10.2f} {(total - pre) * 1e3:>8.2f} {n / total:>7.0f}")
cuda_backend.PREFILL_GRAPH_ROWS = limit
