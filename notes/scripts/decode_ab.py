"""Device A/B of the default model's one-token decode step between source trees (each a directory holding minispec/ and
kernels/, e.g. `.old` from `git archive REV minispec kernels`, and `.`): plain decode one step ahead (bench e2e's
decode_ahead_time) and a forward (step_times, T = 1) at each context, random weights with the default model's shapes,
each tree in a process of its own, by turns.
Run from the repository root: python3 notes/scripts/decode_ab.py ROUNDS TREE... [-- CONTEXTS...]"""
import subprocess
import sys

CHILD = """
import sys, numpy as np
from minispec.backends.cuda_backend import CudaBackend
from minispec.bench_gpu import decode_ahead_time, random_model_on_gpu, smollm2_135m_config, step_times
from minispec.model import Model
config = smollm2_135m_config()
backend = CudaBackend()
model = Model(config, random_model_on_gpu(config, backend), backend)
for context in map(int, sys.argv[1:]):
    ahead = decode_ahead_time(model, context) * 1e3
    forward = step_times(model, context, ())[1] * 1e3
    print(f"{context} {ahead:.4f} {forward:.4f}")
"""


def main():
    rounds = int(sys.argv[1])
    rest = sys.argv[2:]
    trees = rest[: rest.index("--")] if "--" in rest else rest
    contexts = rest[rest.index("--") + 1 :] if "--" in rest else ["100", "512"]
    results = {tree: {} for tree in trees}
    for round_ in range(rounds):
        order = trees[round_ % len(trees) :] + trees[: round_ % len(trees)]
        for tree in order:
            out = subprocess.run([sys.executable, "-c", CHILD, *contexts], cwd=tree, capture_output=True, text=True, check=True).stdout
            for line in out.split("\n"):
                if line.strip():
                    context, ahead, forward = line.split()
                    results[tree].setdefault(int(context), []).append((float(ahead), float(forward)))
    for tree, by_context in results.items():
        for context, runs in by_context.items():
            print(f"{tree:6s} context {context:5d}: one step ahead", " ".join(f"{a:.3f}" for a, _ in runs),
                  "ms; forward", " ".join(f"{f:.3f}" for _, f in runs), "ms", flush=True)


if __name__ == "__main__":
    main()
