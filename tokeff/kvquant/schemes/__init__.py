"""The quantization schemes calibration chooses from, per layer, for keys and for values.

A scheme is a class in one module of this package, registered with `@register`: what it
quantizes (`tensor`), whether keys are quantized before RoPE, the options it declares once, how it
fits its constants on calibration activations (`fit`) and the `TensorQuantizer` it makes from them
(`quantizer`). `BASELINE` names the uncalibrated KIVI recipe (`--kv-quant uniform:B`), which is
itself a candidate and sets the byte budget no chosen scheme may exceed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from tokeff.core.options import Option, resolve
from tokeff.core.registry import Registry
from tokeff.kvquant.quantizer import TensorQuantizer

if TYPE_CHECKING:
    from tokeff.kvquant.collect import Activations

BASELINE = {"keys": "kivi", "values": "per-token"}


@dataclass
class Fitted:
    """A scheme's calibrated constants for one layer: its codebook [1 or kv_heads, 2**bits] and, for
    fixed ranges, per-channel key ranges [kv_heads, head_dim]."""

    codebook: torch.Tensor
    center: torch.Tensor | None = None
    half: torch.Tensor | None = None


@dataclass(frozen=True)
class FitContext:
    """What every scheme's `fit` reads: the activations, the layer, the width and the codebook grouping."""

    acts: Activations
    layer: int
    bits: int
    per_head: bool
    seed: int


class Scheme(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    tensor: ClassVar[str]  # "keys" or "values"
    pre_rope: ClassVar[bool] = False  # keys quantized before the rotary embedding
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def settings(cls, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option's value, the given ones checked (one wording of errors, see `core.options`)."""
        return resolve(cls.options, given or {}, f"scheme {cls.name}")

    @classmethod
    @abstractmethod
    def fit(cls, context: FitContext, settings: Mapping[str, Any]) -> Fitted:
        """The constants for one layer from calibration activations."""

    @classmethod
    @abstractmethod
    def quantizer(cls, bits: int, fitted: Fitted, settings: Mapping[str, Any], head_dim: int) -> TensorQuantizer:
        """The quantizer these constants and settings make for heads of `head_dim` channels."""


SCHEMES: Registry[type[Scheme]] = Registry("KV quantization scheme", "tokeff.kvquant.schemes")
register = SCHEMES.register


def schemes_for(tensor: str) -> list[str]:
    """Names of every registered scheme for "keys" or "values"."""
    return [name for name, scheme in SCHEMES.items() if scheme.tensor == tensor]
