"""Model configuration: the subset of a Hugging Face `config.json` a Llama-family model needs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import MinispecError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_MODEL_TYPES = ("llama",)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V
    hidden_size: int  # model width
    intermediate_size: int  # MLP width
    num_layers: int
    num_heads: int  # H
    num_kv_heads: int  # Hkv
    head_dim: int  # D
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int  # context limit
    tie_word_embeddings: bool
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor": ..., ...} or None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def qkv_size(self) -> int:  # rows of the fused QKV weight: (H + 2 Hkv) D
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def __post_init__(self):
        checks = [
            (self.num_heads % self.num_kv_heads == 0, "num_attention_heads must be a multiple of num_key_value_heads"),
            (self.head_dim % 2 == 0, "head_dim must be even for RoPE"),
            (self.vocab_size > 0 and self.hidden_size > 0 and self.num_layers > 0, "sizes must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise MinispecError(f"invalid model config: {message}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise MinispecError(
                    f"unsupported rope_scaling type {kind!r}: minispec supports 'llama3' and none"
                )

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        architectures = raw.get("architectures") or []
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES and not set(architectures) & set(SUPPORTED_ARCHITECTURES):
            raise MinispecError(
                f"unsupported architecture {architectures or model_type!r}: minispec runs Llama-family "
                f"checkpoints ({', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise MinispecError("unsupported checkpoint: attention/MLP biases are not part of the Llama architecture minispec runs")
        try:
            num_heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            eos = raw.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            scaling = raw.get("rope_scaling")
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
                head_dim=int(raw.get("head_dim") or hidden // num_heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                rope_scaling=dict(scaling) if scaling else None,
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except KeyError as missing:
            raise MinispecError(f"config.json lacks the field {missing}") from None

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MinispecError(f"no config.json in {Path(path).parent}: is this a Hugging Face model directory?") from None
        except json.JSONDecodeError as error:
            raise MinispecError(f"{path} is not valid JSON ({error})") from None
        return cls.from_dict(raw)


def rope_inv_freq(config: ModelConfig):
    """Inverse frequencies [D/2] of RoPE, with Llama-3 frequency scaling when configured.

    Llama 3 keeps high frequencies, divides low ones by `factor`, and blends
    smoothly in between (wavelength measured against the original context).
    """
    import numpy as np

    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
    scaling = config.rope_scaling
    if not scaling or scaling.get("rope_type", scaling.get("type")) != "llama3":
        return inv_freq
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(
        wavelen < high_freq_wavelen, inv_freq, np.where(wavelen > low_freq_wavelen, inv_freq / factor, blended)
    )
