"""The n-gram drafter's gate by turns in one process: bench e2e's speculation rows (greedy, the default model) on
the 12 stored prompts (SPEC_PROMPTS and ngram_offline.py's MORE_PROMPTS) with the committed settings (pays 4.5,
strong 10 since stop 34) and stop 33's (3, 8), so that the host's pace weighs on both alike; plain greedy decoding
(the ratios' base) runs in each turn. The gate's settings are the drafter's (NgramDrafter(pays=, strong=)), which
the device's drafting takes too (NgramParams.of).

  PYTHONPATH=$PWD python3 notes/scripts/gate_ab.py [ROUNDS]
"""
import sys

sys.path.insert(0, "notes/scripts")
from minispec import LLM, SamplingParams  # noqa: E402
from minispec.bench import SPEC_PROMPTS, SpeculationRounds  # noqa: E402
from minispec.bench_gpu import card_name  # noqa: E402
from minispec.drafters import NGRAM_PAYS, NGRAM_STRONG  # noqa: E402
from ngram_offline import MORE_PROMPTS  # noqa: E402

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
GATES = {"now": (NGRAM_PAYS, NGRAM_STRONG), "stop33": (3.0, 8)}
llm = LLM(device="cuda")
prompts = {key: llm.chat_prompt([{"role": "user", "content": text}]) for key, text in {**SPEC_PROMPTS, **MORE_PROMPTS}.items()}
runs = SpeculationRounds(llm, prompts, SamplingParams(temperature=0, max_tokens=128))
use_drafter, gate = llm.use_drafter, GATES["now"]


def use_gated_drafter(draft, *args, **kwargs):
    use_drafter(draft, *args, **kwargs)
    if draft == "ngram":
        llm.engine.drafter.pays_rate, llm.engine.drafter.strong = gate


llm.use_drafter = use_gated_drafter
for r in range(rounds):
    for tag in (("now", "stop33") if r % 2 == 0 else ("stop33", "now")):
        gate = GATES[tag]
        runs.round(tag)
runs.report(tuple(GATES), f"{card_name()} {rounds} rounds, medians (tokens/s): n-gram / plain (target forwards after the prefill); "
            f"gates (pays, strong): {GATES}")
