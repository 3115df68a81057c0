"""Device probe: sampled n-gram speculation end to end on the default model (temperature argv[1], default 0.7; seed 0,
128 tokens, medians of 5 after a warm-up), against plain sampled decoding, on the input-grounded prompts. Run after the
first gpu_session.sh call with the same environment (the converted model):
PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/sampled_spec.py [temperature]
(Stop 22 ran it at c8bc706 with a loop over CudaBackend.SAMPLE_READY_ROWS = 16 / 0, the verification's rows filtered
ahead of the walk or not; that variant was dropped: notes/sampling_h100_stop22.log.)"""
import sys

sys.path.insert(0, ".")
from minispec import LLM, SamplingParams  # noqa: E402
from minispec.bench_gpu import card_name, speculation_rates  # noqa: E402

llm = LLM(device="cuda")
temperature = float(sys.argv[1]) if len(sys.argv) > 1 else 0.7
print(card_name(), f"temperature {temperature}", flush=True)
for key, plain, ngram, per_forward in speculation_rates(llm, SamplingParams(temperature=temperature, seed=0, max_tokens=128)):
    print(f"{key:<10} plain {plain:6.0f} tok/s   n-gram tree {ngram:6.0f} tok/s ({per_forward:.2f} tokens/forward)  x{ngram / plain:.2f}", flush=True)
