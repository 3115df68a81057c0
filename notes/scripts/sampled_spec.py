"""Device probe: sampled n-gram speculation end to end on the default model (temperature argv[1], default 0.7; seed 0,
128 tokens, medians of 5 after a warm-up), against plain sampled decoding, on the input-grounded prompts. Run after the
first gpu_session.sh call with the same environment (the converted model):
PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/sampled_spec.py [temperature]
(Stop 22 ran it at c8bc706 with a loop over CudaBackend.SAMPLE_READY_ROWS = 16 / 0, the verification's rows filtered
ahead of the walk or not; that variant was dropped: notes/sampling_h100_stop22.log.)"""
import sys

sys.path.insert(0, ".")
from minispec import LLM, SamplingParams  # noqa: E402
from minispec.bench import INPUT_GROUNDED, SPEC_PROMPTS, timed_generate  # noqa: E402
from minispec.bench_gpu import card_name  # noqa: E402

llm = LLM(device="cuda")
temperature = float(sys.argv[1]) if len(sys.argv) > 1 else 0.7
print(card_name(), f"temperature {temperature}", flush=True)
params = SamplingParams(temperature=temperature, seed=0, max_tokens=128)
for key in INPUT_GROUNDED:
    ids = llm.chat_prompt([{"role": "user", "content": SPEC_PROMPTS[key]}])
    rates = []
    for draft in (None, "ngram"):
        llm.use_drafter(draft)
        rate, result = timed_generate(llm, ids, params, repeats=5)
        rates.append((rate, result.stats.tokens_per_step))
    llm.use_drafter(None)
    print(f"{key:<10} plain {rates[0][0]:6.0f} tok/s   n-gram tree {rates[1][0]:6.0f} tok/s ({rates[1][1]:.2f} tokens/forward)  "
          f"x{rates[1][0] / rates[0][0]:.2f}", flush=True)
