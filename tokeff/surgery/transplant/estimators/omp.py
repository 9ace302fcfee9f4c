"""omp: Orthogonal Matching Pursuit (Goddard and Fernandes Neto, 2025).

The donor embedding of a new token is written as a k-sparse combination of donor embeddings of
shared (anchor) tokens, and the same coefficients combine the base rows of those anchors. Each
token searches only its `candidates` best-correlated anchors (kernels/anchors.py).

With `prior=subword`, the token's spelling comes first: its subword estimate, taken in both spaces
(the mean of the base pieces' rows, and of the same pieces' donor rows where they are shared), is a
first atom whose least-squares weight explains what it can of the donor embedding, and OMP codes
only the rest. A token the donor embeds like its pieces then gets the base row of its pieces, which
is what the base model would have read for those bytes, instead of a code over far-off anchors
(gemma3-270m given smollm2-135m's tokenizer: ` \\n`, docs/transplant.md).
"""

from __future__ import annotations

import numpy as np
import torch

from tokeff.core import console
from tokeff.core.options import Option
from tokeff.kernels.anchors import nearest_anchors
from tokeff.kernels.omp import omp, omp_candidates
from tokeff.surgery.transplant.estimators.base import Combination, Estimator, anchors, register
from tokeff.surgery.transplant.estimators.subword import subword_rows
from tokeff.surgery.transplant.vocab import VocabMatch

_BLOCK = 8192  # new tokens per candidate search: bounds the similarity matrix
_GPU_FLOATS = 1 << 28  # per-target dictionaries on a GPU are built in batches of about 1 GiB


def clamp_k(opts: dict, shared: int) -> int:
    """k, at most the number of shared tokens (warned, and recorded as used)."""
    if opts["k"] > shared:
        console.warn(f"--k {opts['k']} is more than the {shared} shared tokens; using k={shared}")
        opts["k"] = shared
    return opts["k"]


def omp_codes(targets: torch.Tensor, vectors: torch.Tensor, k: int, candidates: int, device: torch.device,
              widen_below: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor ids (B, k) and coefficients (B, k) of each target's OMP code over its nearest
    `candidates` (at least 4k) anchors; a target whose code fits it with a cosine below
    `widen_below` is coded again over all anchors."""
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
    if widen_below > 0:
        _widen(targets, vectors, indices, weights, k, widen_below, device)
    return indices, weights


def _widen(targets: torch.Tensor, vectors: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, k: int,
           below: float, device: torch.device) -> None:
    """Recode, over every anchor, the targets whose narrowed code fits them worse than `below` (cosine).

    A token without close neighbours in the donor space gets unrelated candidates: smollm2-135m's
    ` \n` (`ĠĊ`, most of gemma3-270m's new-token bytes on WikiText) has nearest anchors at cosine
    0.42 (`Ġpolicymakers`, ...); its code over its 256 nearest fits it at cosine 0.70, over all
    45k anchors (mergekit's search) at 0.92. Widening only such tokens keeps the narrowing's speed."""
    fit = torch.nn.functional.cosine_similarity((weights.unsqueeze(2) * vectors[indices]).sum(1), targets, dim=1)
    poor = torch.nonzero(fit < below).flatten()
    if len(poor) == 0:
        return
    console.info(f"OMP: {len(poor):,} of {len(targets):,} codes fit below cosine {below:g}; recoding them over all {len(vectors):,} anchors")
    dictionary = vectors.to(device)
    for start in console.track(range(0, len(poor), 64), "OMP, widened"):  # 64 targets x all anchors per matmul
        rows = poor[start : start + 64]
        picked, coefficients = omp(targets[rows].to(device), dictionary, k)
        indices[rows], weights[rows] = picked.cpu(), coefficients.cpu()


def omp_rows(match: VocabMatch, donor_embeddings: torch.Tensor, k: int, candidates: int, device: torch.device,
             widen_below: float = 0.0) -> Combination:
    targets, vectors, anchor_rows = anchors(match, donor_embeddings)
    indices, weights = omp_codes(targets, vectors, k, candidates, device, widen_below)
    return Combination(anchor_rows[indices], weights, torch.zeros(len(targets)))


def _donor_side(spelling: Combination, match: VocabMatch, donor_embeddings: torch.Tensor) -> torch.Tensor:
    """The subword estimate in the donor's space: the mean donor row of the pieces that are shared
    (zero for a token none of whose pieces is)."""
    donor_of_base = np.full(int(match.base_row.max()) + 1, -1, dtype=np.int64)
    shared = match.shared_ids
    donor_of_base[match.base_row[shared]] = shared
    ids = torch.from_numpy(donor_of_base[spelling.indices.clamp_max(len(donor_of_base) - 1).numpy()])
    known = (ids >= 0) & (spelling.weights > 0) & (spelling.indices < len(donor_of_base))
    weights = torch.where(known, spelling.weights, 0.0)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    return (weights.unsqueeze(2) * donor_embeddings[ids.clamp_min(0)].float()).sum(1)


@register
class Omp(Estimator):
    name = "omp"
    summary = "sparse code of the donor embedding over shared anchors, applied to their base rows"
    needs_donor_embeddings = True
    options = (
        Option("k", int, 64, "anchors per new token (OMP sparsity)", min=1),
        Option("candidates", int, 256, "nearest anchors each new token's OMP searches (at least 4k)", min=1),
        Option("widen_below", float, 0.0, "recode over all anchors the tokens whose code fits them below this cosine (0: never)",
               min=0.0, max=1.0),
        Option("prior", str, "none", "subword: the token's spelling is a first atom, OMP codes the rest", choices=("none", "subword")),
    )

    def new_rows(self, match, base_tokenizer, donor_embeddings, device) -> Combination:
        k = clamp_k(self.opts, len(match.shared_ids))
        if self.opts["prior"] == "none":
            return omp_rows(match, donor_embeddings, k, self.opts["candidates"], device, self.opts["widen_below"])
        spelling = subword_rows(match, base_tokenizer)
        targets, vectors, anchor_rows = anchors(match, donor_embeddings)
        prior = _donor_side(spelling, match, donor_embeddings)
        weight = (targets * prior).sum(1) / (prior * prior).sum(1).clamp_min(1e-12)  # least squares, one atom
        rest = targets - weight.unsqueeze(1) * prior
        indices, weights = omp_codes(rest, vectors, k, self.opts["candidates"], device, self.opts["widen_below"])
        return Combination(
            torch.cat([spelling.indices, anchor_rows[indices]], dim=1),
            torch.cat([spelling.weights * weight.unsqueeze(1), weights], dim=1),
            spelling.mean_weight * weight,
        )
