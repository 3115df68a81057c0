"""CPU probe: milliseconds per forward of the default model on the NumPy backend, and each backend op's share, for a
plain step and trees of 4 and 16 nodes at 200 keys (mean of 5 after a warm one). Needs the default model
(`minispec fetch`). Usage: python3 notes/scripts/cpu_forward_profile.py"""
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, ".")
from minispec.llm import LLM  # noqa: E402
from minispec.step import StepItem, build_plan  # noqa: E402
from minispec.tree import Tree  # noqa: E402

llm = LLM(model="smollm2-135m-instruct", device="cpu")
model, backend = llm.model, llm.model.backend
times = defaultdict(float)
for name in ("embedding", "add_rmsnorm", "linear", "rope_write_kv", "attention", "gate_up_silu", "logits"):
    op = getattr(backend, name)

    def timed(*args, _op=op, _name=name, **kwargs):
        start = time.perf_counter()
        result = _op(*args, **kwargs)
        times[_name] += time.perf_counter() - start
        return result

    setattr(backend, name, timed)
table = []
llm.cache.prepare(table, 0, 300)
for T in (1, 4, 16):
    rng = np.random.default_rng(0)
    parents = [-1] + [int(rng.integers(max(0, i - 4), i)) for i in range(1, T)]
    plan = build_plan([StepItem.tree(table, 200, Tree(rng.integers(0, 1000, T), parents))], 16)
    model.forward(plan, llm.cache).host()
    times.clear()
    start = time.perf_counter()
    for _ in range(5):
        model.forward(plan, llm.cache).host()
    total = (time.perf_counter() - start) / 5
    print(f"T={T}: {total * 1e3:.1f} ms/step  " + "  ".join(f"{k} {v / 5 * 1e3:.1f}" for k, v in sorted(times.items(), key=lambda x: -x[1])))
