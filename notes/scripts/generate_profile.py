"""Where a short generation's time goes: prefill vs the decode steps, per bench prompt: plain decoding with the
prefill run eagerly and replayed from a captured graph (CudaBackend.prefill_graph_rows); n-gram tree speculation
step by step and with its stretches decoded one step ahead (Engine.decode_ahead). `long`: instead, the prefill
of prompts of 150-500 tokens (one engine chunk), replayed up to 128 rows (the limit of large models) and up to
512 (small models' since stop 15).

python3 notes/scripts/generate_profile.py [long]   (on the device, with the default model fetched; see gpu_session.sh)
"""

import sys
import time
from pathlib import Path

import cupy as cp

from minispec import LLM, SamplingParams
from minispec.backends.cuda_backend import PREFILL_GRAPH_ROWS
from minispec.bench import SPEC_PROMPTS

sys.path.insert(0, str(Path(__file__).parent))
from ngram_offline import MORE_PROMPTS  # noqa: E402

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
if "long" in sys.argv:
    text = " ".join(SPEC_PROMPTS.values()) * 4
    words = llm.tokenizer.encode(text)
    print(f"{'prompt':>6} {'prefill ms, <= 128 rows replayed':>32} {'<= 512 rows replayed':>21}")
    for n in (150, 250, 400, 500):
        row = []
        for limit in (PREFILL_GRAPH_ROWS, None):
            llm.backend.prefill_graph_limit = limit
            runs = []
            for _ in range(4):  # the first captures what the others replay
                llm.generate(words[:n], SamplingParams(temperature=0, max_tokens=1))
                runs.append(spent["prefill"])
            row.append(sorted(runs[1:])[1])
        print(f"{n:>6} {row[0] * 1e3:>32.2f} {row[1] * 1e3:>21.2f}")
    sys.exit()
# (prefill, drafter, decode one step ahead where nothing is drafted)
configs = [("eager", None, True), ("graph", None, True), ("graph", "ngram", False), ("graph", "ngram", True)]
print(f"{'prompt':<10} {'prefill':<8} {'decoding':<14} {'prompt':>6} {'tokens':>6} {'steps':>5} {'total ms':>9} {'prefill ms':>10} {'rest ms':>8} {'tok/s':>7}")
totals = {}
for name, text in {**SPEC_PROMPTS, **MORE_PROMPTS}.items():
    ids = llm.chat_prompt([{"role": "user", "content": text}])
    for prefill_kind, draft, ahead in configs:
        llm.backend.prefill_graph_limit = None if prefill_kind == "graph" else 0
        llm.use_drafter(draft)
        engine.decode_ahead_enabled = ahead
        params = SamplingParams(temperature=0, max_tokens=128)
        times = []
        for _ in range(4):  # the first run captures what the others replay
            start = time.perf_counter()
            result = llm.generate(ids, params)
            times.append((time.perf_counter() - start, spent["prefill"]))
        total, pre = sorted(times[1:])[1]
        n = len(result.token_ids)
        label = (draft or "plain") + ("" if ahead or not draft else " no ahead")
        totals[(prefill_kind, label)] = totals.get((prefill_kind, label), 0.0) + total
        print(f"{name:<10} {prefill_kind:<8} {label:<14} {len(ids):>6} {n:>6} {result.stats.steps:>5} {total * 1e3:>9.2f} "
              f"{pre * 1e3:>10.2f} {(total - pre) * 1e3:>8.2f} {n / total:>7.0f}")
llm.backend.prefill_graph_limit = None
engine.decode_ahead_enabled = True
plain = totals[("graph", "plain")]
print("all prompts, total ms: " + ", ".join(f"{p} {d} {t * 1e3:.1f} (plain / it {plain / t:.2f}x)" for (p, d), t in totals.items()))
