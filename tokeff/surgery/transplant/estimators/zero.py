"""zero: all-zero rows (a baseline; unreachable tokens are zero too)."""

from __future__ import annotations

from tokeff.surgery.transplant.estimators.base import Combination, Estimator, register


@register
class Zero(Estimator):
    name = "zero"
    summary = "all-zero rows (a baseline)"
    unreachable_weight = 0.0

    def new_rows(self, match, base_tokenizer, donor_embeddings, device) -> Combination:
        return Combination.constant(len(match.new_ids), 0.0)
