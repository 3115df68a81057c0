"""Device probe: where a tree-speculation step's wall time goes on the default model (n-gram drafter, greedy).

Every piece of Engine.run's draft -> verify -> accept -> commit -> emit loop is timed by wrapping it (the
wrappers cost ~1 µs a call); `verify` is split into the wait for the step's GPU work (a stream synchronise
before it) and the host's own part. Per prompt: each piece's ms a generation, µs a call and µs a tree step, and
the generation's tokens/s (the median of 10 runs: the host's pace varies between runs).

python3 notes/scripts/spec_step_probe.py [--profile] [--freeze] [--cpu] [prompt ...]   (on the device, default model fetched)
--profile: a cProfile of one more generation; --freeze: gc.freeze() first (tried: no gain); --cpu: a check of the probe
"""

import sys
import time
from collections import defaultdict

sys.path.insert(0, ".")
import minispec.engine as engine_module  # noqa: E402
from minispec import LLM, SamplingParams  # noqa: E402
from minispec.bench import SPEC_PROMPTS  # noqa: E402
from minispec.bench_gpu import card_name  # noqa: E402

spent, calls = defaultdict(float), defaultdict(int)


def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
            calls[name] += 1

    return wrapper


def timed_generator(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = yield from fn(*args, **kwargs)
        spent[name] += time.perf_counter() - start
        calls[name] += 1
        return result

    return wrapper


device = "cpu" if "--cpu" in sys.argv else "cuda"  # --cpu: a check of the probe itself
PROFILE = "--profile" in sys.argv  # then a cProfile of one more generation of the last prompt
FLAGS = ("--cpu", "--profile", "--freeze")
sys.argv = [a for a in sys.argv if a not in FLAGS] + [a for a in sys.argv if a == "--freeze"]
llm = LLM(device=device, draft="ngram")
engine = llm.engine
stream = getattr(llm.backend, "stream", None)
print(card_name() if device == "cuda" else "cpu", "default model, n-gram tree (16, 12, 4), greedy; µs per tree step unless said")

verify = engine_module.verify


def split_verify(*args, **kwargs):
    start = time.perf_counter()
    if stream is not None:
        stream.synchronize()
    spent["  gpu wait"] += time.perf_counter() - start
    return timed("  verify (host)", verify)(*args, **kwargs)


engine_module.verify = split_verify
engine_module.build_plan = timed("build_plan", engine_module.build_plan)
engine.drafter.propose = timed("propose", engine.drafter.propose)
engine.drafter.commit = timed("drafter.commit", engine.drafter.commit)
engine.cache.prepare = timed("cache.prepare", engine.cache.prepare)
engine.cache.commit = timed("cache.commit", engine.cache.commit)
engine.model.forward = timed("forward (host)", engine.model.forward)
engine.emit = timed_generator("emit", engine.emit)
engine.decode_ahead = timed_generator("decode_ahead (all)", engine.decode_ahead)
engine.drafts_ready = timed("drafts_ready", engine.drafts_ready)
if hasattr(engine.drafter, "start"):  # since stop 31: the prompt indexed while the prefill runs
    engine.drafter.start = timed("drafter.start", engine.drafter.start)

if "--freeze" in sys.argv:  # experiment: the objects made so far moved out of the garbage collector's scans
    import gc

    gc.freeze()
REPEATS = 10  # the host's pace varies from run to run: each prompt's generation timed this many times
for name in [a for a in sys.argv[1:] if a not in FLAGS] or ["rewrite", "extract", "summarise"]:
    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[name]}])
    params = SamplingParams(temperature=0, max_tokens=128)
    llm.generate(ids, params)  # warm-up: every graph bucket captured
    spent.clear(), calls.clear()
    rates = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = llm.generate(ids, params)
        rates.append(len(result.token_ids) / (time.perf_counter() - start))
    tree_steps = calls["  verify (host)"]
    rates.sort()
    print(f"\n{name}: {len(result.token_ids)} tokens, {result.stats.steps} steps, {tree_steps // REPEATS} of them trees; "
          f"tokens/s over {REPEATS} runs: median {rates[REPEATS // 2]:.0f}, min {rates[0]:.0f}, max {rates[-1]:.0f}")
    for key in sorted(spent, key=lambda k: -spent[k]):
        print(f"  {key:<22} {spent[key] / REPEATS * 1e3:8.2f} ms a run, {calls[key] // REPEATS:4d} calls, "
              f"{spent[key] / max(calls[key], 1) * 1e6:8.1f} µs a call, {spent[key] / max(tree_steps, 1) * 1e6:8.1f} µs a tree step")
if PROFILE:
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    llm.generate(ids, params)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(30)
