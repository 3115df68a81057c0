"""A tree-step gate for sampled sequences, by turns in one process: sampled n-gram speculation (temperature 0.7, 128
tokens) on bench e2e's input-grounded prompts over several seeds, with the drafter's gate for sampled sequences
(NgramDrafter.pays_sampled: tree steps that gave that many tokens each, or a strong match) at each value named (0:
never gated, the engine's rule from stop 25 to 35; NGRAM_PAYS_SAMPLED since stop 36), against plain sampled decoding
of the same prompt and seed in the same turn. (Stop 36's calls patched NgramDrafter.pays to the same rule before
the drafter took pays_sampled.)

A sampled run's text depends on its seed (since stop 45 not on the trees: each token is drawn at its position,
minispec/verify.py), and how much of it copies the prompt moves the rate, so one seed says little about a gate.
Here each (prompt, gate) is the geometric mean over the seeds of n-gram / plain tokens/s (each rate the median of
3 timed runs after a warm-up), with the forwards a generation took and the tokens a forward (result.stats: the
device's stretches included). Every generation runs its 128 tokens (ignore_eos): a run that met its end early
would weigh its prefill more.

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/sampled_gate_ab.py [rounds] [pays,pays,...] [seeds]
"""
import math
import statistics
import sys

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name, in_turn

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
GATES = [float(p) for p in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0.0, 3.0]
SEEDS = range(int(sys.argv[3]) if len(sys.argv) > 3 else 6)

llm = LLM(device="cuda")
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
print(f"{card_name()}: sampled n-gram speculation, temperature 0.7, 128 tokens (ignore_eos), seeds {list(SEEDS)}, gates (pays) {GATES}", flush=True)
ratios, trees = {}, {}
for r in range(ROUNDS):
    for pays_value in in_turn(GATES, r):
        for key, ids in prompts.items():
            for seed in SEEDS:
                params = SamplingParams(temperature=0.7, seed=seed, max_tokens=128, ignore_eos=True)
                llm.use_drafter(None)
                plain, _ = timed_generate(llm, ids, params, repeats=3)
                llm.use_drafter("ngram")
                llm.engine.drafter.pays_sampled = pays_value
                ngram, result = timed_generate(llm, ids, params, repeats=3)
                ratios.setdefault((pays_value, key), []).append(ngram / plain)
                trees.setdefault((pays_value, key), []).append((result.stats.steps, result.stats.tokens_per_step))
        llm.use_drafter(None)
        print(f"round {r} pays {pays_value}: " + "  ".join(
            f"{key} x{math.exp(statistics.fmean(math.log(v) for v in ratios[(pays_value, key)][-len(SEEDS):])):.2f}" for key in prompts), flush=True)
print("over all rounds: geometric mean of n-gram / plain per seed; forwards a generation, tokens a forward (means)")
for pays_value in GATES:
    cells = []
    for key in prompts:
        values, tree = ratios[(pays_value, key)], trees[(pays_value, key)]
        mean = math.exp(statistics.fmean(math.log(v) for v in values))
        cells.append(f"{key} x{mean:.2f} (min {min(values):.2f}, max {max(values):.2f}; {statistics.fmean(s for s, _ in tree):.1f} forwards of "
                     f"{statistics.fmean(t for _, t in tree):.2f} tokens)")
    print(f"pays {pays_value}: " + "  ".join(cells), flush=True)
