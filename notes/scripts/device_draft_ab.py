"""Device A/B, end to end: bench e2e's speculation rows (greedy, the default model, the input-grounded prompts) with
the n-gram drafter's work on the device (Engine.speculate_on_device) and on the host between the steps, by turns in
one process, so that the host's pace weighs on both alike; plain greedy decoding (the ratios' base) runs in each turn.

  PYTHONPATH=$PWD python3 notes/scripts/device_draft_ab.py [ROUNDS]
"""
import statistics
import sys

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
llm = LLM(device="cuda")
params = SamplingParams(temperature=0, max_tokens=128)
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
rates, tokens, steps = {}, {}, {}
for r in range(rounds):
    for tag in (("device", "host") if r % 2 == 0 else ("host", "device")):
        llm.engine.device_drafting_enabled = tag == "device"
        for key, ids in prompts.items():
            for draft in (None, "ngram"):
                llm.use_drafter(draft)
                rate, result = timed_generate(llm, ids, params, repeats=3)
                rates.setdefault((tag, key, draft), []).append(rate)
                tokens.setdefault((key, draft), set()).add(tuple(result.token_ids))
                steps.setdefault((tag, key, draft), set()).add(result.stats.steps)
        llm.use_drafter(None)
print(card_name(), f"{rounds} rounds, medians (tokens/s): n-gram / plain (target forwards after the prefill)")
for tag in ("device", "host"):
    cells = []
    for key in prompts:
        plain, ngram = (statistics.median(rates[(tag, key, d)]) for d in (None, "ngram"))
        cells.append(f"{key} {ngram:.0f} / {plain:.0f} = {ngram / plain:.2f}x ({sorted(steps[(tag, key, 'ngram')])} steps)")
    print(f"{tag:<6} " + "; ".join(cells))
print("the same tokens in every run of a prompt and decoding:", all(len(v) == 1 for v in tokens.values()))
