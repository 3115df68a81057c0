"""Device probe: the host's time at a hand-over from plain decoding to a device-drafted stretch
(Engine.decode_ahead -> hands_over -> speculate_on_device with the plain step in flight): from hands_over's call
to the stretch's first step launched (replay_packed's return), and the pieces inside that window, timed by
wrappers (time.perf_counter) over 5 generations of each prompt (greedy, 128 tokens, the default model). The
plain step in flight runs ~0.3 ms on an H100: host time past that is GPU idle time.

    PYTHONPATH=$PWD python3 notes/scripts/handover_probe.py [prompt ...]
(MINISPEC_DEVICE=cpu runs it on the NumPy reference: the same engine, its own costs.)
"""
import os
import sys
import time

import numpy as np

import minispec.engine as engine_module
from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS
from minispec.bench_gpu import card_name

events = []


def wrap(owner, name, tag):
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        events.append((tag, 0, time.perf_counter()))
        try:
            return inner(*args, **kwargs)
        finally:
            events.append((tag, 1, time.perf_counter()))
    setattr(owner, name, timed)


llm = LLM(device=os.environ.get("MINISPEC_DEVICE", "cuda"), draft="ngram")
engine, backend = llm.engine, llm.engine.model.backend
wrap(engine, "hands_over", "hands_over")
wrap(engine.drafter, "propose", "propose")
wrap(engine.cache, "prepare", "cache.prepare")
wrap(engine_module, "build_plan", "build_plan")
wrap(engine_module.NgramParams, "of", "NgramParams.of")
for name in ("ngram_buffers", "ngram_load", "ngram_advance", "replay_packed", "ngram_read"):
    wrap(backend, name, name)
print(card_name() if llm.engine.model.backend.name == "cuda" else "cpu")
params = SamplingParams(temperature=0, max_tokens=128)
for key in sys.argv[1:] or ["rewrite", "extract", "summarise"]:
    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
    llm.generate(ids, params)  # warm-up: graphs captured
    events.clear()
    for _ in range(5):
        llm.generate(ids, params)
    windows, pieces = [], {}
    i = 0
    while i < len(events):
        tag, end, t = events[i]
        if tag == "hands_over" and not end:
            # the window: to the first replay_packed's return before the next hands_over
            j = i + 1
            while j < len(events) and events[j][:2] != ("hands_over", 0) and events[j][:2] != ("replay_packed", 1):
                j += 1
            if j < len(events) and events[j][0] == "replay_packed":
                windows.append(events[j][2] - t)
                open_at = {}
                for tag2, end2, t2 in events[i : j + 1]:
                    if not end2:
                        open_at[tag2] = t2
                    elif tag2 in open_at:
                        pieces.setdefault(tag2, []).append(t2 - open_at.pop(tag2))
            i = j
        i += 1
    if not windows:
        print(f"{key}: no hand-over in 5 generations")
        continue
    w = np.array(windows) * 1e6
    print(f"{key}: {len(w)} hand-overs in 5 generations; hands_over -> first stretch step launched: median {np.median(w):.0f} µs "
          f"(min {w.min():.0f}, max {w.max():.0f})")
    for tag, d in sorted(pieces.items(), key=lambda kv: -sum(kv[1])):
        d = np.array(d) * 1e6
        print(f"   {tag:16s} {len(d) / len(w):4.1f} calls a hand-over, {d.sum() / len(w):6.0f} µs a hand-over (median call {np.median(d):.0f} µs)")
