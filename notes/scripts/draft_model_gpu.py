"""Device probe: greedy generation with a draft model (the default model's first K layers, `self:K`) against plain
greedy decoding, on the default model and the built-in input-grounded prompts: tokens/s (medians of ROUNDS after a
warm-up, 128 tokens) and tokens a target forward, for each variant:

  tree          the tree budget 16,12,4 (the CPU's default), grown level by level with a host round trip a level
  chain-levels  a chain (CHAIN, width 1) grown the same way (ModelDrafter.device_chains off)
  chain         the same chain proposed with one wait (ModelDrafter.propose_chains, stop 54)

  chain-host-tests  the chain with one wait, its q brought to the host and tested there (ModelDrafter.device_tests
                off; sampled only: before stop 55 every sampled chain was verified so)
  chain-chunk-catch-up  the chain with one wait, its level 0 a causal chunk (ModelDrafter.chain_catch_up off; before
                stop 55 always so), which runs layer by layer where a chain tree takes the decode kernels

Stop 39 ran its first form (plain and tree) on the final code and on `.old`; stop 54 added the chains, and
`sampled` (temperature 0.7, seeds 0-1: sampled chains drawn on the device or level by level, against plain sampling);
stop 55 the host-tested chain, the chunk catch-up and `only=NAME,...` (the variants to run):

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/draft_model_gpu.py [K,...] [ROUNDS] [CHAIN] [sampled] [only=...]
"""
import sys
import time

import numpy as np

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS
from minispec.bench_gpu import card_name

KS = [int(k) for k in (sys.argv[1] if len(sys.argv) > 1 else "8").split(",")]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
CHAIN = sys.argv[3] if len(sys.argv) > 3 else "6,5,1"
SAMPLED = "sampled" in sys.argv[4:]
ONLY = next((a[5:].split(",") for a in sys.argv[4:] if a.startswith("only=")), None)
VARIANTS = [("tree", "16,12,4", True, True, True), ("chain-levels", CHAIN, False, True, True), ("chain", CHAIN, True, True, True),
            ("chain-host-tests", CHAIN, True, False, True), ("chain-chunk-catch-up", CHAIN, True, True, False)]
VARIANTS = [v for v in VARIANTS if (ONLY is None and v[0] in ("tree", "chain-levels", "chain")) or (ONLY and v[0] in ONLY)]
llm = LLM(device="cuda")
print(f"# draft_model_gpu on {card_name()}: self:K {'sampled (temperature 0.7, seeds 0-1)' if SAMPLED else 'greedy'}, 128 tokens, "
      f"chain budget {CHAIN}; tokens/s (tokens a forward)", flush=True)
prompts = {key: llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}]) for key in INPUT_GROUNDED}
params = SamplingParams(temperature=0.7, n=2, seed=0, max_tokens=128, ignore_eos=True) if SAMPLED else SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
results, outputs = {}, {}
names = ["plain"] + [f"self:{K} {name}" for K in KS for name, *_ in VARIANTS]


def run(name):
    for key, ids in prompts.items():
        llm.generate(ids, params)  # warm-up (graphs, the draft's cache)
        start = time.perf_counter()
        result = llm.generate(ids, params)
        rate = sum(len(s.token_ids) for s in result.samples) / (time.perf_counter() - start)
        results.setdefault((name, key), []).append((rate, result.stats.tokens_per_step))
        outputs.setdefault((name, key), result.token_ids)


for r in range(ROUNDS):
    llm.use_drafter(None)
    run("plain")
    for K in KS:
        for name, tree, chains, tests, catch_up in VARIANTS:
            llm.use_drafter(f"self:{K}", tree)
            llm.engine.drafter.device_chains = chains
            llm.engine.drafter.device_tests = tests
            llm.engine.drafter.chain_catch_up = catch_up
            run(f"self:{K} {name}")
    print(f"round {r} done", flush=True)
print("medians:")
for key in prompts:
    print(key)
    for name in names:
        rates, per = zip(*results[(name, key)])
        got, plain = outputs[(name, key)], outputs[("plain", key)]
        same = next((i for i, (a, b) in enumerate(zip(got, plain)) if a != b), min(len(got), len(plain)))
        print(f"  {name:22s} {np.median(rates):7.0f} tok/s ({np.median(per):.2f} a forward; first {same} tokens as plain's)", flush=True)
