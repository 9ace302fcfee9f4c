"""The data every decode method takes and returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from transformers import Cache

from tokeff.core.models import LoadedModel

if TYPE_CHECKING:
    from tokeff.decoding.sampling import TokenChooser

TextCallback = Callable[[str], None]


@dataclass
class DecodeConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_at_eos: bool = True
    # Hooks other capabilities plug in without touching each method: a watermark supplies its own
    # token chooser, a quantized KV cache its own cache.
    chooser_factory: Callable[[DecodeConfig], TokenChooser] | None = None
    cache_factory: Callable[[LoadedModel], Cache] | None = None


@dataclass
class Prompt:
    """A prompt as text and as the model's token ids (byte-level methods need the text)."""

    text: str
    ids: list[int]

    @classmethod
    def from_text(cls, lm: LoadedModel, text: str, chat: bool = False) -> Prompt:
        if chat:
            if not lm.tokenizer.chat_template:
                from tokeff.core.errors import TokeffError

                raise TokeffError(f"{lm.spec}: tokenizer has no chat template, so --chat cannot be used")
            ids = lm.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            return cls(text=lm.tokenizer.decode(ids), ids=ids)
        return cls(text=text, ids=lm.encode(text))


@dataclass
class DecodeStats:
    """Counters a method updates while it runs; `to_json` adds the derived rates."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    forward_passes: int = 0
    peak_kv_bytes: int = 0
    seconds: float = 0.0
    prefill_seconds: float | None = None  # set by methods that mark where the prompt's pass ended
    _started: float = field(default_factory=time.perf_counter, repr=False)

    def observe_cache(self, cache: Cache) -> None:
        self.peak_kv_bytes = max(self.peak_kv_bytes, cache_nbytes(cache))

    def end_prefill(self) -> None:
        """The prompt's logits are in: what follows is decoding (one token from them, then a pass per token)."""
        self.prefill_seconds = time.perf_counter() - self._started

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self._started

    def _phases(self) -> dict[str, Any]:
        """Prefill and decode apart: a long prompt's prefill otherwise hides decode speed. The first
        new token comes from the prompt's logits, so decoding made the other new_tokens - 1."""
        if self.prefill_seconds is None:
            return {}
        decode_seconds = self.seconds - self.prefill_seconds
        return {
            "prefill_seconds": self.prefill_seconds,
            "prefill_tokens_per_s": self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0,
            "decode_seconds": decode_seconds,
            "decode_tokens_per_s": (self.new_tokens - 1) / decode_seconds if decode_seconds > 0 else 0.0,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "tokens": self.new_tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.new_tokens / self.seconds if self.seconds > 0 else 0.0,
            "forward_passes": self.forward_passes,
            "accepted_per_pass": self.new_tokens / self.forward_passes if self.forward_passes else 0.0,
            "peak_kv_bytes": self.peak_kv_bytes,
            **self._phases(),
        }


@dataclass
class DecodeResult:
    text: str
    token_ids: list[int]
    stats: DecodeStats
    details: dict[str, Any] = field(default_factory=dict)  # method-specific facts (e.g. which draft path)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, **self.stats.to_json(), **self.details}


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by a transformers cache: its layers' key and value tensors (quantized caches report their own)."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total
