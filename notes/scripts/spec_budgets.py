"""Device probe: n-gram speculation end to end at several tree budgets (default model, greedy, 128 tokens)."""
import sys
sys.path.insert(0, ".")
from minispec.llm import LLM
from minispec.sampling import SamplingParams
from minispec.bench import SPEC_PROMPTS, timed_generate
from minispec.bench_gpu import card_name

llm = LLM(model="smollm2-135m-instruct", device="cuda")
print(card_name(), flush=True)
params = SamplingParams(temperature=0, max_tokens=128)
budgets = [None, (2, 1, 1), (3, 2, 1), (4, 3, 1), (4, 2, 2), (4, 3, 2), (8, 7, 1), (8, 5, 2), (16, 15, 1), (16, 12, 4)]
for key in ("summarise", "rewrite", "extract", "chat"):
    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
    out = []
    for b in budgets:
        llm.use_drafter(None if b is None else "ngram", b)
        best = 0
        for _ in range(2):
            rate, result = timed_generate(llm, ids, params)
            best = max(best, rate)
        out.append((b, best, result.stats.tokens_per_step))
    base = out[0][1]
    print(key, " ".join(f"{'plain' if b is None else ','.join(map(str, b))}:{r:.0f}({r / base:.2f}x,{t:.2f})" for b, r, t in out), flush=True)
