"""Ensembles of models with different vocabularies, combined byte by byte.

Token distributions of two vocabularies cannot be added; their byte-level distributions can.
`mix` averages the members' next-byte probabilities (a mixture: never worse, in log-loss, than
the weighted members' log-losses combined); `product` takes their weighted geometric mean and
renormalizes (a product of experts: sharper, rewards agreement). Weights are normalized to sum 1.

`--weight auto` is the Bayesian mixture: each byte's weights are the members' posteriors given
the bytes so far (prior equal). The mixture's probability of a text is then the prior-weighted
sum of the members' probabilities of it, so its total bits are at most the best member's plus
log2(members), on any text. By the same identity they are never below the best member's: an
average of the members' probabilities of a text is at most the largest. `auto` tracks the best
member of a text; only a mixture whose weights may move back (e.g. fixed-share) can beat it.
"""

from __future__ import annotations

import torch

from tokeff.core.errors import TokeffError
from tokeff.core.weights import AUTO, Weights, ensemble_weights
from tokeff.decoding.bytelevel.model import ByteLevelModel


class ByteEnsemble:
    """Several byte-level models fed the same bytes; their next-byte distributions combined."""

    def __init__(self, members: list[ByteLevelModel], weights: Weights = None, mode: str = "mix") -> None:
        if not members:
            raise TokeffError("an ensemble needs at least one model")
        self.members = members
        self.auto = weights == AUTO
        self.weights = torch.tensor(ensemble_weights(weights, len(members), mode), dtype=torch.float64)
        self.mode = mode
        self.member_logprobs: torch.Tensor | None = None  # [members, 257] behind the last combined distribution

    def next_byte_logprobs(self) -> torch.Tensor:
        self.member_logprobs = torch.stack([member.next_byte_logprobs() for member in self.members])
        return combine(self.member_logprobs, self.weights, self.mode)

    def append(self, data: bytes | int) -> None:
        for byte in [data] if isinstance(data, int) else data:
            if self.auto:
                if self.member_logprobs is None:
                    self.member_logprobs = torch.stack([member.next_byte_logprobs() for member in self.members])
                self.weights = posterior(self.weights.log(), self.member_logprobs[:, byte, None])[:, -1].exp()
            for member in self.members:
                member.append(byte)
            self.member_logprobs = None

    @property
    def model_calls(self) -> list[int]:
        return [member.model_calls for member in self.members]


def combine(member_logprobs: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Next-byte log-probabilities [members, ..., 257] combined into normalized distributions [..., 257];
    weights [members] or [members, ...] (one set per distribution)."""
    weights = weights.reshape(weights.shape + (1,) * (member_logprobs.dim() - weights.dim()))
    if mode == "mix":
        scores = torch.logsumexp(member_logprobs + weights.log(), dim=0)
    else:
        scores = (weights * member_logprobs).sum(0)  # -inf anywhere stays -inf (weights > 0)
    return scores - torch.logsumexp(scores, -1, keepdim=True)


def posterior(log_prior: torch.Tensor, byte_logprobs: torch.Tensor) -> torch.Tensor:
    """Log posterior weights [members, T + 1] before each of T bytes and after the last, given each
    member's log-probability of each byte [members, T] (Bayes' rule, one byte at a time)."""
    start = torch.zeros(byte_logprobs.shape[0], 1, dtype=byte_logprobs.dtype)
    joint = log_prior[:, None] + torch.cat([start, byte_logprobs.cumsum(1)], dim=1)
    return joint - torch.logsumexp(joint, 0, keepdim=True)
