"""Bits per byte of byte-level models and their ensembles: every byte scored under the next-byte distribution.

A long text is cut into windows like the token-level scorer's: each scores a segment (cut after a
newline where possible) after up to `context_bytes` of the text before it (0: a fresh context per
segment). Every member is scored on the same windows, so an ensemble and its members are compared
like for like, and the ensemble (mix, product, or `auto`, the Bayesian average over weightings) is computed from the
members' next-byte distributions afterwards.

Each member is scored in batched passes over its covering trees (`batched.py`), or, with
`batched=False`, one incremental call per byte (the reference the batched scorer must equal).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.core.weights import AUTO, Weights, ensemble_weights
from tokeff.decoding.bytelevel.batched import batched_byte_logprobs
from tokeff.decoding.bytelevel.ensemble import combine, pool_grid, pooled_logprobs, posterior
from tokeff.decoding.bytelevel.model import ByteLevelModel
from tokeff.decoding.bytelevel.utf8 import partial_start
from tokeff.decoding.bytelevel.vocab import END
from tokeff.decoding.types import DecodeStats

_CHUNK = 2048  # bytes whose pooled distributions `auto` holds at once
Window = tuple[int, int, int]  # (context start, start, end): scores data[start:end] after data[context start:start]


@dataclass
class ByteBpbResult:
    bpb: float
    member_bpb: list[float]
    bytes: int
    segments: int
    seconds: float
    model_calls: list[int]
    member_seconds: list[float] = field(default_factory=list)
    tree_tokens: list[int] = field(default_factory=list)  # tokens fed per member (batched: covering-tree nodes)
    context_bytes: int = 0
    weights: list[float] | str | None = None
    byte_nll: torch.Tensor = field(default=None, repr=False)  # [members + 1, bytes] nats: members, then the ensemble
    member_logprobs: torch.Tensor = field(default=None, repr=False)  # [members, bytes, 257] next-byte log-probabilities

    def to_json(self) -> dict:
        return {
            "bpb": self.bpb,
            "member_bpb": self.member_bpb,
            "bytes": self.bytes,
            "segments": self.segments,
            "context_bytes": self.context_bytes,
            "seconds": self.seconds,
            "member_seconds": self.member_seconds,
            "member_seconds_per_byte": [seconds / self.bytes for seconds in self.member_seconds],
            "model_calls": self.model_calls,
            "model_calls_per_byte": [calls / self.bytes for calls in self.model_calls],
            "tree_tokens_per_byte": [tokens / self.bytes for tokens in self.tree_tokens],
        }


def segments(data: bytes, segment_bytes: int) -> list[bytes]:
    """Pieces of at most `segment_bytes`, cut after the last newline inside the limit, else at a character boundary."""
    if segment_bytes < 16:
        raise TokeffError(f"--segment-bytes must be at least 16, got {segment_bytes}")
    pieces, start = [], 0
    while start < len(data):
        end = min(start + segment_bytes, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start, end)
            end = newline + 1 if newline > start else start + partial_start(data[start:end])
        pieces.append(data[start:end])
        start = end
    return pieces


def windows(data: bytes, segment_bytes: int, context_bytes: int = 0) -> list[Window]:
    """The segments, each after up to `context_bytes` of the text before it (from a character boundary)."""
    if context_bytes < 0:
        raise TokeffError(f"--context-bytes must be >= 0, got {context_bytes}")
    out, start = [], 0
    for piece in segments(data, segment_bytes):
        context_start = max(0, start - context_bytes)
        while context_start < start and 0x80 <= data[context_start] < 0xC0:
            context_start += 1
        out.append((context_start, start, start + len(piece)))
        start += len(piece)
    return out


def incremental_byte_logprobs(lm: LoadedModel, data: bytes, plan: list[Window], stats: DecodeStats) -> torch.Tensor:
    """The reference: [len(data), 257] next-byte log-probabilities, one incremental model step per byte."""
    out = torch.empty(len(data), END + 1, dtype=torch.float64)
    for context_start, start, end in plan:
        context = data[context_start:start]
        model = ByteLevelModel(lm, text=context, stats=stats) if context else ByteLevelModel(lm, stats=stats)
        for index in range(start, end):
            out[index] = model.next_byte_logprobs()
            model.append(data[index])
    return out


def ensemble_logprobs(member_logprobs: torch.Tensor, data: bytes, weights: Weights = None, mode: str = "mix") -> torch.Tensor:
    """The ensemble's next-byte log-probabilities [bytes, 257] before each byte of `data`, from the members'
    [members, bytes, 257]. With AUTO, byte i's pools are weighted by their posteriors given data[:i]."""
    fixed = ensemble_weights(weights, len(member_logprobs), mode)  # checks the flags
    if weights != AUTO:
        return combine(member_logprobs, torch.tensor(fixed, dtype=torch.float64), mode)
    pools = pool_grid(len(member_logprobs))
    targets = torch.tensor(list(data))
    # Chunks of bytes keep the [pools, bytes, 257] tensor small: once for each pool's probability of the text's
    # bytes (the posteriors), once to average the pools' distributions under them.
    chunks = [slice(start, start + _CHUNK) for start in range(0, len(data), _CHUNK)]
    hits = torch.cat([_pooled_hits(member_logprobs[:, chunk], targets[chunk], pools, mode) for chunk in chunks], dim=1)
    log_posterior = posterior(torch.full((len(pools),), -math.log(len(pools)), dtype=torch.float64), hits)[:, :-1]
    return torch.cat([torch.logsumexp(log_posterior[:, chunk, None] + pooled_logprobs(member_logprobs[:, chunk], pools, mode), 0)
                      for chunk in chunks])


def _pooled_hits(member_logprobs: torch.Tensor, targets: torch.Tensor, pools: torch.Tensor, mode: str) -> torch.Tensor:
    """Each pool's log-probability [pools, bytes] of the bytes `targets` under the members' [members, bytes, 257]."""
    return pooled_logprobs(member_logprobs, pools, mode)[:, torch.arange(len(targets)), targets]


def ensemble_nll(member_logprobs: torch.Tensor, data: bytes, weights: Weights = None, mode: str = "mix") -> torch.Tensor:
    """Negative log-likelihood (nats) of every byte under the ensemble of members' [members, bytes, 257] log-probabilities."""
    return -ensemble_logprobs(member_logprobs, data, weights, mode)[torch.arange(len(data)), torch.tensor(list(data))]


def byte_bits_per_byte(
    lms: list[LoadedModel],
    text: str,
    weights: Weights = None,
    mode: str = "mix",
    segment_bytes: int = 2048,
    context_bytes: int = 0,
    batched: bool = True,
    batch_tokens: int | None = None,
) -> ByteBpbResult:
    """Bits per byte of the byte-level ensemble of `lms` (and of each member alone) on `text`."""
    data = text.encode("utf-8")
    if not data:
        raise TokeffError("the text is empty")
    ensemble_weights(weights, len(lms), mode)
    plan = windows(data, segment_bytes, context_bytes)
    started = time.perf_counter()
    member_logprobs, calls, fed, seconds = [], [], [], []
    for lm in console.track(lms, "scoring bytes"):
        stats = DecodeStats()
        begun = time.perf_counter()
        if batched:
            logprobs, tokens = batched_byte_logprobs(lm, data, plan, stats, batch_tokens)
        else:
            logprobs, tokens = incremental_byte_logprobs(lm, data, plan, stats), None
        seconds.append(time.perf_counter() - begun)
        member_logprobs.append(logprobs)
        calls.append(stats.forward_passes)
        if tokens is not None:
            fed.append(tokens)
    stacked = torch.stack(member_logprobs)
    targets = torch.tensor(list(data))
    member_nll = -stacked[:, torch.arange(len(data)), targets]
    nll = ensemble_nll(stacked, data, weights, mode)
    scale = 1.0 / (math.log(2) * len(data))
    return ByteBpbResult(
        bpb=float(nll.sum()) * scale,
        member_bpb=[float(row.sum()) * scale for row in member_nll],
        bytes=len(data),
        segments=len(plan),
        seconds=time.perf_counter() - started,
        model_calls=calls,
        member_seconds=seconds,
        tree_tokens=fed,
        context_bytes=context_bytes,
        weights=weights,
        byte_nll=torch.cat([member_nll, nll[None]]),
        member_logprobs=stacked,
    )
