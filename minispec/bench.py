"""Benchmarks: `minispec bench spec` (CPU or GPU); the kernel benchmarks need a GPU."""

from __future__ import annotations

import time

from .backends import finish_compiles
from .errors import MinispecError

SPEC_PROMPTS = {
    "summarise": (
        "Summarise this in two sentences: The city council met on Monday to discuss the new library. The new library "
        "will open in the spring, and the new library will have a large children's section, a cafe and a garden. "
        "The council said the new library will cost less than the old library to run, because the new library uses "
        "solar panels and the new library has a smaller building."
    ),
    "rewrite": (
        "Rewrite this paragraph in the past tense: The team builds a small robot. The robot walks across the room, "
        "picks up a red ball and puts the red ball in a box. The team watches the robot and the team writes down "
        "every step the robot takes."
    ),
    "extract": (
        "Extract every person's name and city from this text as a list of 'name - city': Maria Lopez lives in Madrid. "
        "John Smith lives in London. Akira Tanaka lives in Tokyo. Fatima Khan lives in Lahore. Pierre Martin lives in Paris."
    ),
    "chat": "Tell me a short story about a dragon who learns to bake bread.",
}


def delivery_log(days: int = 100) -> str:
    """A long input-grounded prompt: a delivery log of `days` sentences, made from fixed lists (the same text every
    run; 100 days: ~2,280 tokens on the default model's tokenizer), then the instruction to rewrite it in the past
    tense. The other prompts stay under 256 keys; this one takes a step's long-context paths (decode on cluster decode
    in the 4096-key bucket, tree steps layer by layer). With the instruction first, the default model's greedy answer
    commented on the log instead of copying it (1.00 tokens a forward, notes/bench_e2e_h200_stop66_final.log); after
    the log, it copies the log's lines."""
    names = ["Maria Lopez", "John Smith", "Akira Tanaka", "Fatima Khan", "Pierre Martin", "Anna Novak", "Kwame Mensah"]
    cities = ["Madrid", "London", "Tokyo", "Lahore", "Paris", "Prague", "Accra"]
    goods = ["apples", "books", "chairs", "lamps", "rice", "tiles", "paper"]
    days = (f"On day {i + 1}, {names[i % 7]} drives from {cities[i % 7]} to {cities[(3 * i + 2) % 7]} with "
            f"{(7 * i) % 40 + 3} boxes of {goods[(i // 7) % 7]}." for i in range(days))
    return f"Here is a delivery log: {' '.join(days)}\n\nRewrite the delivery log above in the past tense."


INPUT_GROUNDED = ("summarise", "rewrite", "extract")
# bench e2e's input-grounded prompts past 256 keys, after INPUT_GROUNDED's (apart from SPEC_PROMPTS, which bench spec
# runs on the CPU too, where a 2,280-token prefill takes the NumPy backend minutes, and which probes join and repeat)
LONG_PROMPTS = {"long log": delivery_log()}


def timed_generate(llm, ids, params, repeats: int = 1):
    """(tokens/s, result) of a generation after a warm-up run of the same generation: kernels compile and
    every CUDA graph bucket the run meets (step rows, context) is captured before the clock starts (a short
    warm-up left captures inside the timed run: one tree run measured 0.40x where its steady state is 1.16x).
    With repeats > 1 the median rate of that many timed runs: a short generation on the GPU is paced by the
    host, whose speed varies from run to run (single runs of one build spread over ±20%). Kernel files still
    compiling in the background (a drafter's, precompiled on a fresh machine) finish before the clock starts too:
    their threads would take host time from a host-paced run."""
    llm.generate(ids, params)
    finish_compiles()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = llm.generate(ids, params)
        rates.append(len(result.token_ids) / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2], result


class SpeculationRounds:
    """bench e2e's speculation rows (plain and n-gram greedy decoding of each prompt, the median of 3 timed runs)
    measured in rounds for variants of the engine by turns in one process, so that the host's pace, which moves
    single runs by +-10% between processes, weighs on all alike (notes/scripts/kernel_ab.py, device_draft_ab.py)."""

    def __init__(self, llm, prompts: dict, params):
        self.llm, self.prompts, self.params = llm, prompts, params
        self.rates, self.tokens, self.steps = {}, {}, {}

    def round(self, tag: str) -> None:
        """One round of the variant `tag` (as the caller has set it up)."""
        for key, ids in self.prompts.items():
            for draft in (None, "ngram"):
                self.llm.use_drafter(draft)
                rate, result = timed_generate(self.llm, ids, self.params, repeats=3)
                self.rates.setdefault((tag, key, draft), []).append(rate)
                self.tokens.setdefault((key, draft), set()).add(tuple(result.token_ids))
                self.steps.setdefault((tag, key, draft), set()).add(result.stats.steps)
        self.llm.use_drafter(None)

    def report(self, tags, header: str) -> None:
        """Per variant, medians over the rounds: n-gram / plain tokens/s per prompt, and the n-gram runs' steps."""
        import statistics

        print(header)
        for tag in tags:
            cells = []
            for key in self.prompts:
                plain, ngram = (statistics.median(self.rates[(tag, key, d)]) for d in (None, "ngram"))
                cells.append(f"{key} {ngram:.0f} / {plain:.0f} = {ngram / plain:.2f}x ({sorted(self.steps[(tag, key, 'ngram')])} steps)")
            print(f"{tag:<6} " + "; ".join(cells))
        print("the same tokens in every run of a prompt and decoding:", all(len(v) == 1 for v in self.tokens.values()))


def bench_spec(args) -> None:
    from .drafters import DRAFT_BUDGET, TreeBudget
    from .llm import LLM
    from .sampling import SamplingParams

    T = 16
    llm = LLM(model=args.model, device=args.device, dtype=args.dtype, kv_cache_tokens=args.kv_cache_tokens, kv_memory_fraction=args.kv_memory_fraction)
    configs = [("plain", None, None), (f"chain T={T}", "ngram", (T, T - 1, 1)), (f"tree T={T}", "ngram", (T, T - 1, 4))]
    if args.draft and args.draft != "ngram":  # a draft model's default budget (a chain), and a tree
        budgets = [DRAFT_BUDGET, TreeBudget()]
        configs += [(f"{args.draft} {b.nodes},{b.depth},{b.width}", args.draft, (b.nodes, b.depth, b.width)) for b in budgets]
    temperature = getattr(args, "temperature", 0.0)
    params = SamplingParams(temperature=temperature, seed=getattr(args, "seed", 0), max_tokens=48 if args.quick else 128)
    prompts = {k: v for k, v in SPEC_PROMPTS.items() if not args.quick or k in ("summarise", "chat")}
    how = f"sampled at temperature {temperature}, seed {params.seed}" if temperature else "greedy"
    print(f"minispec bench spec: {llm.model_dir.name} on {llm.backend.describe()}, {how}, {params.max_tokens} new tokens")
    print(f"{'prompt':<10} {'decoding':<14} {'tokens/forward':>15} {'tokens/s':>9} {'speed-up':>9}  tokens equal to plain")
    for name, text in prompts.items():
        ids = llm.chat_prompt([{"role": "user", "content": text}])
        baseline = None
        for label, draft, tree in configs:
            llm.use_drafter(draft, tree)
            rate, result = timed_generate(llm, ids, params)
            if baseline is None:
                baseline = (rate, result.token_ids)
            agree = next((i for i, (a, b) in enumerate(zip(result.token_ids, baseline[1])) if a != b), None)
            same = "all" if result.token_ids == baseline[1] else f"first {agree if agree is not None else min(len(result.token_ids), len(baseline[1]))}"
            print(f"{name:<10} {label:<14} {result.stats.tokens_per_step:>15.2f} {rate:>9.1f} {rate / baseline[0]:>8.2f}x  {same}")
    llm.use_drafter(None)


def main(args) -> None:
    runners = {"spec": bench_spec}
    try:
        from . import bench_gpu

        runners.update(bench_gpu.RUNNERS)
    except ImportError:
        pass
    if args.what not in runners:
        raise MinispecError(f"bench {args.what} is not available in this build")
    runners[args.what](args)
