"""Ensemble weights and modes, checked without importing torch, so a bad flag fails before any model loads."""

from __future__ import annotations

import math

from tokeff.core.errors import TokeffError

MODES = ("mix", "product")
AUTO = "auto"  # a Bayesian mixture: the members' posteriors, updated byte by byte, from equal priors

Weights = list[float] | str | None  # explicit weights, AUTO, or None (equal)


def parse_weights(values: list[str] | None) -> Weights:
    """`--weight` flags: one number per model, or `auto` alone."""
    if not values:
        return None
    if AUTO in values:
        if len(values) != 1:
            raise TokeffError("--weight auto stands alone (the members' posteriors are the weights)")
        return AUTO
    try:
        return [float(value) for value in values]
    except ValueError:
        raise TokeffError(f"--weight takes numbers or auto, got {' '.join(values)}") from None


def ensemble_weights(weights: Weights, count: int, mode: str = "mix") -> list[float]:
    """The weights (with AUTO: the priors) normalized to sum 1, equal if not given, after checking them and the mode."""
    if mode not in MODES:
        raise TokeffError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if weights == AUTO:
        if mode != "mix":
            raise TokeffError("--weight auto is a Bayesian mixture: use it with --mode mix")
        return [1.0 / count] * count
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count:
        raise TokeffError(f"give one --weight per --model ({count} models, {len(weights)} weights)")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise TokeffError("--weight values must be positive numbers")
    total = sum(weights)
    return [w / total for w in weights]
