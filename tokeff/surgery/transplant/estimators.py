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
from tokeff.kernels.anchors import nearest_anchors
from tokeff.kernels.omp import omp, omp_candidates
from tokeff.surgery.transplant.subword import decompose
from tokeff.surgery.transplant.vocab import VocabMatch

METHODS = ("omp", "mean", "zero", "subword", "hybrid")
DONOR_EMBEDDING_METHODS = ("omp", "hybrid")
DEFAULT_CANDIDATES = 256  # nearest anchors each new token's OMP searches, at least 4k (kernels/anchors.py)
_BLOCK = 8192  # new tokens per candidate search: bounds the similarity matrix
_GPU_FLOATS = 1 << 28  # per-target dictionaries on a GPU are built in batches of about 1 GiB
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
    candidates: int = DEFAULT_CANDIDATES,
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
        new_part = _omp(match, _require(donor_embeddings, method), k, device, candidates)
    elif method == "hybrid":
        local = _subword(match, base_tokenizer)
        glob = _nearest_softmax(match, _require(donor_embeddings, method), k, device)
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


def _omp(match: VocabMatch, donor_embeddings: torch.Tensor, k: int, device: torch.device, candidates: int) -> Combination:
    targets, anchors, anchor_rows = _anchors(match, donor_embeddings)
    width = min(max(candidates, 4 * k), len(anchors))
    indices = torch.zeros(len(targets), k, dtype=torch.long)
    weights = torch.zeros(len(targets), k)
    dictionary = anchors.to(device)
    for start in console.track(range(0, len(targets), _BLOCK), "OMP"):
        block = targets[start : start + _BLOCK].to(device)
        nearest, _ = nearest_anchors(block, dictionary, width, absolute=True)
        if device.type == "cuda":  # batched torch; each target's own dictionary is a gather
            step = max(1, _GPU_FLOATS // (width * dictionary.shape[1]))
            codes = [omp(block[i : i + step], dictionary[nearest[i : i + step]], k) for i in range(0, len(block), step)]
            picked, coefficients = torch.cat([c[0] for c in codes]), torch.cat([c[1] for c in codes])
        else:
            picked, coefficients = omp_candidates(block, dictionary, nearest, k)
        rows = slice(start, start + len(block))
        indices[rows], weights[rows] = nearest.gather(1, picked.to(nearest.device)).cpu(), coefficients.cpu()
    return Combination(anchor_rows[indices], weights, torch.zeros(len(targets)))


def _nearest_softmax(match: VocabMatch, donor_embeddings: torch.Tensor, k: int, device: torch.device) -> Combination:
    targets, anchors, anchor_rows = _anchors(match, donor_embeddings)
    nearest, similarity = nearest_anchors(targets.to(device), anchors.to(device), k)
    weights = torch.softmax(similarity / HYBRID_TEMPERATURE, dim=1)
    return Combination(anchor_rows[nearest.cpu()], weights.cpu(), torch.zeros(len(targets)))
