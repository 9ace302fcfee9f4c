"""Ensemble weights and modes, checked without importing torch, so a bad flag fails before any model loads."""

from __future__ import annotations

import math

from tokeff.core.errors import TokeffError

MODES = ("mix", "product")


def ensemble_weights(weights: list[float] | None, count: int, mode: str = "mix") -> list[float]:
    """The weights normalized to sum 1 (equal if not given), after checking them and the mode."""
    if mode not in MODES:
        raise TokeffError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count:
        raise TokeffError(f"give one --weight per --model ({count} models, {len(weights)} weights)")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise TokeffError("--weight values must be positive numbers")
    total = sum(weights)
    return [w / total for w in weights]
