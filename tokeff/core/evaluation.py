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
from tokeff.core.scoring import DecodeOrder, TokenScores, score_tokens


@dataclass(kw_only=True)
class BpbResult(TokenScores):
    bpb: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"bpb": self.bpb, "bytes": self.bytes, "bytes_per_token": self.bytes / self.tokens, **super().to_json()}


def bits_per_byte(
    lm: LoadedModel, text: str, context: int = 1024, stride: int | None = None, decode_order: DecodeOrder | None = None
) -> BpbResult:
    """Bits per byte of `text` with sliding windows of `context` tokens, `stride` apart (default: half
    the context), each scored in one pass or, given `decode_order`, through its cache."""
    scores = score_tokens(lm, lm.encode_plain(text), context, stride, decode_order=decode_order)
    n_bytes = len(text.encode("utf-8"))
    return BpbResult(**vars(scores), bpb=float(scores.token_nll.sum()) / math.log(2) / n_bytes, bytes=n_bytes)
