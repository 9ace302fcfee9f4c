"""Key ranges per channel over each group of tokens: KIVI's recipe (after RoPE, even levels), and
the same ranges taken before RoPE (where channels keep stable magnitudes), with even or fitted levels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tokeff.core.options import Option
from tokeff.kvquant.fit import fit_codebook
from tokeff.kvquant.quantizer import TensorQuantizer, uniform_codebook
from tokeff.kvquant.schemes import FitContext, Fitted, Scheme, register

KIVI_GROUP = 32  # tokens sharing a per-channel key range, as in KIVI


class GroupedKeys(Scheme):
    tensor = "keys"
    kmeans: ClassVar[bool] = False
    options = (Option("group", int, KIVI_GROUP, "Tokens sharing a per-channel key range.", min=1),)

    @classmethod
    def fit(cls, context: FitContext, settings: Mapping[str, Any]) -> Fitted:
        book = uniform_codebook(context.bits)
        if not cls.kmeans:
            return Fitted(book)
        group, acts = settings["group"], context.acts
        keys = acts.stacked("keys", context.layer, group)
        weights = acts.stacked("key_weights", context.layer, group) if acts.key_weights else None
        even = cls.quantizer(context.bits, Fitted(book), settings, keys.shape[-1])
        return Fitted(fit_codebook(even, keys, weights, context.per_head, context.seed))

    @classmethod
    def quantizer(cls, bits: int, fitted: Fitted, settings: Mapping[str, Any], head_dim: int) -> TensorQuantizer:
        return TensorQuantizer(bits, fitted.codebook, per_token=False, group=settings["group"])


@register
class Kivi(GroupedKeys):
    name = "kivi"
    summary = "per-channel ranges per group of tokens after RoPE, even levels (KIVI, --kv-quant uniform:B)"


@register
class PreRope(GroupedKeys):
    name = "pre-rope"
    summary = "per-channel ranges per group of tokens before RoPE, even levels"
    pre_rope = True


@register
class PreRopeKmeans(GroupedKeys):
    name = "pre-rope-kmeans"
    summary = "per-channel ranges per group of tokens before RoPE, k-means levels"
    pre_rope = True
    kmeans = True
