"""minispec: a small PyTorch-free engine for Llama-style models with token-tree speculative decoding."""

from .errors import MinispecError
from .llm import LLM, GenerationResult, Sample
from .sampling import SamplingParams

__all__ = ["LLM", "SamplingParams", "GenerationResult", "Sample", "MinispecError"]
__version__ = "0.1.0"
