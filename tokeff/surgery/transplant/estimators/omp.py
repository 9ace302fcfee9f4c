"""`omp`: Orthogonal Matching Pursuit (Goddard and Fernandes Neto, 2025).

The donor embedding of a new token is written as a k-sparse combination of donor embeddings of
shared (anchor) tokens, and the same coefficients combine the base rows of those anchors. One
similarity matmul first narrows each token's search to its best-correlated anchors.
"""

from __future__ import annotations

import torch

from tokeff.core import console
from tokeff.core.options import Option
from tokeff.kernels.anchors import nearest_anchors
from tokeff.kernels.omp import omp, omp_candidates
from tokeff.surgery.transplant.combination import ESTIMATORS, Combination, EstimationInputs, Estimator, anchors

_BLOCK = 8192  # new tokens per candidate search: bounds the similarity matrix
_GPU_FLOATS = 1 << 28  # per-target dictionaries on a GPU are built in batches of about 1 GiB


@ESTIMATORS.register
class OrthogonalMatchingPursuit(Estimator):
    name = "omp"
    summary = "k-sparse OMP code over shared anchors in the donor space, applied to their base rows"
    needs_donor_embeddings = True
    options = (
        Option("k", int, 64, "anchors per new token (the code's sparsity; at most the shared tokens)", min=1),
        Option("candidates", int, 256, "nearest anchors each token's OMP searches (at least 4k)", min=1),
    )

    def new_rows(self, inputs: EstimationInputs) -> Combination:
        targets, dictionary, anchor_rows = anchors(inputs)
        k = self.clamp_k(len(dictionary))
        width = min(max(self.opts["candidates"], 4 * k), len(dictionary))
        indices = torch.zeros(len(targets), k, dtype=torch.long)
        weights = torch.zeros(len(targets), k)
        device = inputs.device
        dictionary = dictionary.to(device)
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
