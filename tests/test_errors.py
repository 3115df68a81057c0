"""Bad input: a clear one-line error (CLI exit code 1), never a half-written or half-loaded model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minispec import LLM, MinispecError, SamplingParams
from minispec.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minispec.cli", *args], capture_output=True, text=True, timeout=300)


def test_missing_model_path(tmp_path):
    with pytest.raises(MinispecError, match="not found"):
        LLM(model=str(tmp_path / "nope"), device="cpu")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MinispecError, match="no config.json"):
        LLM(model=str(tmp_path / "empty"), device="cpu")


def test_unsupported_architecture(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (tiny_model / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinispecError, match="unsupported architecture"):
        LLM(model=str(tiny_model), device="cpu")


def test_truncated_safetensors(tiny_model):
    path = tiny_model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(MinispecError, match="truncated"):
        LLM(model=str(tiny_model), device="cpu")


def test_missing_tokenizer(tiny_model):
    (tiny_model / "tokenizer.json").unlink()
    with pytest.raises(MinispecError, match="no tokenizer.json"):
        LLM(model=str(tiny_model), device="cpu")


def test_prompt_over_the_context_limit(tiny_model):
    llm = LLM(model=str(tiny_model), device="cpu", max_model_len=64)
    with pytest.raises(MinispecError, match="over the context limit of 64"):
        llm.generate("x" * 64, SamplingParams(max_tokens=4))
    assert llm.cache.free_pages == llm.cache.num_pages
    # generation stops at the limit rather than running past it
    result = llm.generate("x" * 60, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    assert result.finish_reason == "length" and len(result.token_ids) == 4


def test_a_context_limit_past_the_models_is_refused_before_the_weights_load(tiny_model):
    """max_model_len over the model's max_position_embeddings (512 here) is an error naming the range, not a silent
    clamp to 512; it comes before the weights load (a truncated checkpoint does not get to say so)."""
    path = tiny_model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    for bad in (513, 100_000, 1, 0):
        with pytest.raises(MinispecError, match=r"max_model_len -?\d+: give 2\.\.512"):
            LLM(model=str(tiny_model), device="cpu", max_model_len=bad)
    with pytest.raises(MinispecError, match="truncated"):  # a limit in range gets as far as the weights
        LLM(model=str(tiny_model), device="cpu", max_model_len=512)
    result = run_cli("generate", "hi", "--model", str(tiny_model), "--device", "cpu", "--max-model-len", "4096")
    assert result.returncode == 1 and "max_model_len 4096: give 2..512" in result.stderr


def test_prompts_of_the_wrong_type_are_clear_errors(tiny_model):
    """A prompt is a string or token ids (ints, NumPy's too, in a list, tuple or array); prompts a list of those, with
    one SamplingParams or a list of one a prompt. Anything else is a MinispecError naming what came, not a TypeError
    or KeyError from deep inside."""
    import numpy as np

    llm = LLM(model=str(tiny_model), device="cpu")
    params = SamplingParams(temperature=0, max_tokens=3)
    expected = llm.generate([5, 6], params).token_ids
    assert llm.generate(np.array([5, 6]), params).token_ids == llm.generate((5, 6), params).token_ids == expected
    assert [r.token_ids for r in llm.generate([np.array([5, 6]), (5, 6)], params)] == [expected, expected]
    for bad, message in (([1.5], "got float"), ([[1.5]], "got list"), ({1, 2}, "got set"), (None, "got NoneType")):
        with pytest.raises(MinispecError, match=message):
            llm.generate(bad, params)
    for prompts, bad in ((["a", "b", "c"], [params]), (["a"], [params] * 2), ("a", "greedy")):  # params: one, or one a prompt
        with pytest.raises(MinispecError, match="params: one SamplingParams"):
            llm.generate(prompts, bad)
    assert llm.cache.free_pages == llm.cache.num_pages


def test_cuda_without_gpu_is_a_one_line_error(tiny_model):
    from minispec.backends import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    result = run_cli("generate", "hi", "--model", str(tiny_model), "--device", "cuda")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "--device cpu" in result.stderr


def test_auto_device_leaves_a_gpu_the_cuda_backend_cannot_run_on(monkeypatch):
    """device "auto" picks the NumPy backend where the only GPU is older than the kernels need (compute capability
    9.0); "cuda" still reaches CudaBackend, which refuses it in one line (tests/test_cuda_kernels.py)."""
    from minispec import backends
    from minispec.backends.numpy_backend import NumpyBackend

    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "cuda_capability", lambda: (8, 0))
    assert isinstance(backends.make_backend("auto"), NumpyBackend)


@pytest.mark.parametrize("flags,message", [(["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top_p"), (["-n", "0"], "n must be")])
def test_cli_invalid_sampling_values(tiny_model, flags, message, capsys):
    assert main(["generate", "hi", "--model", str(tiny_model), "--device", "cpu", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_bad_model_path(tmp_path, capsys):
    assert main(["generate", "hi", "--model", str(tmp_path / "missing"), "--device", "cpu"]) == 1
    assert "not found" in capsys.readouterr().err


def test_interrupted_conversion_leaves_no_model(tmp_path, monkeypatch):
    from minispec import fetch

    monkeypatch.setenv("MINISPEC_WEIGHTS", str(tmp_path))
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(MinispecError):
        fetch.fetch_default_model(source=fake)
    assert not (tmp_path / fetch.DEFAULT_MODEL).exists()
    assert not any(p.name.startswith(".") and "partial" in p.name for p in tmp_path.iterdir())


def test_conversion_interrupted_while_writing_leaves_no_model(tmp_path, monkeypatch, default_gguf):
    from minispec import fetch

    monkeypatch.setenv("MINISPEC_WEIGHTS", str(tmp_path))

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "gguf_tokenizer_json", explode)  # dies after the weights are written
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch_default_model(source=default_gguf)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MinispecError, match="not fetched"):
        fetch.resolve_model(fetch.DEFAULT_MODEL, fetch_if_missing=False)


def test_chat_template_errors_and_reuse(tiny_model):
    """The compiled template is reused across turns and recompiled when the text changes; a template that does
    not parse, or that raises, is a MinispecError when a chat is rendered."""
    from minispec.tokenizer import Tokenizer

    tokenizer = Tokenizer(tiny_model)
    messages = [{"role": "user", "content": "hi"}]
    first = tokenizer.apply_chat_template(messages)
    compiled = tokenizer._template()
    assert tokenizer.apply_chat_template(messages) == first and tokenizer._template() is compiled
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert tokenizer.apply_chat_template(messages) == "[hi]"
    tokenizer.chat_template = "{% for m in messages %}"  # no endfor
    with pytest.raises(MinispecError, match="chat template failed"):
        tokenizer.apply_chat_template(messages)
    tokenizer.chat_template = "{{ raise_exception('only user turns') }}"
    with pytest.raises(MinispecError, match="only user turns"):
        tokenizer.apply_chat_template(messages)
