"""CPU (NumPy backend) sampled decode speed of the default model, 64 tokens at temperature 0.7 / top-p 0.9 (seed 0),
after an 8-token warm-up; run from a tree (PYTHONPATH) with a tag to print. Stop 37 ran it in a worktree of 3840dab
('old') and the work tree ('new') by turns.

    PYTHONPATH=$PWD python3 notes/scripts/cpu_sampled_decode.py TAG
"""

import sys
import time

from minispec import LLM, SamplingParams
llm = LLM(device="cpu")
prompt = llm.chat_prompt([{"role": "user", "content": "Write a short story about a robot who learns to paint."}])
llm.generate(prompt, SamplingParams(temperature=0.7, top_p=0.9, max_tokens=8, seed=0))
t = time.perf_counter()
r = llm.generate(prompt, SamplingParams(temperature=0.7, top_p=0.9, max_tokens=64, seed=0, ignore_eos=True))
dt = time.perf_counter() - t
print(sys.argv[1], f"{len(r.token_ids) / dt:.1f} tokens/s", r.token_ids[:8])
