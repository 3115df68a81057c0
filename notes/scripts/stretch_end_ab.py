"""The plain step at a device-drafted stretch's end, by turns in one process: bench e2e's speculation rows (greedy,
the default model) on the 12 stored prompts (SPEC_PROMPTS and ngram_offline.py's MORE_PROMPTS), with the plain step
launched as soon as the host reads the record that ends the stretch ("end", stop 36: Engine.speculate_on_device
returns it to decode_ahead) and without ("stop35": decode_ahead launches it from the host once the stretch has
returned; emulated here by declining the stretch's launch_plain call). Plain greedy decoding, the ratios' base,
runs in each turn.

  PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/stretch_end_ab.py [ROUNDS]
"""
import sys

sys.path.insert(0, "notes/scripts")
from minispec import LLM, SamplingParams  # noqa: E402
from minispec.bench import SPEC_PROMPTS, SpeculationRounds  # noqa: E402
from minispec.bench_gpu import card_name  # noqa: E402
from minispec.engine import Engine  # noqa: E402
from ngram_offline import MORE_PROMPTS  # noqa: E402

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
variant = {"tag": "end"}
launch_plain = Engine.launch_plain


def maybe_launch_plain(self, rows, ahead=0, tokens=None):
    if variant["tag"] == "stop35" and sys._getframe(1).f_code.co_name == "speculate_on_device":
        return None  # the stretch returns True and decode_ahead launches the plain step itself, as before stop 36
    return launch_plain(self, rows, ahead, tokens)


Engine.launch_plain = maybe_launch_plain
llm = LLM(device="cuda")
prompts = {key: llm.chat_prompt([{"role": "user", "content": text}]) for key, text in {**SPEC_PROMPTS, **MORE_PROMPTS}.items()}
runs = SpeculationRounds(llm, prompts, SamplingParams(temperature=0, max_tokens=128))
for r in range(rounds):
    for tag in (("end", "stop35") if r % 2 == 0 else ("stop35", "end")):
        variant["tag"] = tag
        runs.round(tag)
runs.report(("end", "stop35"), f"{card_name()} {rounds} rounds, medians (tokens/s): n-gram / plain (target forwards after the prefill)")
