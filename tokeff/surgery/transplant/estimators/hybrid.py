"""`hybrid`: TokenAdapt's blend (Sharthak et al., 2025) of the subword (local) estimate and a
similarity-weighted (softmax over cosine) mean of the k nearest anchors in the donor space."""

from __future__ import annotations

import torch

from tokeff.core.options import Option
from tokeff.kernels.anchors import nearest_anchors
from tokeff.surgery.transplant.combination import ESTIMATORS, Combination, EstimationInputs, anchors
from tokeff.surgery.transplant.estimators.subword import Subword


@ESTIMATORS.register
class Hybrid(Subword):
    name = "hybrid"
    summary = "TokenAdapt: subword estimate blended with a softmax-weighted mean of the nearest anchors"
    needs_donor_embeddings = True
    options = (
        Option("k", int, 64, "nearest anchors in the global part", min=1),
        Option("local_weight", float, 0.5, "weight of the subword (local) part", min=0, max=1),
        Option("temperature", float, 0.05, "softmax temperature over the anchors' cosine similarity", min=0,
               min_exclusive=True),
    )

    def new_rows(self, inputs: EstimationInputs) -> Combination:
        local = super().new_rows(inputs)
        targets, vectors, anchor_rows = anchors(inputs)
        k = self.clamp_k(len(vectors))
        nearest, similarity = nearest_anchors(targets.to(inputs.device), vectors.to(inputs.device), k)
        glob = torch.softmax(similarity / self.opts["temperature"], dim=1).cpu()
        w = self.opts["local_weight"]
        return Combination(
            torch.cat([local.indices, anchor_rows[nearest.cpu()]], dim=1),
            torch.cat([local.weights * w, glob * (1 - w)], dim=1),
            local.mean_weight * w,
        )
