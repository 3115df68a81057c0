"""Device probe: where a chat turn's time goes on the default model (what `minispec chat` prints as tokens/s).
Per turn of a growing conversation: rendering the prompt, the time to the first token, the whole reply, and the
rate over the reply after its first token; then one turn under cProfile (the host's hot spots).

    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/chat_latency.py [cuda|cpu] [prefix]

prefix: with LLM(prefix_caching=True), as minispec chat runs since stop 42 (a turn reuses the conversation's kept
KV pages and prefills only what was added).
"""
import cProfile
import pstats
import sys
import time

from minispec import LLM, SamplingParams
from minispec.bench_gpu import card_name

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
prefix = "prefix" in sys.argv[2:]
llm = LLM(device=device, prefix_caching=prefix)
params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
questions = ["Hello!", "Name a colour.", "Why is the sky blue?", "Say that again, shorter.", "Thanks!", "Name a colour."]
print(f"# chat_latency on {card_name() if device == 'cuda' else device}: default model, {params.max_tokens} tokens a reply, "
      f"prefix caching {'on' if prefix else 'off'}")


def turn(messages):
    t0 = time.perf_counter()
    ids = llm.chat_prompt(messages)
    t1 = time.perf_counter()
    first, n, reply = None, 0, ""
    for piece in llm.stream(ids, params):
        if first is None:
            first = time.perf_counter()
        n += 1
        reply += piece
    t2 = time.perf_counter()
    return len(ids), n, (t1 - t0) * 1e3, (first - t0) * 1e3, (t2 - t0) * 1e3, (n - 1) / (t2 - first), reply


for label, fresh in (("growing conversation", False), ("every turn from scratch", True)):
    print(f"## {label}: prompt tokens, pieces, render ms, first piece ms, reply ms, pieces/s after the first")
    messages = []
    for q in questions:
        messages = [] if fresh else messages
        messages.append({"role": "user", "content": q})
        L, n, render, first, total, rate, reply = turn(messages)
        messages.append({"role": "assistant", "content": reply})
        print(f"  {L:5d} {n:4d} {render:7.2f} {first:8.2f} {total:8.2f} {rate:8.0f}   {q!r}", flush=True)
messages = [{"role": "user", "content": "Name a colour."}]
profile = cProfile.Profile()
profile.enable()
turn(messages)
profile.disable()
print("## one more turn under cProfile (cumulative, top 25)")
pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
