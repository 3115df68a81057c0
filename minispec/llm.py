"""The public API: `LLM(model=..., device=...)`, `generate`, `chat`, `stream`, `stream_batch`, `logits`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends import make_backend
from .config import ModelConfig
from .drafters import make_drafter
from .engine import Engine, Stats
from .errors import MinispecError
from .fetch import DEFAULT_MODEL, resolve_model
from .model import Model
from .sampling import SamplingParams
from .step import StepItem, build_plan
from .tokenizer import Tokenizer


TOKEN_LISTS, TOKEN_IDS = (list, tuple, np.ndarray), (int, np.integer)  # what a prompt of token ids may be made of


def params_for(params, prompts: int, one: bool = False) -> list:
    """A SamplingParams a prompt from `params`: None (the defaults), one SamplingParams, or (unless `one`) a list of one
    a prompt; else a MinispecError naming what came."""
    params = params or SamplingParams()
    listed = params if isinstance(params, list) and not one else [params] * prompts
    if len(listed) != prompts or not all(isinstance(p, SamplingParams) for p in listed):
        raise MinispecError(f"params: one SamplingParams{'' if one else f', or a list of one a prompt ({prompts})'}, got "
                            f"{type(params).__name__}" + (f" of {len(params)}" if isinstance(params, list) else ""))
    return listed


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: Stats


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    samples: list[Sample]
    stats: Stats = field(default_factory=Stats)  # summed over the samples

    @property
    def text(self) -> str:
        return self.samples[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.samples[0].token_ids

    @property
    def finish_reason(self) -> str:
        return self.samples[0].finish_reason


class LLM:
    """A loaded model with its tokenizer, KV page pool and drafter.

    model: a Hugging Face Llama-family directory, or "smollm2-135m-instruct"
    (fetched and converted on first use). device: "cpu" (NumPy reference),
    "cuda" or "auto". draft: None (plain decoding), "ngram", "self:K" (the
    target's first K layers) or a draft model directory with the same
    tokenizer. tree: budget (T, depth, width) or "T,depth,width"; width 1 is a chain
    (default: 16,15,4 for ngram; for a draft model the chain 4,3,1).
    kv_cache_tokens sizes the KV page pool; by default the GPU pool takes
    kv_memory_fraction of the memory left free after the weights. A batch
    larger than the pool goes through, first come first: prompts wait to be
    prefilled, and sequences short of a page are preempted and recomputed
    (Engine.run); only a request that alone outgrows the pool is an error.
    prefix_caching: keep each finished request's full KV pages in the pool (until
    it needs them) and start a prompt that begins with the same tokens from them:
    a chat's next turn prefills only what was added, and prompts of one call that
    share whole pages prefill them once (the pages were computed by
    other launch shapes, so its bits may differ from a fresh prefill's in the
    last place).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str | None = None,
        max_model_len: int | None = None,
        page_size: int = 16,
        kv_cache_tokens: int | None = None,
        prefill_chunk: int = 512,
        draft: str | None = None,
        tree=None,
        kv_memory_fraction: float = 0.5,
        prefix_caching: bool = False,
    ):
        self.backend = make_backend(device, dtype, kv_memory_fraction)
        self.backend.warm_up()  # kernels compile beside the model's fetch and loading (a machine's first run)
        self.model_dir = resolve_model(model)
        config = ModelConfig.from_file(self.model_dir / "config.json")
        if max_model_len is not None and not 1 < max_model_len <= config.max_position_embeddings:
            # past the positions the model was trained on its outputs are not to be trusted: refused, not clamped,
            # before the weights load
            raise MinispecError(f"max_model_len {max_model_len}: give 2..{config.max_position_embeddings} (the model's "
                                f"context length, max_position_embeddings in its config.json)")
        self.backend.warm_up(config)  # and those of its head dim, before the weights load
        self.model = Model.load(self.model_dir, self.backend, config)
        self.tokenizer = Tokenizer(self.model_dir, config.eos_token_ids)
        self.max_model_len = max_model_len or config.max_position_embeddings
        if page_size < 1:
            raise MinispecError("page_size must be >= 1")
        tokens = kv_cache_tokens or self.backend.default_kv_tokens(config, self.max_model_len)
        self.cache = self.model.new_cache(-(-tokens // page_size), page_size)
        self.engine = Engine(self.model, self.tokenizer, self.cache, None, self.max_model_len, prefill_chunk)
        self.engine.prefix_caching = prefix_caching
        self.use_drafter(draft, tree)

    def use_drafter(self, draft: str | None, tree=None) -> None:
        """Switch the drafter (None, "ngram", "self:K" or a model directory) and tree budget."""
        self.engine.drafter = make_drafter(
            draft, tree, self.model, self.tokenizer, self.backend, self.cache.num_pages, self.cache.page_size, self._load_draft,
            self.engine.prefix_caching,
        )
        if draft is not None:
            self.backend.warm_up_trees(self.model, ngram=draft == "ngram")

    def _load_draft(self, path):
        model_dir = resolve_model(path)
        model = Model.load(model_dir, self.backend)
        return model, Tokenizer(model_dir, model.config.eos_token_ids)

    # ------------------------------------------------------------------ prompts
    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, TOKEN_LISTS) or not all(isinstance(t, TOKEN_IDS) for t in prompt):
            raise MinispecError(f"a prompt is a string or a list of token ids (ints), got {type(prompt).__name__} {prompt!r:.60}")
        return [int(t) for t in prompt]

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))

    # ------------------------------------------------------------------ generation
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> GenerationResult | list[GenerationResult]:
        """prompts: a string, a list of token ids, or a list of either, fed as they are (chat() applies the chat
        template). One result per prompt: a single prompt gives its result, a list a list of them."""
        single, prompt_ids = self._prompts(prompts)
        events = self.engine.run(prompt_ids, params_for(params, len(prompt_ids)))
        while True:  # drain the stream; the generator returns the finished sequences
            try:
                next(events)
            except StopIteration as finished:
                seqs = finished.value
                break
        samples, results = {}, []
        for seq in seqs:
            samples.setdefault(seq.index, []).append(seq)
        for index, ids in enumerate(prompt_ids):
            seqs = sorted(samples[index], key=lambda s: s.sample)
            total = Stats()
            for s in seqs:
                total.add(s.stats)
            results.append(GenerationResult(ids, [Sample(s.text, s.output, s.finish_reason, s.stats) for s in seqs], total))
        return results[0] if single else results

    def _prompts(self, prompts) -> tuple[bool, list[list[int]]]:
        """(whether `prompts` is a single prompt, the token ids of each prompt)."""
        single = isinstance(prompts, str) or (isinstance(prompts, TOKEN_LISTS) and len(prompts) > 0 and isinstance(prompts[0], TOKEN_IDS))
        if not single and not isinstance(prompts, (list, tuple)):
            raise MinispecError(f"prompts: a string, a list of token ids, or a list of either, got {type(prompts).__name__}")
        return single, [self._encode(p) for p in ([prompts] if single else prompts)]

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> GenerationResult:
        return self.generate(self.chat_prompt(messages), params)

    def stream(self, prompt, params: SamplingParams | None = None):
        """Yield text pieces of one prompt's first sample as they are accepted."""
        for piece, _ in self.stream_events(prompt, params):
            yield piece

    def stream_events(self, prompt, params: SamplingParams | None = None):
        """Yield (text piece, sequence) of one prompt's first sample; the sequence carries tokens and stats."""
        for seq, piece in self.engine.run([self._encode(prompt)], params_for(params, 1, one=True)):
            if seq.sample == 0:
                yield piece, seq

    def stream_batch(self, prompts, params: SamplingParams | list[SamplingParams] | None = None):
        """Yield (prompt index, sample index, text piece) for every sample of every prompt as its tokens are accepted:
        the batch is decoded together, as generate decodes it (prompts and params as generate takes them; a single
        prompt is a batch of one). Each sample's pieces, joined, are its text in generate's result."""
        _, prompt_ids = self._prompts(prompts)
        for seq, piece in self.engine.run(prompt_ids, params_for(params, len(prompt_ids))):
            yield seq.index, seq.sample, piece

    def logits(self, token_ids) -> np.ndarray:
        """float32 [n, V] logits of every position of `token_ids` (one causal forward, cache released)."""
        ids = self._encode(token_ids)
        self.engine.check_prompt(ids)
        table: list[int] = []
        try:
            self.cache.prepare(table, 0, len(ids))
            plan = build_plan([StepItem.chunk(table, 0, ids, all_logits=True)], self.cache.page_size)
            return self.model.forward(plan, self.cache).host()
        finally:
            self.cache.release(table)
