"""The README's commands, end to end on the default model (CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "minispec.cli", *args], input=stdin, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_generate_answers_paris(default_model):
    result = run("generate", "--device", "cpu", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.slow
def test_chat_keeps_the_conversation_and_resets(default_model):
    script = "My name is Ada.\nWhat is my name?\n/reset\n/exit\n"
    result = run("chat", "--device", "cpu", "--max-tokens", "24", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "Ada" in result.stdout
    assert "tokens/s" in result.stderr and "conversation cleared" in result.stderr


def test_chat_survives_a_turn_over_the_context_limit(tiny_model):
    """A message that takes the conversation past the context is an error for that turn only: it is dropped,
    and the chat goes on (here after /reset)."""
    script = "hi\n" + "x" * 200 + "\n/reset\nhello\n/exit\n"
    result = run("chat", "--model", str(tiny_model), "--device", "cpu", "--max-tokens", "4", "--max-model-len", "96", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "over the context limit" in result.stderr and "this message was dropped" in result.stderr
    assert result.stderr.count("tokens/s") == 2  # the turns before and after the failed one were answered


def test_chat_and_generate_say_why_an_answer_was_cut_short(tiny_model):
    """A reply cut by --max-tokens says so; one cut by the context limit says the conversation is full and how to go
    on (both finish by length in the engine: the CLI tells them apart); generate notes the same on stderr, per sample."""
    from minispec import LLM

    model = ["--model", str(tiny_model), "--device", "cpu"]
    result = run("chat", *model, "--max-tokens", "4", stdin="hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "; cut at --max-tokens]" in result.stderr
    limit = len(LLM(model=str(tiny_model), device="cpu").chat_prompt([{"role": "user", "content": "hi"}])) + 3
    result = run("chat", *model, "--max-tokens", "500", "--max-model-len", str(limit), stdin="hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert f"cut at the context limit of {limit} tokens: the conversation is full, /reset starts a new one" in result.stderr
    result = run("generate", *model, "--max-tokens", "4", "hi")
    assert result.returncode == 0 and result.stderr.strip().endswith("(cut at --max-tokens)"), result.stderr
    result = run("generate", *model, "--max-tokens", "500", "--max-model-len", str(limit), "-n", "2", "--temperature", "1", "--seed", "0", "hi")
    assert result.returncode == 0, result.stderr
    assert f"(sample 0: cut at the context limit of {limit} tokens)" in result.stderr, result.stderr


def test_help_explains_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("fetch", "generate", "chat", "bench"):
        assert command in result.stdout
    assert "--draft" in run("generate", "--help").stdout


def test_settings_that_would_be_ignored_are_usage_errors():
    result = run("generate", "hi", "--tree", "8,4,2")  # a tree budget with no drafter
    assert result.returncode == 2 and "give --draft too" in result.stderr
    result = run("chat", "-n", "2")  # chat streams one reply a turn
    assert result.returncode == 2 and "use generate -n N" in result.stderr


def test_bench_spec_samples_when_given_a_temperature(looping_model, capsys):
    """`minispec bench spec --temperature T --seed S`: every decoding samples with that seed; n-gram drafts, whose
    nodes each draw at their position, give plain sampling's very tokens, and a draft model's rows (its default chain,
    then the tree 16,12,4) are printed beside them."""
    from minispec.bench import bench_spec
    from minispec.cli import build_parser

    args = build_parser().parse_args(["bench", "spec", "--quick", "--device", "cpu", "--model", str(looping_model),
                                      "--temperature", "0.9", "--seed", "4", "--draft", "self:1"])
    bench_spec(args)
    out = capsys.readouterr().out
    assert "sampled at temperature 0.9, seed 4" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("summarise", "chat"))]
    assert [r[1] for r in rows[:5]] == ["plain", "chain", "tree", "self:1", "self:1"] and rows[3][2] == "4,3,1"
    assert all(r[-1] == "all" for r in rows if r[1] in ("chain", "tree"))


@pytest.mark.parametrize("raw", [False, True])
def test_generate_reads_the_prompt_from_stdin_given_a_dash(tiny_model, raw):
    """`minispec generate -` takes the prompt from standard input (a document piped in, lines and all): the answer is
    the one the same text gets as an argument."""
    text = "first line of a document\nsecond line, abc abc\n"
    args = ["--model", str(tiny_model), "--device", "cpu", "--max-tokens", "8", *(["--raw"] if raw else [])]
    piped, given = run("generate", *args, "-", stdin=text), run("generate", *args, text)
    assert piped.returncode == 0 and given.returncode == 0, piped.stderr + given.stderr
    assert piped.stdout == given.stdout and piped.stdout.strip()


def test_generate_stats_counts_the_tokens_and_what_speculation_gave(looping_model):
    """`generate --stats` prints on stderr the prompt's tokens, the tokens generated and the tokens a target forward
    gave: the latter above 1 where n-gram drafts are accepted (the looping model's cycles), and the counts those of
    the answer (the same tokens with and without the drafter)."""
    import re

    args = ["--model", str(looping_model), "--device", "cpu", "--raw", "--max-tokens", "40", "--stats"]
    prompt = "abcabcabcabc"
    lines = {}
    for draft in ([], ["--draft", "ngram"]):
        result = run("generate", prompt, *args, *draft)
        assert result.returncode == 0, result.stderr
        found = re.search(r"\[(\d+) prompt tokens, (\d+) generated in [\d.]+ s: [\d.]+ tokens/s; ([\d.]+) tokens a target "
                          r"forward over (\d+) forwards\]", result.stderr)
        assert found, result.stderr
        lines[bool(draft)] = (result.stdout, *(float(g) for g in found.groups()))
    (plain_text, prompt_tokens, generated, plain_rate, forwards), (spec_text, *spec) = lines[False], lines[True]
    assert spec_text == plain_text and spec[:2] == [prompt_tokens, generated]
    assert plain_rate == 1.0 and forwards == generated - 1  # the prefill gives the first token
    assert spec[2] > 1.5 and spec[3] < forwards
    result = run("generate", prompt, *args, "-n", "2", "--temperature", "1", "--seed", "0")
    assert re.search(r"\[\d+ prompt tokens, \d+ generated in 2 samples in", result.stderr), result.stderr
