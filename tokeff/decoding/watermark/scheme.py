"""What every watermark scheme provides, and the registry that finds the schemes.

A scheme is one module in `tokeff/decoding/watermark/schemes/` holding a `WatermarkScheme` subclass
registered with `@SCHEMES.register`. It declares its key parameters once (as `Option`s: defaults,
bounds, help, the keygen flags), how many secret words its key holds, its token chooser (for
`tokeff decode --watermark`), its batched logits processor (for `tokeff watermark generate`) and its
detector. Nothing outside that module knows a scheme by name, so adding one is adding one file.
"""

from __future__ import annotations

import hashlib

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option, resolve
from tokeff.core.registry import Registry

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from tokeff.decoding.sampling import TokenChooser
    from tokeff.decoding.types import DecodeConfig
    from tokeff.decoding.watermark.keys import WatermarkKey


# every scheme's shortest testable text (shorter ones get a message, not a p-value)
MIN_TOKENS = Option("min_tokens", int, 8, "Shortest text detection will test.", min=1)
# Monte Carlo tests against random keys (exp, synthid)
RUNS = Option("runs", int, 999, "Monte Carlo runs against random keys; the smallest p-value is 1/(runs+1).", min=1)


@dataclass
class Score:
    """One text's test result."""

    statistic: float
    p_value: float
    p_floor: float  # the smallest p-value the test can report for this text
    details: dict[str, Any] = field(default_factory=dict)


class WatermarkScheme(ABC):
    """A scheme bound to one key: `key.rule` is an instance of the key's scheme."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `--help`
    options: ClassVar[tuple[Option, ...]]  # the key parameters, all stored in the key's manifest
    # parameters that only set a test's precision, so `detect` may override them without changing the key
    detection_options: ClassVar[tuple[str, ...]] = ()
    # the logits processor leaves one token per row (generation then decodes greedily)
    picks_token: ClassVar[bool] = False
    # the logits processor applies the sampling warpers itself (it must see the warped distribution),
    # so generation samples its output as it is
    warps: ClassVar[bool] = False

    def __init__(self, key: WatermarkKey) -> None:
        self.key = key

    @classmethod
    def parameters(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Every key parameter: the defaults with `overrides` (None means default), each checked."""
        given = {name: value for name, value in overrides.items() if value is not None}
        return resolve(cls.options, given, f"the {cls.name} scheme", label=cls._label)

    @classmethod
    def stored(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """A key's stored parameters with any missing detection option at its default.

        Detection options only set a test's precision, so a key written before one existed (a synthid
        key without `statistic`) still verifies and detects as it always did.
        """
        defaults = {o.name: o.default for o in cls.options if o.name in cls.detection_options and o.name not in params}
        return {**params, **defaults}

    @classmethod
    def problems(cls, params: Mapping[str, Any]) -> list[str]:
        """What is wrong with a key's stored parameters (missing, unknown, out of bounds); empty if nothing."""
        names = {option.name for option in cls.options}
        params = cls.stored(params)
        found = [f"key parameter '{name}' is missing" for name in sorted(names - set(params))]
        found += [f"unknown key parameter '{name}' for the {cls.name} scheme" for name in params if name not in names]
        for option in cls.options:
            if option.name in params:
                try:
                    option.check(params[option.name], cls._label(option))
                except TokeffError as error:
                    found.append(str(error))
        return found

    @classmethod
    def _label(cls, option: Option) -> str:
        return f"{cls.name} parameter '{option.name}'"

    @classmethod
    def word_count(cls, params: Mapping[str, Any]) -> int:
        """How many secret 64-bit words a key with these parameters holds."""
        return 1

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        """Key parameters and secret words from a transformers watermarking config (its `to_dict()`)."""
        raise TokeffError(f"the {cls.name} scheme cannot read a transformers watermarking config")

    @classmethod
    def for_model(cls, params: Mapping[str, Any], model: str) -> dict[str, Any]:
        """The parameters completed with what the model decides (kgw's transformers hashing: its vocabulary rows)."""
        return dict(params)

    def to_transformers(self) -> dict[str, Any]:
        """This key as a transformers watermarking config (its `to_dict()`), for `generate(watermarking_config=...)`."""
        raise TokeffError(f"transformers has no {self.name} watermark to export this key to")

    def check_sampling(self, config: DecodeConfig) -> None:
        """Refuses a decoding configuration the scheme cannot watermark (before any model loads)."""

    def offsets(self, count: int, seed: int | None) -> np.ndarray | None:
        """Per-text starting state drawn before generation (exp: the key offset); None if the scheme has none."""
        return None

    @abstractmethod
    def chooser(self, config: DecodeConfig, offset: int | None = None) -> TokenChooser:
        """The token chooser that watermarks one text of a decode method."""

    @abstractmethod
    def logits_processor(self, config: DecodeConfig, offsets: np.ndarray | None, prompt_length: int) -> LogitsProcessor:
        """The batched rule for transformers' `generate` (left-padded prompts of `prompt_length` tokens)."""

    @abstractmethod
    def score(self, texts: Sequence[np.ndarray]) -> list[Score]:
        """The test on each token sequence (each at least the key's `min_tokens` long)."""


def null_seed(key: WatermarkKey, tokens: np.ndarray) -> int:
    """Seed of a text's Monte Carlo null keys: from the key and the text, so a text always gets the same p-value."""
    digest = hashlib.sha256(key.words.tobytes() + np.asarray(tokens, dtype=np.int64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


SCHEMES: Registry[type[WatermarkScheme]] = Registry("watermark scheme", "tokeff.decoding.watermark.schemes")
