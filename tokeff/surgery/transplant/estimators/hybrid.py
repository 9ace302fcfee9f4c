"""hybrid: TokenAdapt's blend (Sharthak et al., 2025) of the subword (local) estimate and a
similarity-weighted (softmax over cosine) mean of the top-k nearest anchors in the donor space."""

from __future__ import annotations

import torch

from tokeff.core.options import Option
from tokeff.kernels.anchors import nearest_anchors
from tokeff.surgery.transplant.estimators.base import Combination, Estimator, anchors, register
from tokeff.surgery.transplant.estimators.omp import clamp_k
from tokeff.surgery.transplant.estimators.subword import subword_rows


@register
class Hybrid(Estimator):
    name = "hybrid"
    summary = "TokenAdapt: subword estimate blended with a softmax over the k nearest anchors"
    needs_donor_embeddings = True
    options = (
        Option("k", int, 64, "nearest anchors in the donor space", min=1),
        Option("local_weight", float, 0.5, "weight of the subword (local) estimate", min=0.0, max=1.0),
        Option("temperature", float, 0.05, "softmax temperature over the anchors' cosines", min=0.0, min_exclusive=True),
    )

    def new_rows(self, match, base_tokenizer, donor_embeddings, device) -> Combination:
        k = clamp_k(self.opts, len(match.shared_ids))
        targets, vectors, anchor_rows = anchors(match, donor_embeddings)
        nearest, similarity = nearest_anchors(targets.to(device), vectors.to(device), k)
        weights = torch.softmax(similarity / self.opts["temperature"], dim=1)
        glob = Combination(anchor_rows[nearest.cpu()], weights.cpu(), torch.zeros(len(targets)))
        return Combination.blend(subword_rows(match, base_tokenizer), glob, self.opts["local_weight"])
