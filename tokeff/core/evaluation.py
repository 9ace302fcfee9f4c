"""Bits per UTF-8 byte: the tokenizer-independent yardstick every capability reports its quality with.

bpb = (sum of the tokens' negative log-likelihoods, in bits) / (UTF-8 bytes of the text).
Long texts are scored with overlapping windows: each window holds up to `context` tokens and
scores only the tokens the previous window did not, so every token is scored once with at least
`context - stride` tokens of left context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel


@dataclass
class BpbResult:
    bpb: float
    bytes: int
    tokens: int
    seconds: float
    context: int
    stride: int
    token_nll: torch.Tensor = field(repr=False)  # nats per token, aligned with token_ids
    token_ids: list[int] = field(repr=False)

    def to_json(self) -> dict:
        return {
            "bpb": self.bpb,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "bytes_per_token": self.bytes / self.tokens,
            "seconds": self.seconds,
            "context": self.context,
            "stride": self.stride,
        }


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every encoded text with its BOS token."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]


def prefix_token_id(lm: LoadedModel) -> int:
    """The token each window starts with: BOS if the tokenizer adds one, else its end-of-text token.

    A document-boundary token lets the first token of the text be scored, and starting every
    window with it keeps models that rely on BOS as an attention sink (Gemma) well-behaved.
    """
    tokenizer = lm.tokenizer
    if adds_bos(tokenizer):
        return tokenizer.bos_token_id
    for candidate in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return candidate
    raise TokeffError(f"{lm.spec}: tokenizer has neither a BOS nor an EOS token to start windows with")


def window_plan(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) for each window over the token sequence."""
    if stride <= 0 or stride > context:
        raise TokeffError(f"--stride must be in 1..{context} (the context), got {stride}")
    plan, scored_until, start = [], 0, 0
    while scored_until < n_tokens:
        end = min(start + context, n_tokens)
        plan.append((start, end, scored_until))
        scored_until = end
        start += stride
    return plan


@torch.inference_mode()
def token_nlls(lm: LoadedModel, token_ids: list[int], context: int, stride: int) -> torch.Tensor:
    """Negative log-likelihood (nats) of every token, each window prefixed by the boundary token."""
    prefix = prefix_token_id(lm)
    # The prefix occupies one position of the model's context, so a full-context stride shrinks with it.
    plan = window_plan(len(token_ids), context - 1, min(stride, context - 1))
    ids = torch.tensor(token_ids, dtype=torch.long)
    nll = torch.empty(len(token_ids), dtype=torch.float64)
    for start, end, first_scored in console.track(plan, "scoring"):
        window = torch.cat([torch.tensor([prefix]), ids[start:end]]).unsqueeze(0).to(lm.device)
        n_scored = end - first_scored
        # Only the scored positions' logits are computed: a 262k vocabulary makes full logits costly.
        logits = lm.model(window, logits_to_keep=n_scored + 1).logits[0, :-1].float()
        targets = window[0, -n_scored:]
        nll[first_scored:end] = F.cross_entropy(logits, targets, reduction="none").double().cpu()
    return nll


@torch.inference_mode()
def decode_order_nlls(
    lm: LoadedModel, token_ids: list[int], make_cache: Callable[[], object], chunk: int = 1, segment: int | None = None
) -> torch.Tensor:
    """Negative log-likelihood (nats) of every token when the text is fed through a cache in decode order.

    Caches that change what attention sees (quantized, evicting) must be measured as generation
    meets them: each call of `chunk` tokens attends over the cache as it stands after the earlier
    calls. With `segment`, the text is cut into pieces of that many tokens, each with a fresh cache
    and the boundary token, for caches bounded by the model's context; without, it is one stream.
    """
    prefix = prefix_token_id(lm)
    segment = segment or len(token_ids)
    nll = torch.empty(len(token_ids), dtype=torch.float64)
    starts = range(0, len(token_ids), segment)
    for seg_start in console.track(starts, "scoring in decode order"):
        feed = [prefix] + token_ids[seg_start : seg_start + segment]
        cache = make_cache()
        for start in range(0, len(feed) - 1, chunk):
            piece = feed[start : start + chunk]
            targets = torch.tensor(feed[start + 1 : start + 1 + len(piece)], device=lm.device)
            inputs = torch.tensor([piece], device=lm.device)
            logits = lm.model(input_ids=inputs, past_key_values=cache, use_cache=True).logits[0].float()
            n = len(targets)
            nll[seg_start + start : seg_start + start + n] = (
                F.cross_entropy(logits[:n], targets, reduction="none").double().cpu()
            )
    return nll


def bits_per_byte(
    lm: LoadedModel,
    text: str,
    context: int = 1024,
    stride: int | None = None,
    make_cache: Callable[[], object] | None = None,
    chunk: int = 1,
) -> BpbResult:
    """Bits per byte with sliding windows, or, given `make_cache`, in decode order through that cache
    (segments of `context` tokens, `chunk` tokens per model call)."""
    if context < 2:
        raise TokeffError(f"--context must be at least 2, got {context}")
    limit = lm.model.config.get_text_config().max_position_embeddings
    # A cache that bounds positions (attention sinks) runs past the model's context; the caller checks its cache.
    if limit and context > limit and make_cache is None:
        raise TokeffError(f"--context {context} exceeds the model's {limit} positions")
    stride = stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise TokeffError(f"--stride must be in 1..{context} (the context), got {stride}")
    started = time.perf_counter()
    token_ids = lm.encode_plain(text)
    if not token_ids:
        raise TokeffError("the text produced no tokens")
    if make_cache is None:
        nll = token_nlls(lm, token_ids, context, stride)
    else:
        nll = decode_order_nlls(lm, token_ids, make_cache, chunk=chunk, segment=context - 1)
    n_bytes = len(text.encode("utf-8"))
    return BpbResult(
        bpb=float(nll.sum()) / math.log(2) / n_bytes,
        bytes=n_bytes,
        tokens=len(token_ids),
        seconds=time.perf_counter() - started,
        context=context,
        stride=stride,
        token_nll=nll,
        token_ids=token_ids,
    )
