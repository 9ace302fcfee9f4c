"""Bits per UTF-8 byte: the tokenizer-independent yardstick every capability reports its quality with.

bpb = (sum of the tokens' negative log-likelihoods, in bits) / (UTF-8 bytes of the text), the
tokens scored by the one per-token scorer (`scoring.py`: sliding windows, optionally in decode
order through a cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tokeff.core.models import LoadedModel
from tokeff.core.scoring import DecodeOrder, TokenScores, score_many, score_tokens


@dataclass(kw_only=True)
class BpbResult(TokenScores):
    bpb: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"bpb": self.bpb, "bytes": self.bytes, "bytes_per_token": self.bytes / self.tokens, **super().to_json()}


def bits_per_byte(
    lm: LoadedModel, text: str, context: int = 1024, stride: int | None = None, decode_order: DecodeOrder | None = None,
    prefix: int | None = None,
) -> BpbResult:
    """Bits per byte of `text` with sliding windows of `context` tokens, `stride` apart (default: half
    the context), each scored in one pass or, given `decode_order`, through its cache; each window
    starts with `prefix` (default: the tokenizer's boundary token, `prefix_token_id`)."""
    return _result(score_tokens(lm, lm.encode_plain(text), context, stride, decode_order=decode_order, prefix=prefix), text)


def bits_per_byte_many(lm: LoadedModel, texts: list[str], context: int = 1024, stride: int | None = None,
                       max_tokens: int | None = None) -> list[BpbResult | None]:
    """`bits_per_byte` of each text, windows of several texts per model call (`score_many`);
    None for a text that produced no tokens."""
    ids = [lm.encode_plain(text) for text in texts]
    scored = iter(score_many(lm, [tokens for tokens in ids if tokens], context, stride, max_tokens))
    return [_result(next(scored), text) if tokens else None for text, tokens in zip(texts, ids)]


def _result(scores: TokenScores, text: str) -> BpbResult:
    n_bytes = len(text.encode("utf-8"))
    return BpbResult(**vars(scores), bpb=float(scores.token_nll.sum()) / math.log(2) / n_bytes, bytes=n_bytes)
