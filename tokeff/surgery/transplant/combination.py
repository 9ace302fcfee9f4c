"""Rows for the donor tokens the base model lacks, each a sparse combination of base rows, and the
registry of the estimators that compute them (one module each in `estimators/`).

Every estimator yields one `Combination` per new token (base row ids, weights, and a weight on the
base matrix's mean row). The combination is computed once, from tokenizers and the donor's input
embeddings, and then applied to every per-token matrix of the base model (input embeddings and an
untied lm_head), so the expensive work is shared between them.

Unreachable donor tokens (no bytes, no special-token match) get the mean row under every estimator
but zero: nothing is known about them, and the mean keeps their logits ordinary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from tokeff.core import console
from tokeff.core.options import Option, resolve
from tokeff.core.registry import Registry
from tokeff.surgery.transplant.vocab import VocabMatch


@dataclass
class Combination:
    """Rows = sparse(indices, weights) @ base + mean_weight * base.mean(0), one row per estimated token.

    `indices`/`weights` are (B, m) with unused slots at weight 0.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    mean_weight: torch.Tensor  # (B,)

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """Float32 rows. Only the rows this batch refers to are upcast: a float32 copy of a whole
        bf16 embedding would double what the transplant holds."""
        batch, width = self.indices.shape
        used, local = self.indices.unique(return_inverse=True)
        rows = torch.arange(batch).repeat_interleave(width)
        sparse = torch.sparse_coo_tensor(
            torch.stack([rows, local.flatten()]), self.weights.flatten().float(), (batch, len(used)),
            check_invariants=False,  # indices are built here, always in range
        )
        dense = torch.sparse.mm(sparse, matrix[used].float())
        return dense + self.mean_weight.float().unsqueeze(1) * matrix.mean(0, dtype=torch.float32)

    @staticmethod
    def constant(count: int, mean_weight: float) -> Combination:
        """`count` rows of `mean_weight` times the mean row (0: all-zero rows)."""
        return Combination(
            torch.zeros(count, 1, dtype=torch.long), torch.zeros(count, 1), torch.full((count,), mean_weight)
        )

    @staticmethod
    def concat(parts: list[Combination]) -> Combination:
        width = max(part.indices.shape[1] for part in parts)
        pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
        return Combination(
            torch.cat([pad(part.indices, 0) for part in parts]),
            torch.cat([pad(part.weights.float(), 0.0) for part in parts]),
            torch.cat([part.mean_weight.float() for part in parts]),
        )


@dataclass
class EstimationInputs:
    """What an estimator may use: the vocabulary match, the base tokenizer, the donor's input
    embeddings (None unless the estimator declares `needs_donor_embeddings`) and the device."""

    match: VocabMatch
    base_tokenizer: Any
    donor_embeddings: torch.Tensor | None
    device: torch.device


class Estimator(ABC):
    """One way of estimating new rows. Subclasses set `name`, `summary`, their `options`, and register."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_donor_embeddings: ClassVar[bool] = False
    unreachable_mean_weight: ClassVar[float] = 1.0  # the rows of tokens nothing is known about
    scalable: ClassVar[bool] = True  # --new-scale applies (not to all-zero rows)
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.opts = self.resolve_options(options)

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        return resolve(cls.options, given, f"--method {cls.name}")

    def clamp_k(self, anchors: int) -> int:
        """Option k, at most the number of anchors (the effective value is what the manifest records)."""
        if self.opts["k"] > anchors:
            console.warn(f"--k {self.opts['k']} is more than the {anchors} shared tokens; using k={anchors}")
            self.opts["k"] = anchors
        return self.opts["k"]

    @abstractmethod
    def new_rows(self, inputs: EstimationInputs) -> Combination:
        """Combinations for `inputs.match.new_ids`, in that order."""

    def estimate(self, inputs: EstimationInputs) -> Combination:
        """Combinations for `match.estimated_ids` (new and unreachable tokens interleaved by id)."""
        match = inputs.match
        combined = Combination.concat([
            self.new_rows(inputs), Combination.constant(len(match.unreachable_ids), self.unreachable_mean_weight)
        ])
        order = torch.from_numpy(np.argsort(np.concatenate([match.new_ids, match.unreachable_ids]), kind="stable"))
        return Combination(combined.indices[order], combined.weights[order], combined.mean_weight[order])


ESTIMATORS: Registry[type[Estimator]] = Registry("transplant method", "tokeff.surgery.transplant.estimators")


def anchors(inputs: EstimationInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets, anchor vectors, anchor base rows) in the donor's embedding space."""
    match, embeddings = inputs.match, inputs.donor_embeddings
    shared = match.shared_ids
    targets = embeddings[torch.from_numpy(match.new_ids)].float()
    vectors = embeddings[torch.from_numpy(shared)].float()
    return targets, vectors, torch.from_numpy(match.base_row[shared])
