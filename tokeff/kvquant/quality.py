"""How much a KV cache changes the model, on the same text and windows as plain scoring: mean
per-token KL divergence of the next-token distribution from the full model's, top-1 agreement and
the change in bits per byte, each with a 95% bootstrap interval over segments of consecutive
tokens (tokens within a segment are correlated; segments are close to independent)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.core.scoring import DecodeOrder, compare_tokens

DEFAULT_SEGMENT = 128  # tokens per bootstrap segment
DEFAULT_RESAMPLES = 2000


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def bootstrap(per_token: torch.Tensor, segment: int, resamples: int, seed: int = 0,
              scale: float = 1.0) -> Interval:
    """Mean of `per_token` (times `scale`) and its 95% percentile interval, resampling whole segments."""
    if segment < 1 or resamples < 1:
        raise TokeffError(f"--segment and --resamples must be >= 1, got {segment} and {resamples}")
    values = per_token.double()
    n_segments = max(1, len(values) // segment)
    # Equal-sized segments (the remainder joins the last) so that a segment mean weighs its tokens.
    bounds = [i * segment for i in range(n_segments)] + [len(values)]
    sums = torch.stack([values[a:b].sum() for a, b in zip(bounds, bounds[1:])])
    counts = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])], dtype=torch.float64)
    pick = torch.randint(n_segments, (resamples, n_segments), generator=torch.Generator().manual_seed(seed))
    means = sums[pick].sum(1) / counts[pick].sum(1) * scale
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Interval(float(values.mean()) * scale, low, high)


@dataclass
class KVQuality:
    tokens: int
    bytes: int
    bpb: float
    reference_bpb: float
    kl: Interval  # nats per token
    top1: Interval  # fraction of tokens
    delta_bpb: Interval
    kv_bytes_per_token: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens, "bytes": self.bytes, "bpb": self.bpb, "reference_bpb": self.reference_bpb,
            "kl": self.kl.to_json(), "top1": self.top1.to_json(), "delta_bpb": self.delta_bpb.to_json(),
            "kv_bytes_per_token": self.kv_bytes_per_token, "seconds": self.seconds,
        }


class _MeasuredFactory:
    """Hands out fresh caches and records, for each one finished, its bytes per token held."""

    def __init__(self, make: Callable[[], Any]):
        self.make, self.current, self.per_token = make, None, []

    def __call__(self):
        self.close()
        self.current = self.make()
        return self.current

    def close(self) -> None:
        if self.current is not None and self.current.get_seq_length():
            held = max(layer.stored_tokens for layer in self.current.layers)
            self.per_token.append(self.current.nbytes / held)
        self.current = None


def kv_quality(
    lm: LoadedModel, text: str, make_cache: Callable[[], Any], context: int = 1024, stride: int | None = None,
    chunk: int = 16, segment: int = DEFAULT_SEGMENT, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> KVQuality:
    """The cache from `make_cache` (one per window) against the full model on `text`."""
    factory = _MeasuredFactory(make_cache)
    result = compare_tokens(lm, lm.encode_plain(text), context, stride, DecodeOrder(factory, chunk=chunk))
    factory.close()
    n_bytes = len(text.encode("utf-8"))
    tokens = len(result.token_ids)
    to_bpb = tokens / n_bytes / math.log(2)  # mean nats per token -> bits per byte
    return KVQuality(
        tokens=tokens, bytes=n_bytes,
        bpb=float(result.nll.sum()) / math.log(2) / n_bytes,
        reference_bpb=float(result.reference_nll.sum()) / math.log(2) / n_bytes,
        kl=bootstrap(result.kl, segment, resamples, seed),
        top1=bootstrap(result.agree.double(), segment, resamples, seed),
        delta_bpb=bootstrap(result.nll - result.reference_nll, segment, resamples, seed, scale=to_bpb),
        kv_bytes_per_token=sum(factory.per_token) / max(1, len(factory.per_token)),
        seconds=result.seconds,
    )
