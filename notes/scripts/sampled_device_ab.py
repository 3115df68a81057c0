"""Device probe: sampled n-gram speculation with the device's drafting (one sequence: Engine.speculate_on_device,
since stop 45) against the host's loop (device_drafting_enabled off) and plain sampled decoding, by turns in one
process, on bench e2e's input-grounded prompts. Each token is drawn at its position (minispec/verify.py), so the
device's drafting and the host's loop give the same tokens (their tree steps are the same forwards), and plain
decoding the same up to where its one-row steps' bf16 logits move a draw across a token's boundary. Per (temperature, prompt): geometric means over the seeds
of tokens/s (each the median of 3 timed runs after a warm-up, bench.timed_generate), and tokens a forward.

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/sampled_device_ab.py [temps] [seeds]
"""
import math
import sys

from minispec import LLM, SamplingParams
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name

TEMPERATURES = [float(t) for t in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0.3, 0.7]
SEEDS = range(int(sys.argv[2]) if len(sys.argv) > 2 else 4)

llm = LLM(device="cuda")
print(f"{card_name()}: sampled n-gram speculation, 128 tokens (ignore_eos), seeds {list(SEEDS)}; tokens/s, geometric "
      "means over the seeds (x plain), tokens a forward", flush=True)
for temperature in TEMPERATURES:
    for key in INPUT_GROUNDED:
        ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
        logs, per_forward, same = {}, {}, {"host": True, "plain": True}
        for seed in SEEDS:
            params = SamplingParams(temperature=temperature, seed=seed, max_tokens=128, ignore_eos=True)
            tokens = {}
            for name, draft, device in (("plain", None, True), ("device", "ngram", True), ("host", "ngram", False)):
                llm.use_drafter(draft)
                llm.engine.device_drafting_enabled = device
                rate, result = timed_generate(llm, ids, params, repeats=3)
                logs[name] = logs.get(name, 0.0) + math.log(rate)
                per_forward[name] = per_forward.get(name, 0.0) + result.stats.tokens_per_step / len(SEEDS)
                tokens[name] = result.token_ids
            same["host"] &= tokens["host"] == tokens["device"]
            same["plain"] &= tokens["plain"] == tokens["device"]
        rates = {name: math.exp(v / len(SEEDS)) for name, v in logs.items()}
        print(f"T {temperature} {key:<10} plain {rates['plain']:6.0f}  device-drafted {rates['device']:6.0f} "
              f"(x{rates['device'] / rates['plain']:.2f}, {per_forward['device']:.2f}/fwd)  host loop {rates['host']:6.0f} "
              f"(x{rates['host'] / rates['plain']:.2f}, {per_forward['host']:.2f}/fwd)  device's tokens = host's: {same['host']}, "
              f"= plain's: {same['plain']}", flush=True)
    llm.use_drafter(None)
    llm.engine.device_drafting_enabled = True
