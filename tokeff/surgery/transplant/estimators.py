"""Rows for the donor tokens the base model lacks, each as a sparse combination of base rows.

Every method yields one `Combination` per estimated token (base row ids, weights, and a weight on
the base matrix's mean row). The combination is computed once, from tokenizers and the donor's
input embeddings, and then applied to every per-token matrix of the base model (input embeddings
and an untied lm_head), so the expensive work is shared between them.

- zero: all-zero rows (a baseline).
- mean: the mean base row.
- subword: the mean of the base rows of the pieces the base tokenizer cuts the token's bytes into.
- omp: Orthogonal Matching Pursuit (Goddard and Fernandes Neto, 2025): the donor embedding of a new
  token is written as a k-sparse combination of donor embeddings of shared (anchor) tokens, and the
  same coefficients combine the base rows of those anchors.
- hybrid: TokenAdapt's blend (Sharthak et al., 2025) of the subword (local) estimate and a
  similarity-weighted (softmax over cosine) mean of the top-k nearest anchors in the donor space.

Unreachable donor tokens (no bytes, no special-token match) get the mean row under every method but
zero: nothing is known about them, and the mean keeps their logits ordinary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokeff.core import console
from tokeff.kernels.anchors import anchor_pools
from tokeff.kernels.omp import omp, omp_gram
from tokeff.surgery.transplant.subword import decompose
from tokeff.surgery.transplant.vocab import VocabMatch

METHODS = ("omp", "mean", "zero", "subword", "hybrid")
DONOR_EMBEDDING_METHODS = ("omp", "hybrid")
DEFAULT_POOL = 2048  # anchors each CPU OMP group searches (see kernels/anchors.py)
HYBRID_LOCAL_WEIGHT = 0.5
HYBRID_TEMPERATURE = 0.05


@dataclass
class Combination:
    """Rows = sparse(indices, weights) @ base + mean_weight * base.mean(0), one row per estimated token.

    `indices`/`weights` are (B, m) with unused slots at weight 0.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    mean_weight: torch.Tensor  # (B,)

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        batch, width = self.indices.shape
        rows = torch.arange(batch).repeat_interleave(width)
        sparse = torch.sparse_coo_tensor(
            torch.stack([rows, self.indices.flatten()]), self.weights.flatten().float(), (batch, matrix.shape[0]),
            check_invariants=False,  # indices are built here, always in range
        )
        dense = torch.sparse.mm(sparse, matrix.float())
        return dense + self.mean_weight.float().unsqueeze(1) * matrix.float().mean(0)

    @staticmethod
    def concat(parts: list[Combination]) -> Combination:
        width = max(part.indices.shape[1] for part in parts)
        pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
        return Combination(
            torch.cat([pad(part.indices, 0) for part in parts]),
            torch.cat([pad(part.weights.float(), 0.0) for part in parts]),
            torch.cat([part.mean_weight.float() for part in parts]),
        )


def estimate(
    method: str,
    match: VocabMatch,
    base_tokenizer,
    donor_embeddings: torch.Tensor | None,
    k: int,
    device: torch.device,
    pool_size: int = DEFAULT_POOL,
) -> Combination:
    """Combinations for `match.estimated_ids` (in that order)."""
    new = match.new_ids
    if method == "zero":
        new_part = _constant(len(new), 0.0)
    elif method == "mean":
        new_part = _constant(len(new), 1.0)
    elif method == "subword":
        new_part = _subword(match, base_tokenizer)
    elif method == "omp":
        new_part = _omp(match, _require(donor_embeddings, method), k, device, pool_size)
    elif method == "hybrid":
        local = _subword(match, base_tokenizer)
        glob = _nearest_softmax(match, _require(donor_embeddings, method), k, pool_size)
        new_part = _blend(local, glob, HYBRID_LOCAL_WEIGHT)
    else:
        raise ValueError(f"unknown method {method}")
    unreachable = _constant(len(match.unreachable_ids), 0.0 if method == "zero" else 1.0)
    # Put the rows back in `estimated_ids` order (new and unreachable interleave by id).
    combined = Combination.concat([new_part, unreachable])
    order = np.argsort(np.concatenate([new, match.unreachable_ids]), kind="stable")
    order_t = torch.from_numpy(order)
    return Combination(combined.indices[order_t], combined.weights[order_t], combined.mean_weight[order_t])


def _require(donor_embeddings: torch.Tensor | None, method: str) -> torch.Tensor:
    if donor_embeddings is None:
        raise ValueError(f"method {method} needs the donor model's embeddings")
    return donor_embeddings


def _constant(count: int, mean_weight: float) -> Combination:
    return Combination(
        torch.zeros(count, 1, dtype=torch.long), torch.zeros(count, 1), torch.full((count,), mean_weight)
    )


def _subword(match: VocabMatch, base_tokenizer) -> Combination:
    datas = [match.donor_vocab.token_bytes[i] for i in match.new_ids]
    pieces = decompose(datas, base_tokenizer, match.base_vocab)
    width = max((len(p) for p in pieces), default=1) or 1
    indices = torch.zeros(len(pieces), width, dtype=torch.long)
    weights = torch.zeros(len(pieces), width)
    mean_weight = torch.zeros(len(pieces))
    for row, ids in enumerate(pieces):
        if ids:
            indices[row, : len(ids)] = torch.tensor(ids)
            weights[row, : len(ids)] = 1.0 / len(ids)
        else:  # no base token spells any of its bytes
            mean_weight[row] = 1.0
    return Combination(indices, weights, mean_weight)


def _blend(local: Combination, glob: Combination, local_weight: float) -> Combination:
    return Combination(
        torch.cat([local.indices, glob.indices], dim=1),
        torch.cat([local.weights * local_weight, glob.weights * (1 - local_weight)], dim=1),
        local.mean_weight * local_weight + glob.mean_weight * (1 - local_weight),
    )


def _anchors(match: VocabMatch, donor_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets, anchor vectors, anchor base rows) in the donor's embedding space."""
    shared = match.shared_ids
    targets = donor_embeddings[torch.from_numpy(match.new_ids)].float()
    anchors = donor_embeddings[torch.from_numpy(shared)].float()
    return targets, anchors, torch.from_numpy(match.base_row[shared])


def _omp(match: VocabMatch, donor_embeddings: torch.Tensor, k: int, device: torch.device, pool_size: int) -> Combination:
    targets, anchors, anchor_rows = _anchors(match, donor_embeddings)
    indices = torch.zeros(len(targets), k, dtype=torch.long)
    weights = torch.zeros(len(targets), k)
    if device.type == "cuda":  # one dictionary for all targets: a matmul per step is what a GPU is for
        dictionary = anchors.to(device)
        for start in range(0, len(targets), 4096):
            picked, coefficients = omp(targets[start : start + 4096].to(device), dictionary, k)
            indices[start : start + 4096], weights[start : start + 4096] = picked.cpu(), coefficients.cpu()
    else:
        groups = anchor_pools(targets, anchors, max(pool_size, 4 * k))
        for rows, pool in console.track(groups, "OMP"):
            picked, coefficients = omp_gram(targets[rows], anchors[pool], min(k, len(pool)))
            indices[rows, : picked.shape[1]] = pool[picked]
            weights[rows, : picked.shape[1]] = coefficients
    return Combination(anchor_rows[indices], weights, torch.zeros(len(targets)))


def _nearest_softmax(match: VocabMatch, donor_embeddings: torch.Tensor, k: int, pool_size: int) -> Combination:
    targets, anchors, anchor_rows = _anchors(match, donor_embeddings)
    unit_targets = torch.nn.functional.normalize(targets, dim=1)
    unit_anchors = torch.nn.functional.normalize(anchors, dim=1)
    indices = torch.zeros(len(targets), k, dtype=torch.long)
    weights = torch.zeros(len(targets), k)
    for rows, pool in anchor_pools(targets, anchors, max(pool_size, 4 * k)):
        similarity = unit_targets[rows] @ unit_anchors[pool].T
        top, where = similarity.topk(min(k, len(pool)), dim=1)
        indices[rows, : top.shape[1]] = pool[where]
        weights[rows, : top.shape[1]] = torch.softmax(top / HYBRID_TEMPERATURE, dim=1)
    return Combination(anchor_rows[indices], weights, torch.zeros(len(targets)))
