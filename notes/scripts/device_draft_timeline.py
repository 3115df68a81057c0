"""Device probe: where a generation's time goes with the n-gram drafter's work on the device (Engine.speculate_on_device)
and on the host. CUDA events recorded behind every step's launch (a graph, the advance kernel, an eager step) give
when the GPU finished each; the host's clock gives when each launch was made. Prints each launch's GPU end and the
GPU's idle time before it (a launch whose GPU end follows the previous end by less than its own work ran back to
back), for one prompt of bench e2e's input-grounded set.

  PYTHONPATH=$PWD python3 notes/scripts/device_draft_timeline.py [PROMPT]
"""
import sys
import time

from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS
from minispec.bench_gpu import card_name

key = sys.argv[1] if len(sys.argv) > 1 else "rewrite"
llm = LLM(device="cuda")
backend, cp = llm.backend, llm.backend.cp
ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
params = SamplingParams(temperature=0, max_tokens=128)
marks = []  # (what, host time, event)


def marked(name, function):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        event = cp.cuda.Event()
        event.record(backend.stream)
        marks.append((name, time.perf_counter(), event))
        return result
    return call


backend.replay = marked("graph", backend.replay)
backend.replay_packed = marked("graph*", backend.replay_packed)
backend.ngram_advance = marked("advance", backend.ngram_advance)
backend.prepare_plan = marked("eager", backend.prepare_plan)
llm.use_drafter("ngram")
for device in (True, False):
    llm.engine.device_drafting_enabled = device
    for _ in range(3):
        llm.generate(ids, params)  # warm-up: captures every graph the run meets
    marks.clear()
    start = time.perf_counter()
    begin = cp.cuda.Event()
    begin.record(backend.stream)
    result = llm.generate(ids, params)
    total = time.perf_counter() - start
    end_event = marks[-1][2]
    end_event.synchronize()
    print(f"{card_name()} {key}, drafting on the {'device' if device else 'host'}: {len(result.token_ids)} tokens in "
          f"{total * 1e3:.2f} ms ({len(result.token_ids) / total:.0f} tokens/s), {result.stats.steps} steps")
    previous = 0.0
    for name, host, event in marks:
        gpu = cp.cuda.get_elapsed_time(begin, event)
        print(f"  {name:<8} launched at {(host - start) * 1e3:6.2f} ms, GPU done at {gpu:6.2f} ms (+{gpu - previous:.3f})")
        previous = gpu
