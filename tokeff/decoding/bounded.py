"""Decode methods whose KV cache holds a bounded number of positions: lossy by design, measured by
`tokeff eval bpb --method NAME` (decode-order scoring through the same cache) against the full cache."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from transformers import Cache

from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import BpbResult, bits_per_byte
from tokeff.core.models import LoadedModel
from tokeff.core.scoring import DecodeOrder
from tokeff.decoding.autoregressive import Autoregressive
from tokeff.decoding.types import DecodeResult, Prompt, TextCallback, cache_nbytes


class BoundedCacheMethod(Autoregressive):
    """Plain decoding (greedy or sampled) through `make_cache`; long prompts are fed in chunks so the
    cache never grows past its bound plus one chunk."""

    lossless = False
    bounds_positions = False  # whether the cache renumbers positions, so streams may run past the model's

    def __init__(self, lm: LoadedModel, config, **options) -> None:
        super().__init__(lm, config, **options)
        if config.cache_factory is not None:
            raise TokeffError(f"--method {self.name} brings its own cache and cannot be combined with another")
        self.config = replace(config, cache_factory=self.make_cache)

    @abstractmethod
    def make_cache(self, lm: LoadedModel) -> Cache:
        """A fresh cache for one sequence."""

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """What the model needs while this cache is in use (nothing, unless a subclass says otherwise)."""
        yield

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        with self.scoring():
            return super().generate(prompt, on_text)


@dataclass
class BoundedBpb:
    """Decode-order bits per byte through a bounded cache beside the full cache on the same windows."""

    method: str
    options: dict[str, Any]
    bounded: BpbResult
    full: BpbResult
    kv_bytes: int  # the bounded cache at the end of the longest window
    full_kv_bytes: int  # a cache holding every position of that window

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            **self.options,
            "bpb": self.bounded.bpb,
            "full_cache_bpb": self.full.bpb,
            "bpb_increase": self.bounded.bpb - self.full.bpb,
            "kv_bytes": self.kv_bytes,
            "full_cache_kv_bytes": self.full_kv_bytes,
            "bytes": self.bounded.bytes,
            "tokens": self.bounded.tokens,
            "context": self.bounded.context,
            "stride": self.bounded.stride,
            "full_cache_context": self.full.context,
            "full_cache_stride": self.full.stride,
            "scoring": self.bounded.to_json()["scoring"],
            "chunk": self.bounded.chunk,
            "seconds": self.bounded.seconds + self.full.seconds,
        }


def bounded_cache_bpb(
    method: BoundedCacheMethod, text: str, context: int, stride: int | None = None, chunk: int = 1
) -> BoundedBpb:
    """Bits per byte of `text` scored in decode order through the method's cache (sliding windows of
    `context` tokens, `stride` apart, the left context fed in the method's prefill chunks, then `chunk`
    tokens per model call), beside the full cache on the same windows, and the memory of both."""
    lm = method.lm
    current: list[Cache] = []
    kv_bytes = kept = 0

    def measure() -> None:  # a finished window's cache: its size (windows are bounded alike)
        nonlocal kv_bytes, kept
        if current:
            kv_bytes = max(kv_bytes, cache_nbytes(current[0]))
            kept = max([kept, *(layer.keys.shape[-2] for layer in current[0].layers if layer.keys is not None)])

    def make_cache() -> Cache:
        measure()
        current[:] = [method.make_cache(lm)]
        return current[0]

    order = DecodeOrder(make_cache, chunk=chunk, prefill_chunk=method.prefill_chunk,
                        bounds_positions=method.bounds_positions)
    with method.scoring():
        bounded = bits_per_byte(lm, text, context=context, stride=stride, decode_order=order)
    measure()
    # Full attention over the same windows is one causal pass per window; windows past the model's
    # positions shrink to that limit.
    full_context = min(context, lm.max_positions or context)
    full = bits_per_byte(lm, text, context=full_context, stride=min(bounded.stride, full_context))
    longest = min(full_context, bounded.tokens + 1)  # positions of the longest window, boundary token included
    options = {name: value for name, value in method.opts.items() if value is not None}
    return BoundedBpb(method.name, options, bounded, full, kv_bytes, kv_bytes * longest // kept)
