"""Device probe: end-to-end tokens/s of the default model through LLM.generate, greedy against sampled
(temperature 0.8, top-p 0.9; temperature 1.0 alone), 256 new tokens, no stop, after a warm-up of the same call."""
import sys
import time

sys.path.insert(0, ".")
from minispec import LLM, SamplingParams
from minispec.bench_gpu import card_name

llm = LLM(device="cuda")
prompt = llm.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
print(card_name())
for name, params in (("greedy", SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True)),
                     ("temperature 0.8, top-p 0.9", SamplingParams(temperature=0.8, top_p=0.9, max_tokens=256, seed=1, ignore_eos=True)),
                     ("temperature 1.0", SamplingParams(temperature=1.0, max_tokens=256, seed=1, ignore_eos=True))):
    llm.generate(prompt, params)
    start = time.perf_counter()
    result = llm.generate(prompt, params)
    elapsed = time.perf_counter() - start
    print(f"{name}: {len(result.token_ids) / elapsed:.0f} tokens/s ({len(result.token_ids)} tokens)", flush=True)
