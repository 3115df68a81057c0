"""A step's kernels in time (`minispec bench timeline`): CUPTI's record of every kernel node's start and end in
replays of a step's CUDA graph, and from them each kernel's marginal time, its end less the latest end before it:
what the kernel adds to the step. Timing each op alone (20 in a row) misses what a step's kernels do to each other:
under programmatic dependent launch a kernel starts under the one ahead of it, so a short kernel can cost less than
alone, or more where it holds the next one back. Needs cupti-python (`pip install cupti-python`), and a GPU.

The pure part (records in, a table out) runs anywhere, so tests/test_timeline.py checks it on made-up records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import MinispecError


class KernelRecords:
    """CUPTI's concurrent-kernel activity records (start, end, name, blocks), collected from now on. Made before the
    GPU context is, so that no kernel goes unrecorded."""

    def __init__(self):
        try:
            from cupti import cupti
        except ImportError as error:
            raise MinispecError("bench timeline needs CUPTI's Python bindings: pip install cupti-python") from error
        self.cupti, self.records = cupti, []
        cupti.activity_register_callbacks(lambda: (16 << 20, 0), self._completed)
        cupti.activity_enable(cupti.ActivityKind.CONCURRENT_KERNEL)

    def _completed(self, activities) -> None:
        for a in activities:
            if a.kind == self.cupti.ActivityKind.CONCURRENT_KERNEL:
                self.records.append((a.start, a.end, a.name, a.grid_x * a.grid_y * a.grid_z))

    def take(self) -> list[tuple[int, int, str, int]]:
        """The records of every kernel finished since the last take, by start time."""
        self.cupti.activity_flush_all(1)
        records, self.records = sorted(self.records), []
        return records

    def close(self) -> None:
        self.cupti.activity_flush_all(1)
        self.cupti.activity_disable(self.cupti.ActivityKind.CONCURRENT_KERNEL)


def short_name(name: str) -> str:
    """A kernel's name without C++ decoration (CuPy's name expressions are mangled: _Z12add_rmsnormPKf...)."""
    if name.startswith("_Z"):
        name = name[2:]
        digits = len(name) - len(name.lstrip("0123456789"))
        if digits:
            name = name[digits:digits + int(name[:digits])]
    return name.removeprefix("void ").split("(")[0]


def layer_period(names: list[str]) -> tuple[int, int]:
    """(kernels a layer launches, the first layer's first kernel) of one step's kernel names: the shortest shift
    under which the middle half of the step repeats, and the first place from which a whole period repeats."""
    n = len(names)
    for p in range(1, n // 4 + 1):
        if all(names[i] == names[i + p] for i in range(n // 4, 3 * n // 4 - p)):
            first = next(i for i in range(n - 2 * p + 1) if names[i:i + p] == names[i + p:i + 2 * p])
            return p, first
    raise MinispecError("the step's kernels show no repeating layer")


def marginal_times(run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(own, marginal, idle) µs of each kernel of one replay, records by start time: its own span, its end less the
    latest end before it (0 where it ends under an earlier kernel), and the time before its start in which no kernel
    ran. The marginal times add up to the replay's span from the first start."""
    own, marginal, idle = [], [], []
    latest = run[0][0]
    for start, end, *_ in run:
        own.append((end - start) / 1e3)
        idle.append(max(0, start - latest) / 1e3)
        marginal.append(max(0, end - latest) / 1e3)
        latest = max(latest, end)
    return np.array(own), np.array(marginal), np.array(idle)


@dataclass
class StepTimeline:
    """A step's kernels over `replays` replays (medians): names, blocks, own / marginal / idle µs, the layer period."""

    names: list[str]
    blocks: list[int]
    own: np.ndarray
    marginal: np.ndarray
    idle: np.ndarray
    span: float
    period: int
    first: int

    @classmethod
    def of(cls, records: list, replays: int) -> "StepTimeline":
        kernels = len(records) // replays
        if not kernels or kernels * replays != len(records):
            raise MinispecError(f"{len(records)} kernel records for {replays} replays of one step")
        runs = [records[r * kernels:(r + 1) * kernels] for r in range(replays)]
        names = [short_name(r[2]) for r in runs[0]]
        if any([short_name(r[2]) for r in run] != names for run in runs):
            raise MinispecError("the replays ran different kernels")
        times = [marginal_times(run) for run in runs]
        own, marginal, idle = (np.median([t[i] for t in times], axis=0) for i in range(3))
        span = float(np.median([(run[-1][1] - run[0][0]) / 1e3 for run in runs]))
        return cls(names, [r[3] for r in runs[0]], own, marginal, idle, span, *layer_period(names))

    @property
    def layers(self) -> int:
        return (len(self.names) - self.first) // self.period

    def layer_rows(self) -> list[tuple[str, int, float, float, float]]:
        """(name, blocks, own, marginal, idle) of each kernel of a layer: the mean over the layers but the first and
        last two (whose neighbours differ), or over all where there are fewer than five."""
        skip = 2 if self.layers >= 5 else 0
        rows = []
        for pos in range(self.period):
            ix = [self.first + layer * self.period + pos for layer in range(skip, self.layers - skip)]
            rows.append((self.names[ix[0]], self.blocks[ix[0]], self.own[ix].mean(), self.marginal[ix].mean(), self.idle[ix].mean()))
        return rows

    def outside_rows(self) -> list[tuple[str, float]]:
        """(name, marginal) of the kernels before the first layer and after the last."""
        inside = range(self.first, self.first + self.layers * self.period)
        return [(self.names[i], float(self.marginal[i])) for i in range(len(self.names)) if i not in inside]

    def table(self) -> str:
        lines = [f"  {'kernel (a layer, mean)':<48} {'blocks':>6} {'own':>7} {'marginal':>9} {'idle':>6} {'x layers':>9}"]
        for name, blocks, own, marginal, idle in self.layer_rows():
            lines.append(f"  {name[:48]:<48} {blocks:>6} {own:7.2f} {marginal:9.2f} {idle:6.2f} {marginal * self.layers:9.1f}")
        lines.append("  outside the layers: " + ", ".join(f"{name} {m:.1f}" for name, m in self.outside_rows()))
        return "\n".join(lines)
