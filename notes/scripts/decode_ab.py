"""Device A/B of the default model's one-token decode step between source trees (each a directory holding minispec/ and
kernels/, e.g. `.old` from `git archive REV minispec kernels`, and `.`): plain decode one step ahead (bench e2e's
decode_ahead_time) and a forward (step_times: T = 1, and the trees of 2 and 4 nodes cluster decode takes) at each context, random weights with the default model's shapes,
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
    forwards = step_times(model, context, (2, 4))
    print(context, f"{ahead:.4f}", *(f"{forwards[T] * 1e3:.4f}" for T in (1, 2, 4)))
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
                    context, *times = line.split()
                    results[tree].setdefault(int(context), []).append([float(t) for t in times])
    for tree, by_context in results.items():
        for context, runs in by_context.items():
            columns = [" ".join(f"{run[i]:.3f}" for run in runs) for i in range(4)]
            print(f"{tree:6s} context {context:5d}: one step ahead {columns[0]} ms; forward T = 1 {columns[1]}, T = 2 {columns[2]},"
                  f" T = 4 {columns[3]} ms", flush=True)


if __name__ == "__main__":
    main()
