"""`calibrate`: from a model and calibration text to a `KVCalibration` and its held-out errors.

Each layer's keys and values get, separately, the scheme (`schemes/`) whose quantization changes the
layer's attention output least on the calibration sequences, among those that store no more bytes
per token than the uncalibrated KIVI recipe. That recipe is always a candidate, so on calibration
data the choice can only match or beat `--kv-quant uniform:B`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.rope import RotaryTables
from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import LoadedModel
from tokeff.kvquant import check_bits
from tokeff.kvquant.artifact import KVCalibration, write_calibration
from tokeff.kvquant.collect import Activations, collect
from tokeff.kvquant.fit import key_ranges
from tokeff.kvquant.schemes import BASELINE, SCHEMES, FitContext, schemes_for
from tokeff.kvquant.select import LayerAttention
from tokeff.kvquant.spec import DEFAULT_RESIDUAL, uniform_quantizers

MIN_CONTEXT = 16


@dataclass
class CalibrationResult:
    calibration: KVCalibration
    metrics: dict


def calibrate(
    lm: LoadedModel,
    text: str,
    bits: int,
    per_head: bool = False,
    samples: int = 16,
    context: int = 512,
    sensitivity: bool = True,
    seed: int = 0,
    schemes: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    residual: int = DEFAULT_RESIDUAL,
) -> CalibrationResult:
    """Fit every candidate scheme on `samples` sequences of `context` tokens (the boundary token plus
    context - 1 tokens of text) and keep the best per layer; the next stretch of text, if any,
    measures held-out error against the uniform recipe. `residual`: the recent tokens the cache will
    keep exact (`--kv-residual`), left unquantized when errors are measured."""
    check_bits(bits)
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
    calibration, selection = fit_calibration(collect(lm, sequences, sensitivity), lm.rotary, bits, per_head, seed,
                                             schemes, settings, residual)
    metrics = {"calibration_tokens": needed, "text_tokens": len(ids), **selection}
    heldout = ids[needed : needed + per]
    if len(heldout) >= 32:
        metrics.update(heldout_errors(lm, calibration, [prefix] + heldout, residual))
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return CalibrationResult(calibration=calibration, metrics=metrics)


def calibrate_artifact(
    lm: LoadedModel, text: Path, out: Path, bits: int, per_head: bool = False, samples: int = 16, context: int = 512,
    sensitivity: bool = True, seed: int = 0, schemes: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None, residual: int = DEFAULT_RESIDUAL, force: bool = False,
) -> CalibrationResult:
    """`calibrate` on a UTF-8 file, written as a `kvquant` artifact with every setting in its manifest."""
    from tokeff.core.textio import read_text

    result = calibrate(lm, read_text(text), bits, per_head, samples, context, sensitivity, seed, schemes, settings,
                       residual)
    parameters = {"group": "head" if per_head else "layer", "samples": samples, "context": context,
                  "sensitivity": sensitivity, "seed": seed, "residual": residual}
    write_calibration(out, lm, result.calibration, text, parameters, result.metrics, force=force)
    return result


def candidate_settings(
    schemes: Sequence[str] | None, settings: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Each candidate scheme's checked options, in registry order (the KIVI baselines first, so that
    a tie goes to them); every tensor needs at least one candidate."""
    names = list(schemes) if schemes is not None else [BASELINE[t] for t in ("keys", "values")] + [
        name for name in SCHEMES.names() if name not in BASELINE.values()]
    for name in names:
        SCHEMES.get(name)  # an unknown name fails here, listing the known ones
    for name in settings or {}:
        if name not in names:
            raise TokeffError(f"settings for scheme '{name}', which is not a candidate")
    for tensor in ("keys", "values"):
        if not any(SCHEMES.get(name).tensor == tensor for name in names):
            raise TokeffError(f"no candidate scheme for {tensor} (known: {', '.join(schemes_for(tensor))})")
    return {name: SCHEMES.get(name).settings((settings or {}).get(name)) for name in dict.fromkeys(names)}


def fit_calibration(
    acts: Activations, rope: RotaryTables, bits: int, per_head: bool = False, seed: int = 0,
    schemes: Sequence[str] | None = None, settings: Mapping[str, Mapping[str, Any]] | None = None,
    residual: int = 0,
) -> tuple[KVCalibration, dict[str, Any]]:
    """The calibration and the record of the choice: per layer, every candidate's attention-output error
    and bytes per token for keys and for values (`key_selection`, `value_selection`)."""
    check_bits(bits)
    options = candidate_settings(schemes, settings)
    head_dim = acts.keys[0][0].shape[-1]
    chosen: dict[str, list] = {"key_center": [], "key_half": [], "key_codebook": [], "value_codebook": [],
                               "key_schemes": [], "value_schemes": []}
    record: dict[str, list] = {"key_selection": [], "value_selection": []}
    for layer in console.track(range(len(acts.keys)), f"choosing {bits}-bit schemes per layer"):
        context = FitContext(acts, layer, bits, per_head, seed + layer)
        fitted = {name: SCHEMES.get(name).fit(context, opts) for name, opts in options.items()}
        quantizers = {name: SCHEMES.get(name).quantizer(bits, fitted[name], opts, head_dim)
                      for name, opts in options.items()}
        uniform = uniform_quantizers(1, bits, head_dim)[0]  # `--kv-quant uniform:B`: the byte budget
        baselines = {"keys": uniform.keys, "values": uniform.values}
        block = math.lcm(*(q.block for q in [*quantizers.values(), *baselines.values()]))
        attention = LayerAttention(acts, layer, rope, min(k.shape[1] for k in acts.keys[layer]) // block * block,
                                   residual)
        if attention.tokens == 0:
            raise TokeffError(f"calibration sequences are shorter than a group of {block} tokens: raise --context")
        for tensor in ("keys", "values"):
            budget = attention.bytes_per_token(baselines[tensor], tensor)
            rows = {}
            for name, quantizer in quantizers.items():
                scheme = SCHEMES.get(name)
                if scheme.tensor != tensor:
                    continue
                error = (attention.key_error(quantizer, scheme.pre_rope) if tensor == "keys"
                         else attention.value_error(quantizer))
                rows[name] = {"error": error, "bytes_per_token": attention.bytes_per_token(quantizer, tensor)}
            best = pick(rows, budget)
            record[f"{tensor[:-1]}_selection"].append({"chosen": best, "budget_bytes_per_token": budget, **rows})
            chosen[f"{tensor[:-1]}_schemes"].append(best)
            chosen[f"{tensor[:-1]}_codebook"].append(fitted[best].codebook)
            if tensor == "keys":
                center, half = ((fitted[best].center, fitted[best].half) if fitted[best].center is not None
                                else key_ranges(acts.stacked("keys", layer), 0.0))
                chosen["key_center"].append(center)
                chosen["key_half"].append(half)
    tensors = {name: _stack(chosen.pop(name)) for name in ("key_center", "key_half", "key_codebook", "value_codebook")}
    used = set(chosen["key_schemes"]) | set(chosen["value_schemes"])
    calibration = KVCalibration(bits=bits, **tensors, **chosen,
                                settings={name: opts for name, opts in options.items() if name in used})
    for tensor in ("key", "value"):
        names = chosen[f"{tensor}_schemes"]
        record[f"{tensor}_schemes_chosen"] = {name: names.count(name) for name in dict.fromkeys(names)}
    return calibration, record


def parse_scheme_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`SCHEME.OPTION=VALUE` pairs, each value parsed by the scheme's declared option."""
    from tokeff.core.options import parse_assignments

    parsed: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, assignment = pair.partition(".")
        if not dot:
            raise TokeffError(f"--scheme-option takes SCHEME.OPTION=VALUE, got {pair!r}")
        parsed.setdefault(name, {}).update(parse_assignments([assignment], SCHEMES.get(name).options))
    return parsed


def pick(rows: Mapping[str, Mapping[str, float]], budget: float) -> str:
    """The candidate of least error among those within the byte budget (the first of equals)."""
    within = [name for name, row in rows.items() if row["bytes_per_token"] <= budget]
    if not within:
        raise TokeffError(f"no candidate scheme stores at most {budget:g} bytes per token (the uniform recipe's)")
    return min(within, key=lambda name: rows[name]["error"])


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """One tensor per layer; codebooks of one row beside per-head ones are repeated per head."""
    rows = max(part.shape[0] for part in parts)
    return torch.stack([part.expand(rows, *part.shape[1:]) for part in parts])


def heldout_errors(lm: LoadedModel, calibration: KVCalibration, sequence: list[int], residual: int = 0) -> dict:
    """Relative attention-output error from quantized keys and from quantized values, averaged over
    layers, for the calibrated quantizers and for the uniform (KIVI) ones, on text not used to fit."""
    acts: Activations = collect(lm, [sequence], sensitivity=False)
    calibrated = calibration.quantizers()
    uniform = uniform_quantizers(len(calibrated), calibration.bits, acts.keys[0][0].shape[-1])
    errors = {"key_error": [], "value_error": [], "uniform_key_error": [], "uniform_value_error": []}
    for layer, (ours, kivi) in enumerate(zip(calibrated, uniform)):
        block = math.lcm(ours.block, kivi.block)
        attention = LayerAttention(acts, layer, lm.rotary, acts.keys[layer][0].shape[1] // block * block, residual)
        errors["key_error"].append(attention.key_error(ours.keys, ours.pre_rope))
        errors["value_error"].append(attention.value_error(ours.values))
        errors["uniform_key_error"].append(attention.key_error(kivi.keys, kivi.pre_rope))
        errors["uniform_value_error"].append(attention.value_error(kivi.values))
    result = {name: round(sum(v) / len(v), 6) for name, v in errors.items()}
    result["heldout_tokens"] = len(sequence) - 1
    return result
