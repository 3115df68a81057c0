"""Device probe: where the host's time goes in n-gram tree speculation on the default model (a built-in prompt,
`rewrite` unless named: python3 spec_host_profile.py [prompt]; 256 tokens, greedy): cProfile of the timed
generation, top functions by own time. The GPU step of a T = 16 tree is about 1.1 ms; the rest of a step's
wall time is the host's."""
import cProfile
import pstats
import sys
import time

sys.path.insert(0, ".")
from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS
from minispec.bench_gpu import card_name

llm = LLM(device="cuda", draft="ngram")
ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[sys.argv[1] if len(sys.argv) > 1 else "rewrite"]}])
params = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
print(card_name())
llm.generate(ids, params)
start = time.perf_counter()
result = llm.generate(ids, params)
elapsed = time.perf_counter() - start
steps = result.stats.steps
print(f"{len(result.token_ids)} tokens in {elapsed * 1e3:.1f} ms, {len(result.token_ids) / elapsed:.0f} tokens/s, steps {steps}")
profile = cProfile.Profile()
profile.enable()
llm.generate(ids, params)
profile.disable()
pstats.Stats(profile).sort_stats("tottime").print_stats(25)
