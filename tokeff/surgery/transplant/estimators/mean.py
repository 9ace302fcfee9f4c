"""mean: every new token gets the mean base row."""

from __future__ import annotations

from tokeff.surgery.transplant.estimators.base import Combination, Estimator, register


@register
class Mean(Estimator):
    name = "mean"
    summary = "the mean base row"

    def new_rows(self, match, base_tokenizer, donor_embeddings, device) -> Combination:
        return Combination.constant(len(match.new_ids), 1.0)
