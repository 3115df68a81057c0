"""Checkpoint loading: Hugging Face safetensors (single or sharded) -> named NumPy arrays.

The safetensors format is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, byte offsets) and the raw bytes. Reading it with
`np.memmap` touches no tensor until a backend asks for it, so an 8B checkpoint
opens instantly and goes to the GPU one tensor at a time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from .config import ModelConfig
from .errors import MinispecError

DTYPES = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of one .safetensors file (validated against the file size)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise MinispecError(f"{path} is truncated (no safetensors header): re-download or re-convert it")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise MinispecError(f"{path} is truncated (header runs past the end): re-download or re-convert it")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MinispecError(f"{path} is not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise MinispecError(f"{path}: tensor {name} has dtype {info['dtype']}; minispec reads BF16, F16 and F32")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if data_start + end > size:
            raise MinispecError(f"{path} is truncated (tensor {name} runs past the end): re-download or re-convert it")
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise MinispecError(f"{path}: tensor {name} has {end - begin} bytes for shape {shape}")
        tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
    return tensors


def read_checkpoint_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a model directory: `model.safetensors` or the shards named in the index."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / name for name in shard_names]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise MinispecError(f"no *.safetensors files in {model_dir}: minispec loads safetensors checkpoints")
    tensors = {}
    for file in files:
        if not file.exists():
            raise MinispecError(f"shard {file.name} named in the index is missing from {model_dir}")
        tensors.update(read_safetensors(file))
    return tensors


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # [hidden]
    wqkv: np.ndarray  # [(H + 2 Hkv) D, hidden]   fused q, k, v projections
    wo: np.ndarray  # [hidden, H D]
    mlp_norm: np.ndarray  # [hidden]
    w_gate_up: np.ndarray  # [2 I, hidden]       fused gate and up projections
    w_down: np.ndarray  # [hidden, I]


@dataclass
class ModelWeights:
    embed: np.ndarray  # [V, hidden]
    layers: list[LayerWeights]
    final_norm: np.ndarray  # [hidden]
    lm_head: np.ndarray  # [V, hidden] (the embedding itself when tied)


def fuse_weights(config: ModelConfig, tensors: dict[str, np.ndarray], convert) -> ModelWeights:
    """Map checkpoint names to the engine's fused layout; `convert` moves each array to the backend."""

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise MinispecError(f"checkpoint lacks tensor {name}: not a complete Llama-family checkpoint")
        array = tensors[name]
        if tuple(array.shape) != shape:
            raise MinispecError(f"tensor {name} has shape {tuple(array.shape)}, config.json implies {shape}")
        return array

    c = config
    hidden, D, I = c.hidden_size, c.head_dim, c.intermediate_size
    layers = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        q = take(p + "self_attn.q_proj.weight", (c.num_heads * D, hidden))
        k = take(p + "self_attn.k_proj.weight", (c.num_kv_heads * D, hidden))
        v = take(p + "self_attn.v_proj.weight", (c.num_kv_heads * D, hidden))
        gate = take(p + "mlp.gate_proj.weight", (I, hidden))
        up = take(p + "mlp.up_proj.weight", (I, hidden))
        layers.append(
            LayerWeights(
                attn_norm=convert(take(p + "input_layernorm.weight", (hidden,))),
                wqkv=convert(np.concatenate([q, k, v], axis=0)),
                wo=convert(take(p + "self_attn.o_proj.weight", (hidden, c.num_heads * D))),
                mlp_norm=convert(take(p + "post_attention_layernorm.weight", (hidden,))),
                w_gate_up=convert(np.concatenate([gate, up], axis=0)),
                w_down=convert(take(p + "mlp.down_proj.weight", (hidden, I))),
            )
        )
    embed = convert(take("model.embed_tokens.weight", (c.vocab_size, hidden)))
    if c.tie_word_embeddings or "lm_head.weight" not in tensors:
        lm_head = embed
    else:
        lm_head = convert(take("lm_head.weight", (c.vocab_size, hidden)))
    return ModelWeights(embed=embed, layers=layers, final_norm=convert(take("model.norm.weight", (hidden,))), lm_head=lm_head)
