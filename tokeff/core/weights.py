"""Ensemble weights and modes, checked without importing torch, so a bad flag fails before any model loads."""

from __future__ import annotations

import math

from tokeff.core.errors import TokeffError

MODES = ("mix", "product")
AUTO = "auto"  # a Bayesian average over fixed weightings of the members, by their posteriors updated byte by byte

Weights = list[float] | str | None  # explicit weights, AUTO, or None (equal)


def parse_weights(values: list[str] | None) -> Weights:
    """`--weight` flags: one number per model, or `auto` alone."""
    if not values:
        return None
    if AUTO in values:
        if len(values) != 1:
            raise TokeffError("--weight auto stands alone (it averages over weightings by their posteriors)")
        return AUTO
    try:
        return [float(value) for value in values]
    except ValueError:
        raise TokeffError(f"--weight takes numbers or auto, got {' '.join(values)}") from None


def ensemble_weights(weights: Weights, count: int, mode: str = "mix") -> list[float]:
    """The weights (with AUTO: equal, the prior mean) normalized to sum 1, equal if not given, after checking them and the mode."""
    if mode not in MODES:
        raise TokeffError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if not weights or weights == AUTO:
        return [1.0 / count] * count
    if len(weights) != count:
        raise TokeffError(f"give one --weight per --model ({count} models, {len(weights)} weights)")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise TokeffError("--weight values must be positive numbers")
    total = sum(weights)
    return [w / total for w in weights]
