"""Fixed per-channel key ranges fitted offline before RoPE, the largest deviations kept exact and
k-means levels (KVQuant): no ranges stored per token, so the cheapest in bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokeff.core.options import Option
from tokeff.kvquant.fit import fit_codebook, key_ranges, outliers_per_token
from tokeff.kvquant.quantizer import TensorQuantizer, uniform_codebook
from tokeff.kvquant.schemes import FitContext, Fitted, Scheme, register


@register
class FixedKeys(Scheme):
    name = "fixed"
    summary = "fixed per-channel ranges before RoPE, sparse outliers, k-means levels (KVQuant)"
    tensor = "keys"
    pre_rope = True
    options = (Option("outliers", float, 0.01, "Fraction of entries per token kept exact.", min=0, max=0.5,
                      max_exclusive=True),)

    @classmethod
    def fit(cls, context: FitContext, settings: Mapping[str, Any]) -> Fitted:
        acts, layer = context.acts, context.layer
        keys = acts.stacked("keys", layer)
        center, half = key_ranges(keys, settings["outliers"])
        even = cls.quantizer(context.bits, Fitted(uniform_codebook(context.bits), center, half), settings,
                              keys.shape[-1])
        weights = acts.stacked("key_weights", layer) if acts.key_weights else None
        return Fitted(fit_codebook(even, keys, weights, context.per_head, context.seed), center, half)

    @classmethod
    def quantizer(cls, bits: int, fitted: Fitted, settings: Mapping[str, Any], head_dim: int) -> TensorQuantizer:
        outliers = outliers_per_token(settings["outliers"], head_dim)
        return TensorQuantizer(bits, fitted.codebook, per_token=False, center=fitted.center, half=fitted.half,
                               outliers=outliers)
