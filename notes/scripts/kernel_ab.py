"""Device A/B of two kernel builds in one process, end to end: bench e2e's speculation rows (greedy, the default model)
with the work tree's kernels/ and with another directory's, by turns, so that the host's pace, which moves single runs
by +-10% between processes, weighs on both alike. Each switch drops the compiled modules and the captured graphs.
Host constants that must follow a kernel build are set per variant (VARIANT_CONSTANTS).

  PYTHONPATH=$PWD python3 notes/scripts/kernel_ab.py OTHER_KERNELS_DIR [ROUNDS]
"""
import statistics
import sys
from pathlib import Path

import minispec.backends.cuda_backend as cuda_backend
from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
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
rates, tokens = {}, {}
for r in range(rounds):
    for tag in (("work", "base") if r % 2 == 0 else ("base", "work")):
        cuda_backend.KERNELS = variants[tag]
        for name, value in {**defaults, **VARIANT_CONSTANTS[tag]}.items():
            setattr(cuda_backend, name, value)
        backend.modules.clear(), backend.functions.clear(), backend.graphs.clear()
        for key, ids in prompts.items():
            for draft in (None, "ngram"):
                llm.use_drafter(draft)
                rate, result = timed_generate(llm, ids, params, repeats=3)
                rates.setdefault((tag, key, draft), []).append(rate)
                tokens.setdefault((key, draft), set()).add(tuple(result.token_ids))
        llm.use_drafter(None)
print(card_name(), f"{rounds} rounds, medians (tokens/s): n-gram / plain")
for tag in variants:
    cells = []
    for key in prompts:
        plain, ngram = (statistics.median(rates[(tag, key, d)]) for d in (None, "ngram"))
        cells.append(f"{key} {ngram:.0f} / {plain:.0f} = {ngram / plain:.2f}x")
    print(f"{tag:<5} " + "; ".join(cells))
print("the same tokens in every run of a prompt and decoding:", all(len(v) == 1 for v in tokens.values()))
