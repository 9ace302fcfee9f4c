"""omp: Orthogonal Matching Pursuit (Goddard and Fernandes Neto, 2025).

The donor embedding of a new token is written as a k-sparse combination of donor embeddings of
shared (anchor) tokens, and the same coefficients combine the base rows of those anchors. Each
token searches only its `candidates` best-correlated anchors (kernels/anchors.py).
"""

from __future__ import annotations

import torch

from tokeff.core import console
from tokeff.core.options import Option
from tokeff.kernels.anchors import nearest_anchors
from tokeff.kernels.omp import omp, omp_candidates
from tokeff.surgery.transplant.estimators.base import Combination, Estimator, anchors, register
from tokeff.surgery.transplant.vocab import VocabMatch

_BLOCK = 8192  # new tokens per candidate search: bounds the similarity matrix
_GPU_FLOATS = 1 << 28  # per-target dictionaries on a GPU are built in batches of about 1 GiB


def clamp_k(opts: dict, shared: int) -> int:
    """k, at most the number of shared tokens (warned, and recorded as used)."""
    if opts["k"] > shared:
        console.warn(f"--k {opts['k']} is more than the {shared} shared tokens; using k={shared}")
        opts["k"] = shared
    return opts["k"]


def omp_rows(match: VocabMatch, donor_embeddings: torch.Tensor, k: int, candidates: int, device: torch.device) -> Combination:
    """Each new token's k-sparse OMP code over its nearest `candidates` (at least 4k) anchors."""
    targets, vectors, anchor_rows = anchors(match, donor_embeddings)
    width = min(max(candidates, 4 * k), len(vectors))
    indices = torch.zeros(len(targets), k, dtype=torch.long)
    weights = torch.zeros(len(targets), k)
    dictionary = vectors.to(device)
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


@register
class Omp(Estimator):
    name = "omp"
    summary = "sparse code of the donor embedding over shared anchors, applied to their base rows"
    needs_donor_embeddings = True
    options = (
        Option("k", int, 64, "anchors per new token (OMP sparsity)", min=1),
        Option("candidates", int, 256, "nearest anchors each new token's OMP searches (at least 4k)", min=1),
    )

    def new_rows(self, match, base_tokenizer, donor_embeddings, device) -> Combination:
        k = clamp_k(self.opts, len(match.shared_ids))
        return omp_rows(match, donor_embeddings, k, self.opts["candidates"], device)
