"""Device probe: a batch of one greedy and one sampled request (temperature 0.7) with a draft model's chain
(`self:K`, the default budget 4,3,1) on the built-in input-grounded prompts: each kind's chains proposed apart (stop
55), against the level-by-level path such a batch took before (ModelDrafter.device_chains off), by turns; tokens/s
of the batch (both outputs' tokens over the wall time, medians of ROUNDS after a warm-up, 128 tokens each) and whether
the outputs agree between the two paths.

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/draft_mixed_batch.py [K] [ROUNDS]
"""
import sys
import time

import numpy as np

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS
from minispec.bench_gpu import card_name

K = int(sys.argv[1]) if len(sys.argv) > 1 else 8
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
llm = LLM(device="cuda", draft=f"self:{K}")
params = [SamplingParams(temperature=0, max_tokens=128, ignore_eos=True),
          SamplingParams(temperature=0.7, seed=1, max_tokens=128, ignore_eos=True)]
print(f"# draft_mixed_batch on {card_name()}: self:{K}, budget {llm.engine.drafter.budget}, a greedy and a sampled request a batch")
rates, outputs = {}, {}
for r in range(ROUNDS):
    for key in INPUT_GROUNDED:
        ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
        for name, chains in (("chains apart", True), ("level by level", False)):
            llm.engine.drafter.device_chains = chains
            llm.generate([ids, ids], params)  # warm-up
            start = time.perf_counter()
            results = llm.generate([ids, ids], params)
            rates.setdefault((key, name), []).append(sum(len(x.token_ids) for x in results) / (time.perf_counter() - start))
            outputs.setdefault((key, name), [x.token_ids for x in results])
for key in INPUT_GROUNDED:
    same = outputs[(key, "chains apart")] == outputs[(key, "level by level")]
    print(f"{key:10s} " + "  ".join(f"{name} {np.median(rates[(key, name)]):6.0f} tok/s" for name in ("chains apart", "level by level"))
          + f"  (outputs equal: {same})")
