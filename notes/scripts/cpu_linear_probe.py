"""CPU: the NumPy backend's linear as (W x^T)^T against x @ W^T on the default model's shapes (random float32
weights): the same bits, and the milliseconds of each (one thread of OpenBLAS or as numpy has it).

    python3 notes/scripts/cpu_linear_probe.py
"""

import time

import numpy as np

SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate/up": (576, 3072), "down": (1536, 576), "lm head": (576, 49152)}
ROWS = (1, 2, 4, 16, 64, 512)
rng = np.random.default_rng(0)
print(f"numpy {np.__version__}; ms of x @ W^T / (W x^T)^T, and whether their bits agree")
for name, (K, N) in SHAPES.items():
    weight = rng.normal(size=(N, K)).astype(np.float32)
    cells = []
    for M in ROWS:
        x = rng.normal(size=(M, K)).astype(np.float32)
        same = np.array_equal(x @ weight.T, (weight @ x.T).T)
        times = []
        for f in (lambda: x @ weight.T, lambda: (weight @ x.T).T):
            f()
            reps = 5 if N > 10000 or M > 64 else 30
            start = time.perf_counter()
            for _ in range(reps):
                f()
            times.append((time.perf_counter() - start) / reps * 1e3)
        cells.append(f"M={M} {times[0]:.2f}/{times[1]:.2f}{'' if same else ' DIFFERENT BITS'}")
    print(f"{name:8}", "  ".join(cells), flush=True)
