"""Device A/B of two kernel builds in one process, end to end: bench e2e's speculation rows (greedy, the default model)
with the work tree's kernels/ and with another directory's, by turns, so that the host's pace, which moves single runs
by +-10% between processes, weighs on both alike. Each switch drops the compiled modules and the captured graphs.
Host constants that must follow a kernel build are set per variant (VARIANT_CONSTANTS).

  PYTHONPATH=$PWD python3 notes/scripts/kernel_ab.py OTHER_KERNELS_DIR [ROUNDS]
"""
import sys
from pathlib import Path

import minispec.backends.cuda_backend as cuda_backend
from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, SpeculationRounds
from minispec.bench_gpu import card_name

# stop 32: the block instances' attention units of 2 rows (the work tree) against 4 (stop 31's kernels)
VARIANT_CONSTANTS = {"work": {}, "base": {"FUSED_BLOCK_GROUP_ROWS": 4}}
variants = {"work": cuda_backend.KERNELS, "base": Path(sys.argv[1]).resolve()}
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
defaults = {name: getattr(cuda_backend, name) for constants in VARIANT_CONSTANTS.values() for name in constants}
llm = LLM(device="cuda")
backend = llm.backend
params = SamplingParams(temperature=0, max_tokens=128)
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
runs = SpeculationRounds(llm, prompts, params)
for r in range(rounds):
    for tag in (("work", "base") if r % 2 == 0 else ("base", "work")):
        cuda_backend.KERNELS = variants[tag]
        for name, value in {**defaults, **VARIANT_CONSTANTS[tag]}.items():
            setattr(cuda_backend, name, value)
        backend.modules.clear(), backend.functions.clear(), backend.graphs.clear()
        runs.round(tag)
runs.report(variants, f"{card_name()} {rounds} rounds, medians (tokens/s): n-gram / plain")
