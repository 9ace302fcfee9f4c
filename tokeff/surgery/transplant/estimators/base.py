"""The estimator registry, the `Combination` every estimator returns, and what they share.

Unreachable donor tokens (no bytes, no special-token match) get the mean row under every
estimator but zero: nothing is known about them, and the mean keeps their logits ordinary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from tokeff.core.options import Option, resolve
from tokeff.core.registry import Registry
from tokeff.surgery.transplant.vocab import VocabMatch

ESTIMATORS: Registry[type[Estimator]] = Registry("transplant method", "tokeff.surgery.transplant.estimators")
register = ESTIMATORS.register


@dataclass
class Combination:
    """Rows = sparse(indices, weights) @ base + mean_weight * base.mean(0), one row per estimated token.

    `indices`/`weights` are (B, m) with unused slots at weight 0.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    mean_weight: torch.Tensor  # (B,)

    def apply(self, matrix: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Float32 rows; `mean` is `row_mean(matrix)`. Only the rows this batch refers to are upcast:
        a float32 copy of a whole bf16 embedding would double what the transplant holds."""
        batch, width = self.indices.shape
        used, local = self.indices.unique(return_inverse=True)
        rows = torch.arange(batch).repeat_interleave(width)
        sparse = torch.sparse_coo_tensor(
            torch.stack([rows, local.flatten()]), self.weights.flatten().float(), (batch, len(used)),
            check_invariants=False,  # indices are built here, always in range
        )
        dense = torch.sparse.mm(sparse, matrix[used].float())
        return dense + self.mean_weight.float().unsqueeze(1) * mean

    def __getitem__(self, rows: slice | torch.Tensor) -> Combination:
        return Combination(self.indices[rows], self.weights[rows], self.mean_weight[rows])

    @staticmethod
    def concat(parts: list[Combination]) -> Combination:
        width = max(part.indices.shape[1] for part in parts)
        pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
        return Combination(
            torch.cat([pad(part.indices, 0) for part in parts]),
            torch.cat([pad(part.weights.float(), 0.0) for part in parts]),
            torch.cat([part.mean_weight.float() for part in parts]),
        )

    @staticmethod
    def constant(count: int, mean_weight: float) -> Combination:
        """`count` rows of `mean_weight` times the mean base row."""
        return Combination(
            torch.zeros(count, 1, dtype=torch.long), torch.zeros(count, 1), torch.full((count,), mean_weight)
        )

    @staticmethod
    def blend(first: Combination, second: Combination, first_weight: float) -> Combination:
        """first_weight * first + (1 - first_weight) * second, row by row."""
        return Combination(
            torch.cat([first.indices, second.indices], dim=1),
            torch.cat([first.weights * first_weight, second.weights * (1 - first_weight)], dim=1),
            first.mean_weight * first_weight + second.mean_weight * (1 - first_weight),
        )


def row_mean(matrix: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """The float32 mean row, summed `block` rows at a time: on the CPU `matrix.mean(0, dtype=torch.float32)`
    first copies a bf16 matrix whole to float32 (1 GiB for a 128k x 2048 embedding)."""
    total = torch.zeros(matrix.shape[1], dtype=torch.float32)
    for start in range(0, matrix.shape[0], block):
        total += matrix[start : start + block].sum(0, dtype=torch.float32)
    return total / matrix.shape[0]


class Estimator(ABC):
    """One way of estimating the new tokens' rows. Subclasses set `name`, `summary`, `options`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_donor_embeddings: ClassVar[bool] = False
    unreachable_weight: ClassVar[float] = 1.0  # unreachable tokens: this times the mean row
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.opts = resolve(self.options, options, f"--method {self.name}")

    @abstractmethod
    def new_rows(
        self, match: VocabMatch, base_tokenizer, donor_embeddings: torch.Tensor | None, device: torch.device
    ) -> Combination:
        """Combinations for `match.new_ids` (in that order)."""


def estimate(
    estimator: Estimator, match: VocabMatch, base_tokenizer, donor_embeddings: torch.Tensor | None, device: torch.device
) -> Combination:
    """Combinations for `match.estimated_ids` (in that order)."""
    if estimator.needs_donor_embeddings and donor_embeddings is None:
        raise ValueError(f"method {estimator.name} needs the donor model's embeddings")
    new_part = estimator.new_rows(match, base_tokenizer, donor_embeddings, device)
    unreachable = Combination.constant(len(match.unreachable_ids), estimator.unreachable_weight)
    # Put the rows back in `estimated_ids` order (new and unreachable interleave by id).
    order = np.argsort(np.concatenate([match.new_ids, match.unreachable_ids]), kind="stable")
    return Combination.concat([new_part, unreachable])[torch.from_numpy(order)]


def anchors(match: VocabMatch, donor_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets, anchor vectors, anchor base rows) in the donor's embedding space."""
    shared = match.shared_ids
    targets = donor_embeddings[torch.from_numpy(match.new_ids)].float()
    vectors = donor_embeddings[torch.from_numpy(shared)].float()
    return targets, vectors, torch.from_numpy(match.base_row[shared])
