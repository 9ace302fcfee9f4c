"""Values with one range per token (KIVI's values), with even levels or k-means ones, and optionally
the largest deviations of each token kept exact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tokeff.core.options import Option
from tokeff.kvquant.fit import fit_codebook, outliers_per_token
from tokeff.kvquant.quantizer import TensorQuantizer, uniform_codebook
from tokeff.kvquant.schemes import FitContext, Fitted, Scheme, register


class PerTokenValues(Scheme):
    tensor = "values"
    kmeans: ClassVar[bool] = False

    @classmethod
    def fit(cls, context: FitContext, settings: Mapping[str, Any]) -> Fitted:
        book = uniform_codebook(context.bits)
        if not cls.kmeans:
            return Fitted(book)
        acts = context.acts
        values = acts.stacked("values", context.layer)
        weights = acts.stacked("value_weights", context.layer) if acts.value_weights else None
        even = cls.quantizer(context.bits, Fitted(book), settings, values.shape[-1])
        return Fitted(fit_codebook(even, values, weights, context.per_head, context.seed))

    @classmethod
    def quantizer(cls, bits: int, fitted: Fitted, settings: Mapping[str, Any], head_dim: int) -> TensorQuantizer:
        return TensorQuantizer(bits, fitted.codebook, per_token=True)


@register
class PerToken(PerTokenValues):
    name = "per-token"
    summary = "one range per token, even levels (KIVI, --kv-quant uniform:B)"


@register
class PerTokenKmeans(PerTokenValues):
    name = "per-token-kmeans"
    summary = "one range per token, k-means levels, optional exact outliers"
    kmeans = True
    options = (Option("outliers", float, 0.0, "Fraction of entries per token kept exact (costs bytes).", min=0,
                      max=0.5, max_exclusive=True),)

    @classmethod
    def quantizer(cls, bits: int, fitted: Fitted, settings: Mapping[str, Any], head_dim: int) -> TensorQuantizer:
        return TensorQuantizer(bits, fitted.codebook, per_token=True,
                               outliers=outliers_per_token(settings["outliers"], head_dim))
