"""Tokenizer (Hugging Face `tokenizers`), chat templates (sandboxed jinja2) and streaming detokenization."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders

from .errors import MinispecError


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _token_text(value):
    """tokenizer_config.json stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, model_dir: Path, eos_token_ids=()):
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise MinispecError(f"no tokenizer.json in {model_dir}: minispec needs the Hugging Face fast-tokenizer file")
        try:
            self.hf = HFTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on malformed files
            raise MinispecError(f"{path} could not be read ({error})") from None
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        template_path = model_dir / "chat_template.jinja"
        template = template_path.read_text() if template_path.exists() else config.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        self.chat_template = template
        self._compiled = (None, None)  # (template text, its compiled jinja2.Template): _template
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        # Stop on EOS and on end-of-turn control tokens the model may emit instead.
        stops = set(eos_token_ids)
        for text in (self.eos_token, "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>"):
            token = self.hf.token_to_id(text) if text else None
            if token is not None and (text == self.eos_token or text in self._special_tokens()):
                stops.add(token)
        self.stop_token_ids = frozenset(stops)

    def _special_tokens(self) -> set[str]:
        return {t.content for t in self.hf.get_added_tokens_decoder().values() if t.special}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render like transformers does; the result already holds BOS where the template puts it."""
        if not self.chat_template:
            raise MinispecError("this model has no chat template (tokenizer_config.json / chat_template.jinja): use generate")
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise MinispecError("chat messages must be dicts with 'role' and 'content'")
        try:
            return self._template().render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except jinja2.exceptions.TemplateError as error:
            raise MinispecError(f"chat template failed: {error}") from None

    def _template(self) -> jinja2.Template:
        """The chat template compiled once (compiling it took ~2 ms a chat turn, as long as the GPU's reply of 10
        tokens). A syntax error surfaces here, in apply_chat_template's try."""
        if self._compiled[0] != self.chat_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = (self.chat_template, env.from_string(self.chat_template))
        return self._compiled[1]

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns token ids into text pieces as they arrive.

    `decoders.DecodeStream` holds back a multi-byte character until its last
    token; if it raises on a prefix it cannot decode we start a fresh stream
    from the tokens seen so far, which keeps the text identical to `decode`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.stream = decoders.DecodeStream(skip_special_tokens=True)
        self.token_ids: list[int] = []
        self.text = ""
        self.finished = False

    def step(self, token_id: int) -> str:
        self.token_ids.append(int(token_id))
        try:
            piece = self.stream.step(self.tokenizer.hf, int(token_id)) or ""
        except Exception:
            full = self.tokenizer.decode(self.token_ids)
            piece = full[len(self.text):] if full.startswith(self.text) and "\ufffd" not in full else ""
            self.stream = decoders.DecodeStream(skip_special_tokens=True)
        self.text += piece
        return piece

    def finish(self) -> str:
        """Once, at the end: the text of tokens still held back (a multi-byte character cut by the last token),
        as `decode` gives it (U+FFFD for the incomplete bytes), so the whole text is `decode`'s."""
        if self.finished:
            return ""
        self.finished = True
        full = self.tokenizer.decode(self.token_ids)
        piece = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += piece
        return piece
