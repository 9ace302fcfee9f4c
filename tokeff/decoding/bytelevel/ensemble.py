"""Ensembles of models with different vocabularies, combined byte by byte.

Token distributions of two vocabularies cannot be added; their byte-level distributions can.
`mix` averages the members' next-byte probabilities (a mixture: never worse, in log-loss, than
the weighted members' log-losses combined); `product` takes their weighted geometric mean and
renormalizes (a product of experts: sharper, rewards agreement). Weights are normalized to sum 1.
"""

from __future__ import annotations

import torch

from tokeff.core.errors import TokeffError
from tokeff.core.weights import ensemble_weights
from tokeff.decoding.bytelevel.model import ByteLevelModel


class ByteEnsemble:
    """Several byte-level models fed the same bytes; their next-byte distributions combined."""

    def __init__(self, members: list[ByteLevelModel], weights: list[float] | None = None, mode: str = "mix") -> None:
        if not members:
            raise TokeffError("an ensemble needs at least one model")
        self.members = members
        self.weights = torch.tensor(ensemble_weights(weights, len(members), mode), dtype=torch.float64)
        self.mode = mode
        self.member_logprobs: torch.Tensor | None = None  # [members, 257] behind the last combined distribution

    def next_byte_logprobs(self) -> torch.Tensor:
        self.member_logprobs = torch.stack([member.next_byte_logprobs() for member in self.members])
        return combine(self.member_logprobs, self.weights, self.mode)

    def append(self, data: bytes | int) -> None:
        for member in self.members:
            member.append(data)

    @property
    def model_calls(self) -> list[int]:
        return [member.model_calls for member in self.members]


def combine(member_logprobs: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Next-byte log-probabilities [members, 257] combined into one normalized distribution."""
    if mode == "mix":
        scores = torch.logsumexp(member_logprobs + weights.log()[:, None], dim=0)
    else:
        scores = (weights[:, None] * member_logprobs).sum(0)  # -inf anywhere stays -inf (weights > 0)
    return scores - torch.logsumexp(scores, 0)
