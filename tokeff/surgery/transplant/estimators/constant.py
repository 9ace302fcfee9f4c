"""`zero` and `mean`: baselines that know nothing about the new token."""

from __future__ import annotations

from tokeff.surgery.transplant.combination import ESTIMATORS, Combination, EstimationInputs, Estimator


@ESTIMATORS.register
class Zero(Estimator):
    name = "zero"
    summary = "all-zero rows (a baseline)"
    unreachable_mean_weight = 0.0
    scalable = False

    def new_rows(self, inputs: EstimationInputs) -> Combination:
        return Combination.constant(len(inputs.match.new_ids), 0.0)


@ESTIMATORS.register
class Mean(Estimator):
    name = "mean"
    summary = "the mean base row"

    def new_rows(self, inputs: EstimationInputs) -> Combination:
        return Combination.constant(len(inputs.match.new_ids), 1.0)
