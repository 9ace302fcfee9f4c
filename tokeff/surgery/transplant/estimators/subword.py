"""`subword`: the mean of the base rows of the pieces the base tokenizer cuts the token's bytes into."""

from __future__ import annotations

import torch

from tokeff.surgery.transplant.combination import ESTIMATORS, Combination, EstimationInputs, Estimator
from tokeff.surgery.transplant.subword import decompose


@ESTIMATORS.register
class Subword(Estimator):
    name = "subword"
    summary = "mean of the base rows of the token's pieces under the base tokenizer"

    def new_rows(self, inputs: EstimationInputs) -> Combination:
        match = inputs.match
        datas = [match.donor_vocab.token_bytes[i] for i in match.new_ids]
        pieces = decompose(datas, inputs.base_tokenizer, match.base_vocab)
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
