"""Device A/B of n-gram tree speculation end to end: bench e2e's speculation rows alone (greedy), for the build in
the current directory. Run it in two trees by turns in one call (the host's pace moves single runs by +-10%):

  for tree in . .base . .base; do (cd $tree && PYTHONPATH=/root/site:$PWD python3 $OLDPWD/notes/scripts/ngram_ab.py TAG); done

Prints, per input-grounded prompt, plain and n-gram tokens/s (medians of REPEATS generations after a warm-up,
bench.timed_generate) and their ratio; then plain greedy decode of the chat prompt (256 tokens), bench e2e's rate.
"""

import sys

from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name, speculation_rates

REPEATS = 5  # as speculation_rates
tag = sys.argv[1] if sys.argv[1:] else "build"
llm = LLM(device="cuda")
cells = []
for key, plain, ngram, per_forward in speculation_rates(llm, SamplingParams(temperature=0, max_tokens=128)):
    cells.append(f"{key} {plain:.0f} / {ngram:.0f} tok/s x{ngram / plain:.2f} ({per_forward:.2f} a forward)")
ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["chat"]}])
rate, _ = timed_generate(llm, ids, SamplingParams(temperature=0, max_tokens=256, ignore_eos=True), repeats=REPEATS)
print(f"{tag:<5} {card_name()}: " + "; ".join(cells) + f"; plain greedy {rate:.0f} tok/s", flush=True)
