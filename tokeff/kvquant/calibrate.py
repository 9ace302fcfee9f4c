"""`calibrate`: from a model and calibration text to a `KVCalibration` and its held-out errors."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import LoadedModel
from tokeff.kvquant.quantizer import TensorQuantizer, uniform_codebook
from tokeff.kvquant.spec import uniform_quantizers
from tokeff.kvquant import check_bits, check_key_group, check_outliers
from tokeff.kvquant.artifact import KVCalibration, write_calibration
from tokeff.kvquant.collect import Activations, collect
from tokeff.kvquant.fit import fit_codebook, key_ranges, outliers_per_token

MIN_CONTEXT = 16


@dataclass
class CalibrationResult:
    calibration: KVCalibration
    metrics: dict


def calibrate(
    lm: LoadedModel,
    text: str,
    bits: int,
    outliers: float = 0.01,
    per_head: bool = False,
    samples: int = 16,
    context: int = 512,
    sensitivity: bool = True,
    seed: int = 0,
    key_group: int = 0,
) -> CalibrationResult:
    """Fit key ranges and codebooks on `samples` sequences of `context` tokens (the boundary token
    plus context - 1 tokens of text); the next stretch of text, if any, measures held-out error."""
    check_bits(bits)
    check_outliers(outliers)
    if samples < 1:
        raise TokeffError(f"--samples must be >= 1, got {samples}")
    lm.check_context(context, minimum=MIN_CONTEXT)
    started = time.perf_counter()
    ids = lm.encode_plain(text)
    per = context - 1
    needed = samples * per
    if len(ids) < needed:
        raise TokeffError(
            f"the calibration text has {len(ids):,} tokens, but --samples {samples} x --context {context} needs "
            f"{needed:,}: give more text or lower --samples/--context"
        )
    prefix = prefix_token_id(lm)
    sequences = [[prefix] + ids[i * per : (i + 1) * per] for i in range(samples)]
    calibration = fit_calibration(collect(lm, sequences, sensitivity), bits, outliers, per_head, seed, key_group)
    metrics = {"calibration_tokens": needed, "text_tokens": len(ids)}
    heldout = ids[needed : needed + per]
    if len(heldout) >= 32:
        metrics.update(heldout_errors(lm, calibration, [prefix] + heldout))
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return CalibrationResult(calibration=calibration, metrics=metrics)



def calibrate_artifact(
    lm: LoadedModel, text: Path, out: Path, bits: int, outliers: float = 0.01, per_head: bool = False,
    samples: int = 16, context: int = 512, sensitivity: bool = True, seed: int = 0, key_group: int = 0,
    force: bool = False,
) -> CalibrationResult:
    """`calibrate` on a UTF-8 file, written as a `kvquant` artifact with every setting in its manifest."""
    from tokeff.core.textio import read_text

    result = calibrate(lm, read_text(text), bits, outliers, per_head, samples, context, sensitivity, seed, key_group)
    key_ranges = f"per group of {key_group} tokens" if key_group else "calibrated"
    parameters = {
        "outliers": outliers, "group": "head" if per_head else "layer", "samples": samples, "context": context,
        "sensitivity": sensitivity, "seed": seed, "keys": f"per-channel, before RoPE, ranges {key_ranges}",
        "values": "per-token",
    }
    write_calibration(out, lm, result.calibration, text, parameters, result.metrics, force=force)
    return result

def fit_calibration(
    acts: Activations, bits: int, outliers: float, per_head: bool, seed: int = 0, key_group: int = 0
) -> KVCalibration:
    """Key ranges and codebooks for every layer from collected activations (sensitivity-weighted if they
    carry weights). `key_group` > 0: keys get ranges per group of that many tokens and no outliers
    (a group's range already holds its extremes exactly), the codebook fitted to keys normalized so."""
    check_bits(bits)
    check_key_group(key_group)
    head_dim = acts.keys[0][0].shape[-1]
    n_outliers = outliers_per_token(outliers, head_dim)
    key_outliers = 0 if key_group else n_outliers
    placeholder = uniform_codebook(bits)
    fitted: dict[str, list[torch.Tensor]] = {"key_center": [], "key_half": [], "key_codebook": [], "value_codebook": []}
    for layer in console.track(range(len(acts.keys)), f"fitting {bits}-bit codebooks"):
        keys, values = acts.stacked("keys", layer, key_group), acts.stacked("values", layer)
        key_w = acts.stacked("key_weights", layer, key_group) if acts.key_weights else None
        value_w = acts.stacked("value_weights", layer) if acts.value_weights else None
        center, half = key_ranges(keys, outliers)
        key_quantizer = TensorQuantizer(bits, placeholder, per_token=False, group=key_group,
                                        **({} if key_group else {"center": center, "half": half}), outliers=key_outliers)
        value_quantizer = TensorQuantizer(bits, placeholder, per_token=True, outliers=n_outliers)
        fitted["key_center"].append(center)
        fitted["key_half"].append(half)
        fitted["key_codebook"].append(fit_codebook(key_quantizer, keys, key_w, per_head, seed + layer))
        fitted["value_codebook"].append(fit_codebook(value_quantizer, values, value_w, per_head, seed + layer))
    return KVCalibration(
        bits=bits, key_outliers=key_outliers, value_outliers=n_outliers, key_group=key_group,
        **{k: torch.stack(v) for k, v in fitted.items()},
    )


def heldout_errors(lm: LoadedModel, calibration: KVCalibration, sequence: list[int]) -> dict:
    """Relative squared error ||x - q(x)||^2 / ||x||^2 of keys and values, averaged over layers, for the
    calibrated quantizer and for the uniform (KIVI) one at the same bits, on text not used to fit."""
    acts: Activations = collect(lm, [sequence], sensitivity=False)
    rope = lm.rotary
    calibrated = calibration.quantizers()
    uniform = uniform_quantizers(len(calibrated), calibration.bits)
    errors = {"key_error": [], "value_error": [], "uniform_key_error": [], "uniform_value_error": []}
    for layer, (ours, kivi) in enumerate(zip(calibrated, uniform)):
        block = math.lcm(ours.keys.block, kivi.keys.block)
        n = acts.keys[layer][0].shape[1] // block * block
        keys = acts.keys[layer][0][None, :, :n].to(lm.device)
        values = acts.values[layer][0][None, :, :n].to(lm.device)
        rotated = rope.rotate(keys, layer, 1)  # position 0 (the boundary token) was left out
        errors["key_error"].append(_relative_error(keys, ours.keys.roundtrip(keys)))
        errors["value_error"].append(_relative_error(values, ours.values.roundtrip(values)))
        errors["uniform_key_error"].append(_relative_error(rotated, kivi.keys.roundtrip(rotated)))
        errors["uniform_value_error"].append(_relative_error(values, kivi.values.roundtrip(values)))
    result = {name: round(sum(v) / len(v), 6) for name, v in errors.items()}
    result["heldout_tokens"] = len(sequence) - 1
    return result


def _relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    return float((x.float() - approx).square().sum() / x.float().square().sum().clamp_min(1e-12))
