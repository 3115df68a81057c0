"""A tree-step gate for sampled sequences, by turns in one process: sampled n-gram speculation (temperature 0.7 unless named, 128
tokens) on bench e2e's input-grounded prompts over several seeds, with the drafter's gate for sampled sequences
(NgramDrafter.pays_sampled: tree steps that gave that many tokens each, or a match of weight strong_sampled) at each
value named ("pays" or "pays/strong", strong "inf": no match opens it; pays 0: never gated, the engine's rule from
stop 25 to 35; NGRAM_PAYS_SAMPLED since stop 36), against plain sampled decoding of the same prompt and seed in the
same turn. (Stop 36's calls patched NgramDrafter.pays to the same rule before
the drafter took pays_sampled.)

A sampled run's text depends on its seed (since stop 45 not on the trees: each token is drawn at its position,
minispec/verify.py), and how much of it copies the prompt moves the rate, so one seed says little about a gate.
Here each (prompt, gate) is the geometric mean over the seeds of n-gram / plain tokens/s (each rate the median of
3 timed runs after a warm-up), with the forwards a generation took and the tokens a forward (result.stats: the
device's stretches included). Every generation runs its 128 tokens (ignore_eos): a run that met its end early
would weigh its prefill more.

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/sampled_gate_ab.py [rounds] [gate,gate,...] [seeds] [temperature]
"""
import math
import statistics
import sys

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name, in_turn
from minispec.drafters import NGRAM_STRONG

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
NEVER = 2**31 - 1  # a `strong` no match weighs (the kernel's int32)


def gate(text: str) -> tuple[float, int]:
    """"pays" or "pays/strong" ("inf": strong matches never open the gate) -> (pays, strong)."""
    pays, _, strong = text.partition("/")
    return float(pays), NEVER if strong == "inf" else int(strong or NGRAM_STRONG)


GATES = [gate(g) for g in sys.argv[2].split(",")] if len(sys.argv) > 2 else [(0.0, NGRAM_STRONG), (3.0, NGRAM_STRONG)]
SEEDS = range(int(sys.argv[3]) if len(sys.argv) > 3 else 6)
TEMPERATURE = float(sys.argv[4]) if len(sys.argv) > 4 else 0.7

llm = LLM(device="cuda")
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
print(f"{card_name()}: sampled n-gram speculation, temperature {TEMPERATURE}, 128 tokens (ignore_eos), seeds {list(SEEDS)}, gates (pays, strong) {GATES}", flush=True)
ratios, trees = {}, {}
for r in range(ROUNDS):
    for gate_value in in_turn(GATES, r):
        for key, ids in prompts.items():
            for seed in SEEDS:
                params = SamplingParams(temperature=TEMPERATURE, seed=seed, max_tokens=128, ignore_eos=True)
                llm.use_drafter(None)
                plain, _ = timed_generate(llm, ids, params, repeats=3)
                llm.use_drafter("ngram")
                llm.engine.drafter.pays_sampled, llm.engine.drafter.strong_sampled = gate_value
                ngram, result = timed_generate(llm, ids, params, repeats=3)
                ratios.setdefault((gate_value, key), []).append(ngram / plain)
                trees.setdefault((gate_value, key), []).append((result.stats.steps, result.stats.tokens_per_step))
        llm.use_drafter(None)
        print(f"round {r} gate {gate_value}: " + "  ".join(
            f"{key} x{math.exp(statistics.fmean(math.log(v) for v in ratios[(gate_value, key)][-len(SEEDS):])):.2f}" for key in prompts), flush=True)
print("over all rounds: geometric mean of n-gram / plain per seed; forwards a generation, tokens a forward (means)")
for gate_value in GATES:
    cells = []
    for key in prompts:
        values, tree = ratios[(gate_value, key)], trees[(gate_value, key)]
        mean = math.exp(statistics.fmean(math.log(v) for v in values))
        cells.append(f"{key} x{mean:.2f} (min {min(values):.2f}, max {max(values):.2f}; {statistics.fmean(s for s, _ in tree):.1f} forwards of "
                     f"{statistics.fmean(t for _, t in tree):.2f} tokens)")
    print(f"gate {gate_value}: " + "  ".join(cells), flush=True)
