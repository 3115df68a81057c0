"""Device probe: greedy generation with a draft model (the default model's first K layers, `self:K`) against plain
greedy decoding, on the default model and the built-in input-grounded prompts: tokens/s (medians of ROUNDS after a
warm-up, 128 tokens) and tokens a target forward. Stop 39 ran it on the final code and, in a second process, on the
code before the draft's tree levels were ranked on the device (`.old`: git archive 1f3c822 minispec kernels):

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/draft_model_gpu.py [K] [ROUNDS]
"""
import sys
import time

import numpy as np

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS
from minispec.bench_gpu import card_name

K = int(sys.argv[1]) if len(sys.argv) > 1 else 8
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
llm = LLM(device="cuda")
print(f"# draft_model_gpu on {card_name()}: self:{K} greedy, default tree budget, 128 tokens; tokens/s (tokens a forward)", flush=True)
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
results = {}
for r in range(ROUNDS):
    for name, draft in (("plain", None), (f"self:{K}", f"self:{K}")):
        llm.use_drafter(draft)
        for key, ids in prompts.items():
            llm.generate(ids, params)  # warm-up (graphs, the draft's cache)
            start = time.perf_counter()
            result = llm.generate(ids, params)
            rate = len(result.token_ids) / (time.perf_counter() - start)
            results.setdefault((name, key), []).append((rate, result.stats.tokens_per_step))
print("medians:")
for key in prompts:
    cells = []
    for name in ("plain", f"self:{K}"):
        rates, per = zip(*results[(name, key)])
        cells.append(f"{name} {np.median(rates):7.0f} tok/s ({np.median(per):.2f})")
    print(f"{key:10s} " + "  ".join(cells), flush=True)
