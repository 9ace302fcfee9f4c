"""Ensembles of models with different vocabularies, combined byte by byte.

Token distributions of two vocabularies cannot be added; their byte-level distributions can.
`mix` averages the members' next-byte probabilities (a mixture: never worse, in log-loss, than
the weighted members' log-losses combined); `product` takes their weighted geometric mean and
renormalizes (a product of experts: sharper, rewards agreement). Weights are normalized to sum 1.

`--weight auto` is a Bayesian average over *pools*: every fixed weighting of the members on a grid
over the weight simplex (`pool_grid`), each combined by the mode (mix or product). The grid's
corners are the members alone. Each byte's pools are weighted by their posteriors given the bytes
so far (prior equal), so the ensemble's probability of a text is the average of the pools'
probabilities of it, and its total bits are at most the best pool's plus log2(pools): never more
than that above its best member, and below it wherever some fixed weighting of the members beats
the best member by more than that. A Bayesian mixture of the members alone could never beat its
best member (an average of the members' probabilities of a text is at most the largest); the grid
is what lets `auto` find the weighting a text rewards without a learning rate to tune.
"""

from __future__ import annotations

import math
from itertools import combinations

import torch

from tokeff.core.errors import TokeffError
from tokeff.core.weights import AUTO, Weights, ensemble_weights
from tokeff.decoding.bytelevel.model import ByteLevelModel

MAX_POOLS = 64  # the grid's size bounds the price of `auto` (log2 of it, in bits per text) and its cost per byte


class ByteEnsemble:
    """Several byte-level models fed the same bytes; their next-byte distributions combined."""

    def __init__(self, members: list[ByteLevelModel], weights: Weights = None, mode: str = "mix") -> None:
        if not members:
            raise TokeffError("an ensemble needs at least one model")
        self.members = members
        self.mode = mode
        self.auto = weights == AUTO
        # Fixed weights are one pool with posterior 1; auto starts every pool of the grid at the same prior.
        self.pools = pool_grid(len(members)) if self.auto else torch.tensor([ensemble_weights(weights, len(members), mode)],
                                                                             dtype=torch.float64)
        self.log_posterior = torch.full((len(self.pools),), -math.log(len(self.pools)), dtype=torch.float64)
        self.member_logprobs: torch.Tensor | None = None  # [members, 257] behind the last combined distribution
        self._pooled: torch.Tensor | None = None  # [pools, 257]

    @property
    def weights(self) -> torch.Tensor:
        """Each member's weight: the pools' weights averaged under the posterior (with mix, exactly the mixture's)."""
        return self.log_posterior.exp() @ self.pools

    def next_byte_logprobs(self) -> torch.Tensor:
        if self._pooled is None:
            self.member_logprobs = torch.stack([member.next_byte_logprobs() for member in self.members])
            self._pooled = pooled_logprobs(self.member_logprobs, self.pools, self.mode)
        return torch.logsumexp(self.log_posterior[:, None] + self._pooled, dim=0)

    def append(self, data: bytes | int) -> None:
        for byte in [data] if isinstance(data, int) else data:
            if self.auto:
                self.next_byte_logprobs()
                self.log_posterior = posterior(self.log_posterior, self._pooled[:, byte, None])[:, -1]
            for member in self.members:
                member.append(byte)
            self.member_logprobs = self._pooled = None

    @property
    def model_calls(self) -> list[int]:
        return [member.model_calls for member in self.members]


def pool_grid(count: int) -> torch.Tensor:
    """The weightings `auto` averages over [pools, count]: every point of the weight simplex whose weights are
    multiples of 1/r, with r the finest of 8, 4, 2, 1 that keeps the grid within MAX_POOLS (2 members: r = 8, 9
    pools; 3: 45; 4: 35 at r = 4). The corners, one member alone, come first."""
    for resolution in (8, 4, 2, 1):
        if math.comb(resolution + count - 1, count - 1) <= MAX_POOLS or resolution == 1:
            break
    points = []
    for bars in combinations(range(resolution + count - 1), count - 1):  # stars and bars: compositions of r
        edges = (-1, *bars, resolution + count - 1)
        points.append([(edges[i + 1] - edges[i] - 1) / resolution for i in range(count)])
    points.sort(key=lambda point: -max(point))
    return torch.tensor(points, dtype=torch.float64)


def pooled_logprobs(member_logprobs: torch.Tensor, pools: torch.Tensor, mode: str) -> torch.Tensor:
    """Each pool's combined next-byte log-probabilities [pools, ..., 257] from the members' [members, ..., 257]."""
    return torch.stack([combine(member_logprobs, weights, mode) for weights in pools])


def combine(member_logprobs: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Next-byte log-probabilities [members, ..., 257] combined into normalized distributions [..., 257];
    weights [members] (a member of weight 0 is left out)."""
    kept = weights > 0
    member_logprobs, weights = member_logprobs[kept], weights[kept]
    weights = weights.reshape(weights.shape + (1,) * (member_logprobs.dim() - 1))
    if mode == "mix":
        scores = torch.logsumexp(member_logprobs + weights.log(), dim=0)
    else:
        scores = (weights * member_logprobs).sum(0)  # -inf anywhere stays -inf (weights > 0)
    return scores - torch.logsumexp(scores, -1, keepdim=True)


def posterior(log_prior: torch.Tensor, byte_logprobs: torch.Tensor) -> torch.Tensor:
    """Log posterior weights [pools, T + 1] before each of T bytes and after the last, given each
    pool's log-probability of each byte [pools, T] (Bayes' rule, one byte at a time)."""
    start = torch.zeros(byte_logprobs.shape[0], 1, dtype=byte_logprobs.dtype)
    joint = log_prior[:, None] + torch.cat([start, byte_logprobs.cumsum(1)], dim=1)
    return joint - torch.logsumexp(joint, 0, keepdim=True)
