"""Tokens per target forward of sampled generations with a draft model, its tree drawn from q (stop 37, the SpecInfer
rule) or its top-k tree as before (the residual rule), on the CPU with the default model drafting for itself.

  sampled   the committed drafter: children drawn from q, the tree grown up to T nodes
  topk      the drafter before stop 37: top-k children, grown up to 64 nodes and pruned to the best T (patched here)

    python3 notes/scripts/specinfer_draft_cpu.py MODE DRAFT TEMPERATURE SEEDS [PROMPT]
"""

import sys
import time

from minispec import LLM, SamplingParams
from minispec import drafters

TREE = (8, 4, 2)
mode, draft, temperature, seeds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
prompt_text = sys.argv[5] if len(sys.argv) > 5 else "Write a short story about a robot who learns to paint."
if mode == "topk":
    drafters.ModelDrafter.expand = staticmethod(lambda seq, c, nodes, grow, rows, width, limit, cap: c.expand(nodes, grow, drafters.top_logprobs(rows[grow], width), width, limit))
    drafters.Candidates.tree_sampled = lambda self: self.best(TREE[0])
llm = LLM(draft=draft, tree=TREE, device="cpu")
prompt = llm.chat_prompt([{"role": "user", "content": prompt_text}])
steps = emitted = 0
start = time.time()
for seed in range(seeds):
    result = llm.generate(prompt, SamplingParams(temperature=temperature, max_tokens=48, seed=seed, ignore_eos=True))
    steps, emitted = steps + result.stats.steps, emitted + result.stats.emitted
print(mode, draft, temperature, f"tokens/forward {emitted / steps:.2f} ({emitted} tokens, {steps} steps) {time.time() - start:.0f} s")
