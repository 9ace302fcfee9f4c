"""The one per-token scorer: the negative log-likelihood of every token of a sequence under a model.

Long sequences are scored with overlapping windows: each window holds the boundary token and up
to `context - 1` tokens, and scores only the tokens the previous window did not, so every token is
scored once with at least `context - 1 - stride` tokens of left context.

A window is scored in one causal pass, or, given a `DecodeOrder`, through a fresh cache the way
generation meets it: the window's left context is fed first (as a prompt), then its new tokens
`chunk` at a time, each call attending over the cache as the earlier calls left it. Caches that
change what attention sees (quantized, evicting) are measured this way; a cache that changes
nothing gives the one-pass numbers, on the same windows. `compare_tokens` scores each window both
ways and compares the two next-token distributions token by token (KL divergence, top-1 agreement).

Inputs are token ids, or (`embed`) input embeddings of ids the vocabulary lacks (dynamic tokens),
and targets are scored by cross-entropy over the model's logits or by `log_probs` (an extended
output layer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel

Embed = Callable[[list[int]], torch.Tensor]  # ids -> [1, n, hidden] input embeddings
LogProbs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [n, V], targets [n]) -> [n]


@dataclass
class DecodeOrder:
    """Score through a cache: a fresh `make_cache()` per window, `chunk` tokens per scored call, the
    left context fed `prefill_chunk` tokens per call (None: in one call, as a prompt is)."""

    make_cache: Callable[[], Any]
    chunk: int = 16
    prefill_chunk: int | None = None
    bounds_positions: bool = False  # the cache renumbers positions, so windows may exceed the model's

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise TokeffError(f"--chunk must be >= 1, got {self.chunk}")


@dataclass(kw_only=True)
class TokenScores:
    """What the scorer returns: each token's negative log-likelihood and how it was scored."""

    token_ids: list[int] = field(repr=False)
    token_nll: torch.Tensor = field(repr=False)  # nats per token (float64, CPU), aligned with token_ids
    context: int
    stride: int  # tokens between window starts, as used
    seconds: float
    chunk: int | None = None  # tokens per call in decode order; None: one pass per window

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict[str, Any]:
        scoring = "windows" if self.chunk is None else "windows in decode order"
        return {"tokens": self.tokens, "seconds": self.seconds, "context": self.context, "stride": self.stride,
                "scoring": scoring, **({} if self.chunk is None else {"chunk": self.chunk})}


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
def score_tokens(
    lm: LoadedModel,
    token_ids: list[int],
    context: int,
    stride: int | None = None,
    *,
    decode_order: DecodeOrder | None = None,
    embed: Embed | None = None,
    log_probs: LogProbs | None = None,
    first_scored: int = 0,
    label: str | None = "scoring",
    prefix: int | None = None,
) -> TokenScores:
    """Negative log-likelihood of token_ids[first_scored:] (earlier tokens are context only), each
    window prefixed by the boundary token. `stride` defaults to half the context; `label` names the
    progress bar (None: none, for callers that score many short sequences under their own).
    `prefix` overrides the boundary token (`prefix_token_id`): comparing models whose tokenizers
    disagree on it needs the same prefix row for all of them.

    Windows must fit the model's positions, unless the cache bounds the positions it hands the model
    (attention sinks), whose method checks its own bound."""
    lm.check_context(context, within_positions=decode_order is None or not decode_order.bounds_positions)
    stride = _stride(context, stride)
    started = time.perf_counter()
    plan = _windows(token_ids, context, stride, first_scored)
    nll = torch.zeros(len(token_ids), dtype=torch.float64)
    feed_window = _through_cache if decode_order is not None else _one_pass
    prefix = prefix_token_id(lm) if prefix is None else prefix
    for start, end, first in plan if label is None else console.track(plan, label):
        window = [prefix] + token_ids[start:end]
        nll[first:end] = feed_window(lm, window, first - start, embed, log_probs or _target_log_probs, decode_order)
    return TokenScores(
        token_ids=list(token_ids), token_nll=nll, context=context, stride=stride,
        seconds=time.perf_counter() - started, chunk=decode_order.chunk if decode_order else None,
    )


@torch.inference_mode()
def score_many(lm: LoadedModel, sequences: list[list[int]], context: int, stride: int | None = None,
               max_tokens: int | None = None) -> list[TokenScores]:
    """`score_tokens` (one pass per window) for many sequences, windows of several sequences padded
    into one model call of at most `max_tokens` tokens (default: the context, so memory stays that of
    one window): short documents cost a fraction of a call each. Same scores as one by one, up to
    float rounding (right padding leaves real tokens' positions and attention as they were)."""
    lm.check_context(context)
    stride = _stride(context, stride)
    budget = max(max_tokens or context, context)
    started = time.perf_counter()
    prefix = prefix_token_id(lm)
    nll = [torch.zeros(len(ids), dtype=torch.float64) for ids in sequences]
    windows = [(index, [prefix] + ids[start:end], first - start, first, end)
               for index, ids in enumerate(sequences) for start, end, first in _windows(ids, context, stride)]
    windows.sort(key=lambda window: -len(window[1]))  # longest first: each call pads to its first row
    at = 0
    while at < len(windows):
        rows = max(1, budget // len(windows[at][1]))
        group, at = windows[at : at + rows], at + rows
        length = len(group[0][1])
        ids = torch.tensor([w + [prefix] * (length - len(w)) for _, w, *_ in group], device=lm.device)
        mask = torch.tensor([[1] * len(w) + [0] * (length - len(w)) for _, w, *_ in group], device=lm.device)
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
        for row, (index, window, context_tokens, first, end) in enumerate(group):
            scored = logits[row, context_tokens : len(window) - 1]
            nll[index][first:end] = _nll(scored, window[context_tokens + 1 :], _target_log_probs)
    seconds = (time.perf_counter() - started) / max(1, len(sequences))  # an even share of the batch's time
    return [TokenScores(token_ids=list(ids), token_nll=scores, context=context, stride=stride, seconds=seconds)
            for ids, scores in zip(sequences, nll)]


def _stride(context: int, stride: int | None) -> int:
    """The stride as used: default half the context; the boundary token occupies one position of each
    window, so a full-context stride shrinks with it."""
    stride = stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise TokeffError(f"--stride must be in 1..{context} (the context), got {stride}")
    return min(stride, context - 1)


def _windows(token_ids: list[int], context: int, stride: int, first_scored: int = 0) -> list[tuple[int, int, int]]:
    if not token_ids:
        raise TokeffError("the text produced no tokens")
    plan = window_plan(len(token_ids), context - 1, stride)
    return [(start, end, max(first, first_scored)) for start, end, first in plan if end > first_scored]


def _target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def _call(lm: LoadedModel, ids: list[int], embed: Embed | None, **kwargs) -> torch.Tensor:
    if embed is not None:
        return lm.model(inputs_embeds=embed(ids), **kwargs).logits[0]
    return lm.model(input_ids=torch.tensor([ids], device=lm.device), **kwargs).logits[0]


def _nll(logits: torch.Tensor, targets: list[int], log_probs: LogProbs) -> torch.Tensor:
    return -log_probs(logits, torch.tensor(targets, device=logits.device)).double().cpu()


def _one_pass(lm, window, context_tokens, embed, log_probs, decode_order) -> torch.Tensor:
    return _nll(_window_logits(lm, window, context_tokens, embed), window[context_tokens + 1 :], log_probs)


def _window_logits(lm, window, context_tokens, embed) -> torch.Tensor:
    """Logits of the scored positions in one causal pass (only those: a 262k vocabulary makes full logits costly)."""
    n_scored = len(window) - 1 - context_tokens
    return _call(lm, window, embed, logits_to_keep=n_scored + 1)[:-1]


def _through_cache(lm, window, context_tokens, embed, log_probs, order: DecodeOrder) -> torch.Tensor:
    out = [_nll(logits, window[context_tokens + 1 + at : context_tokens + 1 + at + len(logits)], log_probs)
           for at, logits in _cache_logits(lm, window, context_tokens, embed, order)]
    return torch.cat(out)


def _cache_logits(lm, window, context_tokens, embed, order: DecodeOrder):
    """(offset among the scored positions, logits) per call: the window's boundary token and left
    context fed as a prompt, then its scored positions `chunk` at a time."""
    cache = order.make_cache()
    step = order.prefill_chunk or context_tokens or 1
    for at in range(0, context_tokens, step):
        _call(lm, window[at : min(at + step, context_tokens)], embed, past_key_values=cache, use_cache=True,
              logits_to_keep=1)
    # Position p's logits predict window[p + 1]: scoring starts at the last context position.
    for at in range(context_tokens, len(window) - 1, order.chunk):
        piece = window[at : min(at + order.chunk, len(window) - 1)]
        yield at - context_tokens, _call(lm, piece, embed, past_key_values=cache, use_cache=True)


@dataclass(kw_only=True)
class TokenComparison:
    """Per scored token, a cache's next-token distribution against the full model's on the same windows."""

    token_ids: list[int] = field(repr=False)
    kl: torch.Tensor = field(repr=False)  # KL(full || cache) in nats, float64
    agree: torch.Tensor = field(repr=False)  # bool: the same top-1 token
    nll: torch.Tensor = field(repr=False)  # through the cache, nats
    reference_nll: torch.Tensor = field(repr=False)  # one pass, nats
    seconds: float


@torch.inference_mode()
def compare_tokens(
    lm: LoadedModel, token_ids: list[int], context: int, stride: int | None, decode_order: DecodeOrder,
    label: str | None = "comparing",
) -> TokenComparison:
    """`score_tokens`' windows scored twice, in one pass and in decode order through the cache, keeping
    only one window's reference logits at a time; every token is scored once, as there."""
    lm.check_context(context, within_positions=not decode_order.bounds_positions)
    started = time.perf_counter()
    plan = _windows(token_ids, context, _stride(context, stride))
    n = len(token_ids)
    kl, nll, reference = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
    agree = torch.zeros(n, dtype=torch.bool)
    prefix = prefix_token_id(lm)
    for start, end, first in plan if label is None else console.track(plan, label):
        window = [prefix] + token_ids[start:end]
        context_tokens = first - start
        expected = F.log_softmax(_window_logits(lm, window, context_tokens, None).float(), -1)
        targets = torch.tensor(window[context_tokens + 1 :], device=expected.device)
        reference[first:end] = -expected.gather(1, targets[:, None])[:, 0].double().cpu()
        for at, logits in _cache_logits(lm, window, context_tokens, None, decode_order):
            got, want = F.log_softmax(logits.float(), -1), expected[at : at + len(logits)]
            rows = slice(first + at, first + at + len(logits))
            kl[rows] = (want.exp() * (want - got)).sum(-1).double().cpu()
            agree[rows] = (got.argmax(-1) == want.argmax(-1)).cpu()
            nll[rows] = -got.gather(1, targets[at : at + len(logits), None])[:, 0].double().cpu()
    return TokenComparison(token_ids=list(token_ids), kl=kl, agree=agree, nll=nll, reference_nll=reference,
                           seconds=time.perf_counter() - started)
