"""Device A/B, end to end: bench e2e's speculation rows (greedy, the default model, the input-grounded prompts) with
the n-gram drafter's work on the device (Engine.speculate_on_device) and on the host between the steps, by turns in
one process, so that the host's pace weighs on both alike; plain greedy decoding (the ratios' base) runs in each turn.

  PYTHONPATH=$PWD python3 notes/scripts/device_draft_ab.py [ROUNDS]
"""
import sys

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, SpeculationRounds
from minispec.bench_gpu import card_name

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
llm = LLM(device="cuda")
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
runs = SpeculationRounds(llm, prompts, SamplingParams(temperature=0, max_tokens=128))
for r in range(rounds):
    for tag in (("device", "host") if r % 2 == 0 else ("host", "device")):
        llm.engine.device_drafting_enabled = tag == "device"
        runs.round(tag)
runs.report(("device", "host"), f"{card_name()} {rounds} rounds, medians (tokens/s): n-gram / plain (target forwards after the prefill)")
