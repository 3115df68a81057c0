"""Where greedy n-gram speculation parts from plain greedy decoding in bf16 (on the device, default model): for
each bench prompt (chat template, 128 tokens), the tokens of plain decoding, of n-gram speculation step by step
and with its stretches decoded one step ahead; the first token where each differs from plain, the target's
forwards, and at that point the plain run's top-2 logit margin from one causal forward over the plain output
(a margin near bf16's rounding says the two step shapes rounded a near-tie apart).

python3 notes/scripts/spec_agreement.py   (see gpu_session.sh for bringing the model over)
"""
import sys
from pathlib import Path

import numpy as np

from minispec import LLM, SamplingParams
from minispec.bench import SPEC_PROMPTS

sys.path.insert(0, str(Path(__file__).parent))
from ngram_offline import MORE_PROMPTS  # noqa: E402

llm = LLM(device="cuda")
print(llm.backend.describe())
params = SamplingParams(temperature=0, max_tokens=128)
for name, text in {**SPEC_PROMPTS, **MORE_PROMPTS}.items():
    ids = llm.chat_prompt([{"role": "user", "content": text}])
    runs = {}
    for label, draft, ahead in (("plain", None, True), ("ngram", "ngram", False), ("ngram+stretches", "ngram", True)):
        llm.use_drafter(draft)
        llm.engine.decode_ahead_enabled = ahead
        result = llm.generate(ids, params)
        runs[label] = (result.token_ids, result.stats.steps)
    plain = runs["plain"][0]
    parts = []
    for label, (tokens, steps) in runs.items():
        at = next((i for i, (a, b) in enumerate(zip(plain, tokens)) if a != b), None)
        if at is None and len(tokens) != len(plain):
            at = min(len(tokens), len(plain))
        margin = ""
        if at is not None and at < len(plain):
            logits = llm.logits(ids + plain[:at])[-1]
            top = np.sort(logits)[-2:]
            margin = f", margin {top[1] - top[0]:.4f} (logit {top[1]:.2f})"
        parts.append(f"{label} {steps} forwards, " + ("same tokens" if at is None else f"parts at token {at}{margin}"))
    print(f"{name:<10} {len(plain):>4} tokens: " + "; ".join(parts), flush=True)
llm.engine.decode_ahead_enabled = True
