"""subword: the mean of the base rows of the pieces the base tokenizer cuts the token's bytes into."""

from __future__ import annotations

import torch

from tokeff.surgery.transplant.estimators.base import Combination, Estimator, register
from tokeff.surgery.transplant.subword import decompose
from tokeff.surgery.transplant.vocab import VocabMatch


def subword_rows(match: VocabMatch, base_tokenizer) -> Combination:
    """Each new token as the mean of its base pieces (the mean row when no base token spells any byte)."""
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
        else:
            mean_weight[row] = 1.0
    return Combination(indices, weights, mean_weight)


@register
class Subword(Estimator):
    name = "subword"
    summary = "mean of the base rows of the pieces the base tokenizer spells the token with"

    def new_rows(self, match, base_tokenizer, donor_embeddings, device) -> Combination:
        return subword_rows(match, base_tokenizer)
