"""Offline (CPU, NumPy backend): tokens a target forward of a self:K draft's chain of depth d, and of the same chain with
its level's next k - 1 most probable tokens as sibling leaves at each level (a tree of d k + 1 nodes whose shape is
fixed, so it could be drafted with one wait as the chains are). The target's greedy outputs of the bench's prompts
(128 tokens), then one teacher-forced forward of the draft over prompt + output gives its top 8 at every position:
a chain's accepted nodes are the target's own tokens, so those ranks decide every step. Columns dDkK: depth D, K
children a level (K = 1: the chain), with the verify step's rows in brackets; top1 / top2 / top4: how often the
target's token is among the draft's 1 / 2 / 4 most probable. Stop 55:

    python3 notes/scripts/draft_siblings_offline.py 8,20
"""
import sys
import numpy as np
from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS
from minispec.step import StepItem, build_plan

KS = [int(k) for k in sys.argv[1].split(",")] if len(sys.argv) > 1 else [8]
llm = LLM(device="cpu")
params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
model = llm.engine.model
outs = {}
for key, text in SPEC_PROMPTS.items():
    ids = llm.chat_prompt([{"role": "user", "content": text}])
    res = llm.generate(ids, params)
    outs[key] = (ids, list(res.token_ids))
for K in KS:
    draft = model.truncated(K)
    for key, (ids, out) in outs.items():
        seq = list(ids) + out
        cache = draft.new_cache(64, 16)
        table = []
        cache.prepare(table, 0, len(seq))
        logits = draft.forward(build_plan([StepItem.chunk(table, 0, seq, all_logits=True)], 16), cache).host()
        cache.release(table)
        P = len(ids)
        # draft row at position i predicts seq[i+1]; the output token out[j] = seq[P + j] is predicted by row P + j - 1
        top = np.argsort(-logits[P - 1 : P - 1 + len(out)], axis=1)[:, :8]
        rank = np.array([int(np.flatnonzero(top[j] == out[j])[0]) if out[j] in top[j] else 99 for j in range(len(out))])
        def run(depth, k):
            j, steps = 0, 0
            while j < len(out):
                acc = 0
                for lvl in range(depth):
                    if j + acc >= len(out): break
                    r = rank[j + acc]
                    if r == 0: acc += 1; continue
                    if r < k: acc += 1
                    break
                j += acc + 1; steps += 1
            return len(out) / steps
        row = "  ".join(f"d{d}k{k}:{run(d, k):.2f}(T{d*k+1})" for d, k in [(3,1),(5,1),(3,2),(3,3),(3,4),(2,4),(5,2),(4,2)])
        print(f"self:{K} {key:10s} top1 {np.mean(rank==0):.2f} top2 {np.mean(rank<2):.2f} top4 {np.mean(rank<4):.2f} | {row}", flush=True)
