"""Device probe: plain decoding's tokens/s on bench e2e's input-grounded prompts, greedy and sampled (temperature 0.7, the
geometric mean over seeds 0-3), each the median of 5 runs (bench.timed_generate); one line tagged argv[1], for A/Bs
of builds run by turns (.old beside the tree). Needs the default model (MINISPEC_WEIGHTS).

    PYTHONPATH=$PWD python3 notes/scripts/sampled_rate.py TAG
"""
import dataclasses
import sys

import numpy as np

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
llm = LLM(device="cuda")
out = []
for label, params, seeds in (("greedy", SamplingParams(temperature=0, max_tokens=128), (None,)), ("sampled", SamplingParams(temperature=0.7, max_tokens=128, ignore_eos=True), (0, 1, 2, 3))):
    for key in INPUT_GROUNDED:
        ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
        rates = [timed_generate(llm, ids, params if s is None else dataclasses.replace(params, seed=s), repeats=5)[0] for s in seeds]
        out.append(f"{label} {key} {np.exp(np.mean(np.log(rates))):.0f}")
print(sys.argv[1], " | ".join(out), flush=True)
