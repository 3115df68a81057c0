"""Device probe: where a greedy draft-model generation spends the host's time (cProfile over GENERATES generates of
one input-grounded prompt after a warm-up, default model drafting for itself with `self:K`), with the steps, the
draft forwards and the wall time a step:

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/draft_model_profile.py [K] [GENERATES]
"""
import cProfile
import pstats
import sys
import time

from minispec import LLM, SamplingParams, drafters
from minispec.bench import SPEC_PROMPTS
from minispec.bench_gpu import card_name

K = int(sys.argv[1]) if len(sys.argv) > 1 else 8
GENERATES = int(sys.argv[2]) if len(sys.argv) > 2 else 3
llm = LLM(device="cuda", draft=f"self:{K}")
ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["rewrite"]}])
params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
llm.generate(ids, params)  # warm-up: graphs, kernels
forwards = [0]
forward = drafters.ModelDrafter.forward


def counted(self, items, counts, greedy, grows):
    forwards[0] += 1
    return forward(self, items, counts, greedy, grows)


drafters.ModelDrafter.forward = counted
profile = cProfile.Profile()
steps = tokens = 0
start = time.perf_counter()
profile.enable()
for _ in range(GENERATES):
    result = llm.generate(ids, params)
    steps, tokens = steps + result.stats.steps, tokens + len(result.token_ids)
profile.disable()
wall = time.perf_counter() - start
print(f"# draft_model_profile on {card_name()}: self:{K} greedy, {GENERATES} x 128 tokens: {tokens / wall:.0f} tokens/s, "
      f"{steps} steps ({wall / steps * 1e3:.2f} ms a step), {forwards[0] / steps:.2f} draft forwards a step", flush=True)
stats = pstats.Stats(profile)
stats.sort_stats("tottime").print_stats(25)
stats.sort_stats("cumulative").print_stats(35)
