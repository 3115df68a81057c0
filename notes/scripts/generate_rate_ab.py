"""Device A/B of the default model's end-to-end greedy decoding (bench e2e's "plain greedy decode" row: the chat
prompt, 256 tokens, the median of 5 timed runs after a warm-up) between source trees (each a directory holding
minispec/ and kernels/, e.g. `.old` from `git archive REV minispec kernels`, and `.`), each tree in a process of
its own, by turns: the host paces this row, and a host's pace moves single runs by +-10% between machines and
processes. With "ngram", the extract prompt with the n-gram drafter too.
Run from the repository root with the default model fetched: python3 notes/scripts/generate_rate_ab.py ROUNDS TREE... [ngram]"""
import os
import subprocess
import sys

CHILD = """
import sys
from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS, timed_generate
llm = LLM(device="cuda")
params = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["chat"]}])
print("plain", f"{timed_generate(llm, ids, params, repeats=5)[0]:.0f}")
if sys.argv[1] == "ngram":
    llm = LLM(device="cuda", draft="ngram")
    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS["extract"]}])
    print("ngram-extract", f"{timed_generate(llm, ids, params, repeats=5)[0]:.0f}")
"""


def main():
    rounds = int(sys.argv[1])
    trees = [a for a in sys.argv[2:] if a != "ngram"]
    ngram = "ngram" if "ngram" in sys.argv[2:] else "plain"
    rates = {}
    for round_ in range(rounds):
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(tree), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
            out = subprocess.run([sys.executable, "-c", CHILD, ngram], cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                what, rate = line.split()
                rates.setdefault((what, tree), []).append(float(rate))
                print(f"round {round_} {tree:8} {what:14} {rate} tokens/s", flush=True)
    print("medians, tokens/s:")
    for (what, tree), values in sorted(rates.items()):
        print(f"  {what:14} {tree:8} {sorted(values)[len(values) // 2]:.0f}  ({' '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
