"""Sampling settings and the target distribution p they define.

Order: temperature, then top-k, top-p and min-p filters on the tempered
softmax, then renormalisation. temperature = 0 means greedy (argmax).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from .errors import MinispecError


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt (they share the prompt's pages)
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # nucleus mass, in (0, 1]
    min_p: float = 0.0  # keep tokens with p >= min_p * max p
    seed: int | None = None  # same seed, same output (with or without n-gram speculation: verify.py; up to rounding, README)
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the text)
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (isinstance(self.n, int) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (self.temperature >= 0 and np.isfinite(self.temperature), f"temperature must be >= 0, got {self.temperature!r}"),
            (isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}"),
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"),
            (self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), f"seed must be an integer >= 0, got {self.seed!r}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise MinispecError(f"invalid sampling parameter: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most probable tokens and their log-probabilities (a draft model's greedy tree level):
    (ids int32 [R, k], logprobs float64 [R, k]), ids by falling logit, ties by the lower index, NaN above every
    number as numpy.argmax has it; logprobs = log_softmax(row)[ids] in float64. The top_share / top_merge kernels'
    reference (kernels/sampling.cu)."""
    logits = np.asarray(logits, dtype=np.float32)
    R, V = logits.shape
    k = min(k, V)
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)  # log_softmax's order of operations, as the host's trees have always had it
    log_total = np.log(np.exp(z).sum(axis=1))
    ids = np.empty((R, k), dtype=np.int32)
    for r in range(R):
        nan = np.isnan(logits[r])
        if nan.any():  # NaN first (by index), then the numbers
            order = np.lexsort((np.arange(V), -np.where(nan, 0.0, logits[r]), ~nan))
            ids[r] = order[:k]
        else:
            ids[r] = top_indices(logits[r], k)
    return ids, np.take_along_axis(z, ids.astype(np.int64), axis=1) - log_total[:, None]


def top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries' indices, largest first, ties by index: np.argsort(-x, kind="stable")[:k], without
    sorting the whole row (a partition, then a sort of the k; a 49k-entry row's full sort took ~4 ms)."""
    if k >= len(x):
        return np.argsort(-x, kind="stable")
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    threshold = x[np.argpartition(-x, k - 1)[:k]].min()  # the k-th largest value
    above = np.flatnonzero(x > threshold)
    chosen = np.concatenate([above, np.flatnonzero(x == threshold)[: k - len(above)]])  # each part in index order
    return chosen[np.argsort(-x[chosen], kind="stable")]


def target_distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """p over the vocabulary (float64 [V]) for one row of logits, after all filters."""
    z = logits.astype(np.float64) / params.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones_like(p, dtype=bool)
    top_k = params.top_k if params.top_k and params.top_k < len(p) else 0
    if top_k or params.top_p < 1.0:
        # The kept tokens are a prefix of the order most probable first, ties by token id: the top k, then the
        # smallest prefix whose mass reaches top_p (the token that crosses it stays). Only a prefix of the order is
        # sorted: the top k, or (top-p alone) 64 tokens, 64 times more until the crossing token is among them (the
        # whole row once that would pass a quarter of it). A prefix's running sums are those of the whole order's,
        # so the cut is the same.
        k = top_k or min(len(p), 64)
        while True:
            order = top_indices(p, k)
            if params.top_p >= 1.0:
                cut = len(order)
                break
            cut = int(np.searchsorted(np.cumsum(p[order]), params.top_p, side="left")) + 1
            if cut <= len(order) or top_k or k == len(p):
                break
            k = 64 * k if 256 * k < len(p) else len(p)  # (past a quarter of the row, one whole sort)
        keep[:] = False
        keep[order[:cut]] = True
    if params.min_p > 0.0:
        keep &= p >= params.min_p * p.max()
    p = np.where(keep, p, 0.0)
    return p / p.sum()


# Counter-based uniforms: the token after position p is drawn at u(key, p), one number a position fixed by the
# request's seed (and sample), not the next draw of a stream. So it does not matter how many steps, trees or drafts
# came before: n-gram trees verified on the host or drafted on the device, decoding one step ahead or step by step,
# all give the tokens of plain sampled decoding (verify.py). The hash is splitmix64's finaliser (Steele, Lea and
# Flood, "Fast splittable pseudorandom number generators", 2014), twice: over the counter (position | stream << 32),
# then over that xor the key; kernels/sampling.cu (position_uniform) computes the same bits.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASK64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (products wrap modulo 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix64(x: int) -> int:
    """mix64 of one Python integer."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def sequence_key(seed: int | None, sample: int) -> int:
    """Sample `sample` of a request's 64-bit key: from the seed (any size) and the sample's index, or, unseeded, fresh
    from the OS (8 bytes: cheap enough to make before a prefill)."""
    if seed is None:
        return secrets.randbits(64)
    return int(np.random.SeedSequence([seed, sample]).generate_state(1, np.uint64)[0])


def position_uniform(key: int, position: int, stream: int = 0) -> float:
    """position_uniforms of one position in Python integers: ~1 µs, against ~16 for numpy's calls on a one-element
    array (a plain sampled step draws one a sequence, and the host's time a step is what decoding ahead hides)."""
    counter = ((position & MASK64) | (stream << 32)) + int(GOLDEN)
    return (_mix64(key ^ _mix64(counter & MASK64)) >> 11) * 2.0**-53


def position_uniforms(key: int, positions, stream=0) -> np.ndarray:
    """float64 in [0, 1): the uniform of each position under `key`, 53 random bits each (positions and stream
    broadcast). stream > 0 gives other numbers at the same positions (verify_sampled's child tests)."""
    streams = np.asarray(stream, dtype=np.uint64) << np.uint64(32)
    counters = np.atleast_1d(np.asarray(positions, dtype=np.int64)).astype(np.uint64) | streams
    h = mix64(np.uint64(key) ^ mix64(counters + GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_from(p: np.ndarray, u):
    """Inverse CDF in token order: the first token whose running mass exceeds u * total (u in [0, 1)). u may be an
    array of draws, which share one running sum: an int array of tokens then."""
    cumulative = np.cumsum(p)
    tokens = np.minimum(np.searchsorted(cumulative, np.asarray(u) * cumulative[-1], side="right"), np.flatnonzero(p)[-1])
    return int(tokens) if tokens.ndim == 0 else tokens
