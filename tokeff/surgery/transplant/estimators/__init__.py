"""Rows for the donor tokens the base model lacks, one module per estimator (`base.py`: the shared parts).

Every estimator yields one `Combination` per estimated token (base row ids, weights, and a weight
on the base matrix's mean row). It is computed once, from tokenizers and the donor's input
embeddings, and then applied to every per-token matrix of the base model (input embeddings and an
untied lm_head), so the expensive work is shared between them. Adding an estimator is adding one
module here that registers a class with `@register`.
"""

from tokeff.surgery.transplant.estimators.base import ESTIMATORS, Combination, Estimator, estimate, register, row_mean

__all__ = ["ESTIMATORS", "Combination", "Estimator", "estimate", "register", "row_mean"]
