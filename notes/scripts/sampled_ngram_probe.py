"""Device probe: why sampled n-gram speculation runs below plain sampled decoding in bench e2e (0.85-0.92x since stop
45). On bench e2e's input-grounded prompts at temperature 0.7, 128 tokens, seeds 0..SEEDS-1, by turns per prompt and
seed, each the median of 3 runs (bench.timed_generate): plain sampled decoding, and the n-gram drafter with

  gate3    the rule (NGRAM_PAYS_SAMPLED 3: a sampled sequence drafts while its tree steps gave 3 tokens each, and at
           strong matches; until its first tree step it drafts freely)
  strong   sampled sequences draft only at strong matches (pays infinite), the first tree too
  closed   sampled sequences never draft (the drafter asked after every step, as the rule asks it)

Per variant and prompt: the geometric mean of tokens/s over the seeds against plain's, tokens a forward, and device
stretches (Engine.speculate_on_device calls) a run. Needs the default model (MINISPEC_WEIGHTS).

    PYTHONPATH=$PWD python3 notes/scripts/sampled_ngram_probe.py [seeds]
"""
import dataclasses
import math
import sys

import numpy as np

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name, in_turn
from minispec.engine import Engine

SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
llm = LLM(device="cuda")
stretches = [0]
speculate = Engine.speculate_on_device


def counting(self, *args, **kwargs):
    stretches[0] += 1
    return (yield from speculate(self, *args, **kwargs))


Engine.speculate_on_device = counting


def apply(variant: str) -> None:
    llm.use_drafter(None if variant == "plain" else "ngram")
    drafter = llm.engine.drafter
    if variant == "strong":
        drafter.pays_sampled = math.inf
    if variant == "closed":
        pays = drafter.pays
        drafter.pays = lambda seq, continuations: seq.params.greedy and pays(seq, continuations)


VARIANTS = ["plain", "gate3", "strong", "closed"]
params = SamplingParams(temperature=0.7, max_tokens=128, ignore_eos=True)
print(f"# sampled_ngram_probe on {card_name()}: temperature 0.7, 128 tokens, seeds 0-{SEEDS - 1}", flush=True)
for key in INPUT_GROUNDED:
    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
    logs = {v: [] for v in VARIANTS}
    per_forward = {v: [] for v in VARIANTS}
    runs = {v: [] for v in VARIANTS}
    for seed in range(SEEDS):
        run = dataclasses.replace(params, seed=seed)
        for variant in in_turn(VARIANTS, seed):
            apply(variant)
            stretches[0] = 0
            rate, result = timed_generate(llm, ids, run, repeats=3)
            logs[variant].append(np.log(rate))
            per_forward[variant].append(result.stats.tokens_per_step)
            runs[variant].append(stretches[0] / 4)  # a warm-up and 3 timed runs
    plain = np.exp(np.mean(logs["plain"]))
    for variant in VARIANTS:
        rate = np.exp(np.mean(logs[variant]))
        print(f"{key:<10} {variant:<7} {rate:6.0f} tok/s  x{rate / plain:.3f}  {np.mean(per_forward[variant]):.2f} tokens/forward"
              f"  {np.mean(runs[variant]):.1f} device stretches a run", flush=True)
