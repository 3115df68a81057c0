"""CPU fuzz of the engine's user-visible invariants on the tests' tiny random models (tests/conftest.py): random
requests, drafters, page and pool sizes, checked against plain decoding of the same requests. Stop 56's runs of these
families found a stream that showed a stop string's beginning, a text that dropped a cut multi-byte character, and
pools that fit plain decoding but failed under speculation (notes/HISTORY.md); the tests that came of them are in
tests/test_speculative.py. A family prints one line per fault and a count at the end.

  batches  mixed batches (greedy and sampled, n, top-k / top-p, EOS or not, prefix caching) against each request alone
           without a drafter: greedy samples equal, none past max_tokens, pages back (sampled ones may part at a CDF
           boundary: a one-row product rounds unlike several rows, README "Types and launches")
  stops    stop strings cut from the plain output: generate's and the stream's text end before the first one
  text     the text is the tokenizer's decode of the output tokens, streamed or not
  pools    pools of 100-130% of a batch's tokens: speculation gives plain decoding's tokens wherever plain fits
  chat     multi-turn chats with prefix caching and a drafter against a fresh engine on each turn's whole prompt
  errors   small pools: requests that fail leave every page free, and the next requests give plain decoding's tokens
  preempt  pools that hold any one sample's whole sequence, not the batch's, nor always its prompts together (stop 57's
           admission and preemption): no error, greedy samples equal each request alone, pages back
  crowded  the preempt family's pools with greedy and sampled requests mixed (top-k, stop strings, EOS or not) under
           any drafter: no error, none past max_tokens, pages back (the target's and a draft model's)

    PYTHONPATH=$PWD python3 notes/scripts/engine_fuzz.py FAMILY [seed] [iterations]
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

from minispec import LLM, MinispecError, SamplingParams
from tests.conftest import make_tiny_checkpoint

FAMILY = sys.argv[1] if len(sys.argv) > 1 else "batches"
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
ITERATIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
root = Path(tempfile.mkdtemp())
MODELS = [str(make_tiny_checkpoint(root / "tiny")), str(make_tiny_checkpoint(root / "looping", cycle=7))]
DRAFTS = (None, "ngram", "self:1")
faults = 0


def fault(*what) -> None:
    global faults
    faults += 1
    print("FAULT", *what, flush=True)


def token_prompt(low: int, high: int) -> list[int]:
    return [int(t) for t in rng.integers(3, 259, int(rng.integers(low, high)))]


def letters(low: int, high: int) -> str:
    return "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(low, high))))


def samples(results) -> list[list[list[int]]]:
    return [[s.token_ids for s in r.samples] for r in results]


def pages_back(llm, what) -> None:
    if llm.cache.free_pages != llm.cache.num_pages:
        fault("pages", what, llm.cache.free_pages, llm.cache.num_pages)


def batches(it: int) -> None:
    draft = DRAFTS[int(rng.integers(0, 3))]
    prefix = bool(rng.random() < 0.3)
    prompts = [token_prompt(1, 40) for _ in range(int(rng.integers(1, 5)))]
    params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=float(rng.choice([0.0, 0.5, 1.0])), top_k=int(rng.choice([0, 5])),
                             top_p=float(rng.choice([1.0, 0.9])), seed=int(rng.integers(0, 100)), max_tokens=int(rng.integers(1, 50)),
                             ignore_eos=bool(rng.random() < 0.7)) for _ in prompts]
    llm = LLM(model=MODELS[it % 2], device="cpu", page_size=int(rng.choice([1, 3, 16])), max_model_len=160, prefix_caching=prefix)
    alone = [llm.generate(p, q) for p, q in zip(prompts, params)]
    llm.use_drafter(draft)
    try:
        results = llm.generate(prompts, params)
    except MinispecError as error:
        return print("error", it, draft, error)
    for result, single, q in zip(results, alone, params):
        if any(len(s.token_ids) > q.max_tokens for s in result.samples):
            fault("past max_tokens", it)
        if q.greedy and [s.token_ids for s in result.samples] != [s.token_ids for s in single.samples]:
            fault("greedy tokens", it, draft, prefix)
    if not prefix:
        pages_back(llm, it)


def stops(it: int) -> None:
    draft = DRAFTS[it % 3]
    llm = LLM(model=MODELS[it % 2], device="cpu", max_model_len=300, draft=draft, page_size=int(rng.choice([1, 3, 16])))
    prompt = letters(3, 30)
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)).samples[0].text
    if len(full) < 6:
        return
    a = int(rng.integers(0, len(full) - 3))
    stop = full[a : a + int(rng.integers(1, 4))]
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, stop=[stop])
    text = llm.generate(prompt, params).samples[0].text
    streamed = "".join(llm.stream(prompt, params))
    if not text == streamed == full[: full.index(stop)]:
        fault("stop", it, draft, repr(stop), repr(text[-12:]), repr(streamed[-12:]))


def text(it: int) -> None:
    llm = LLM(model=MODELS[it % 2], device="cpu", draft=DRAFTS[it % 3])
    prompt = token_prompt(1, 20)
    params = SamplingParams(n=2, temperature=float(rng.choice([0.0, 1.0])), seed=it, max_tokens=int(rng.integers(1, 40)),
                            ignore_eos=bool(rng.random() < 0.5))
    result = llm.generate(prompt, params)
    for s in result.samples:
        if s.text != llm.tokenizer.decode(s.token_ids):
            fault("text", it, repr(s.text[-8:]), repr(llm.tokenizer.decode(s.token_ids)[-8:]), s.finish_reason)
    if "".join(llm.stream(prompt, params)) != result.samples[0].text:
        fault("stream", it)


def pools(it: int) -> None:
    page = int(rng.choice([1, 3, 8, 16]))
    prompts = [token_prompt(1, 60) for _ in range(int(rng.integers(1, 4)))]
    params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=0, max_tokens=int(rng.integers(1, 60)), ignore_eos=True) for _ in prompts]
    tokens = sum(len(p) + q.max_tokens * q.n for p, q in zip(prompts, params))
    kv = int(tokens * rng.uniform(1.0, 1.3)) + sum(2 * q.n for q in params) * page
    outputs = {}
    for draft in DRAFTS:
        llm = LLM(model=MODELS[it % 2], device="cpu", page_size=page, draft=draft, kv_cache_tokens=kv, max_model_len=400)
        try:
            outputs[draft] = samples(llm.generate(prompts, params))
        except MinispecError as error:
            outputs[draft] = str(error)
        pages_back(llm, (it, draft))
    if not isinstance(outputs[None], str) and not outputs["ngram"] == outputs["self:1"] == outputs[None]:
        fault("pool", it, page, kv, tokens, *(o for o in outputs.values() if isinstance(o, str)))


def chat(it: int) -> None:
    page, draft, kv = int(rng.choice([1, 3, 16])), DRAFTS[int(rng.integers(0, 3))], int(rng.choice([300, 3000]))
    talk = LLM(model=MODELS[it % 2], device="cpu", page_size=page, prefix_caching=True, draft=draft, kv_cache_tokens=kv, max_model_len=400)
    fresh = LLM(model=MODELS[it % 2], device="cpu", page_size=page, kv_cache_tokens=kv, max_model_len=400)
    messages = []
    for turn in range(int(rng.integers(2, 6))):
        messages.append({"role": "user", "content": letters(1, 30)})
        params = SamplingParams(temperature=0, max_tokens=int(rng.integers(1, 30)), ignore_eos=bool(rng.random() < 0.5),
                                stop=[str(rng.choice(["a", "xy", "\n"]))] if rng.random() < 0.3 else [])
        try:
            a = talk.chat(messages, params).samples[0]
        except MinispecError:
            return
        b = fresh.chat(messages, params).samples[0]
        if (a.token_ids, a.text, a.finish_reason) != (b.token_ids, b.text, b.finish_reason):
            return fault("chat", it, turn, draft, page, kv)
        messages.append({"role": "assistant", "content": a.text})
    pages_back(talk, it)


def errors(it: int) -> None:
    page, draft, prefix = int(rng.choice([1, 3, 16])), DRAFTS[int(rng.integers(0, 3))], bool(rng.random() < 0.5)
    llm = LLM(model=MODELS[it % 2], device="cpu", page_size=page, draft=draft, kv_cache_tokens=int(rng.integers(40, 200)),
              max_model_len=300, prefix_caching=prefix)
    plain = LLM(model=MODELS[it % 2], device="cpu", page_size=page, max_model_len=300)
    for round_ in range(4):
        prompts = [token_prompt(1, 50) for _ in range(int(rng.integers(1, 4)))]
        params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=0, max_tokens=int(rng.integers(1, 50)), ignore_eos=True) for _ in prompts]
        try:
            if samples(llm.generate(prompts, params)) != samples(plain.generate(prompts, params)):
                fault("tokens after errors", it, round_, draft)
        except MinispecError:
            pass
        pages_back(llm, (it, round_))
        if hasattr(llm.engine.drafter, "cache"):  # a draft model's own pool
            pages_back(llm.engine.drafter, (it, round_, "draft"))


def preempt(it: int) -> None:
    page, draft, prefix = int(rng.choice([1, 3, 8, 16])), DRAFTS[int(rng.integers(0, 3))], bool(rng.random() < 0.4)
    prompts = [token_prompt(1, 40) for _ in range(int(rng.integers(2, 7)))]
    params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=0, max_tokens=int(rng.integers(1, 80)), ignore_eos=True) for _ in prompts]
    pages = lambda tokens: -(-tokens // page)  # noqa: E731
    # any one sample's whole sequence, and one prompt with a page for each of its samples' first token (admit)
    one = max(max(pages(len(p) + q.max_tokens), pages(len(p)) + q.n) for p, q in zip(prompts, params))
    kv = (one + int(rng.integers(0, 4))) * page
    llm = LLM(model=MODELS[it % 2], device="cpu", page_size=page, draft=draft, kv_cache_tokens=kv, max_model_len=400, prefix_caching=prefix)
    plain = LLM(model=MODELS[it % 2], device="cpu", page_size=page, max_model_len=400)
    what = (it, page, draft, prefix, kv)
    try:
        results = llm.generate(prompts, params)
    except MinispecError as error:
        return fault("preempt error", *what, error)
    if samples(results) != [samples([plain.generate(p, q)])[0] for p, q in zip(prompts, params)]:
        fault("preempt tokens", *what)
    if not prefix:
        pages_back(llm, what)
    print(it, "preemptions", sum(s.stats.preemptions for r in results for s in r.samples), flush=True)


def crowded(it: int) -> None:
    page, draft, prefix = int(rng.choice([1, 3, 8, 16])), DRAFTS[int(rng.integers(0, 3))], bool(rng.random() < 0.4)
    prompts = [token_prompt(1, 40) for _ in range(int(rng.integers(2, 7)))]
    params = [SamplingParams(n=int(rng.integers(1, 3)), temperature=float(rng.choice([0.0, 0.7, 1.0])), top_k=int(rng.choice([0, 5])),
                             seed=int(rng.integers(0, 100)), max_tokens=int(rng.integers(1, 80)), ignore_eos=bool(rng.random() < 0.7),
                             stop=["a"] if rng.random() < 0.2 else []) for _ in prompts]
    pages = lambda tokens: -(-tokens // page)  # noqa: E731
    one = max(max(pages(len(p) + q.max_tokens), pages(len(p)) + q.n) for p, q in zip(prompts, params))
    kv = (one + int(rng.integers(0, 4))) * page
    llm = LLM(model=MODELS[it % 2], device="cpu", page_size=page, draft=draft, kv_cache_tokens=kv, max_model_len=400, prefix_caching=prefix)
    what = (it, page, draft, prefix, kv)
    try:
        results = llm.generate(prompts, params)
    except MinispecError as error:
        return fault("crowded error", *what, error)
    if any(len(s.token_ids) > q.max_tokens for r, q in zip(results, params) for s in r.samples):
        fault("crowded length", *what)
    if not prefix:
        pages_back(llm, what)
        if hasattr(llm.engine.drafter, "cache"):  # a draft model's own pool
            pages_back(llm.engine.drafter, (*what, "draft"))


RUNS = {"batches": batches, "stops": stops, "text": text, "pools": pools, "chat": chat, "errors": errors, "preempt": preempt,
        "crowded": crowded}
for iteration in range(ITERATIONS):
    RUNS[FAMILY](iteration)
print(f"{FAMILY}: {faults} faults in {ITERATIONS} iterations", flush=True)
