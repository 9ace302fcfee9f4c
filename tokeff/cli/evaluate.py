"""`tokeff eval bpb`: bits per UTF-8 byte of a text under a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Device, Dtype, EnsembleMode, EnsembleWeights, Json, Models, TrustRemoteCode
from tokeff.core import console
from tokeff.core.weights import ensemble_weights

app = typer.Typer(help="Measure models.", no_args_is_help=True)


@app.command()
def bpb(
    file: Annotated[Path, typer.Argument(help="UTF-8 text to score.")],
    model: Models,
    max_bytes: Annotated[int | None, typer.Option(help="Score only the first N bytes.")] = None,
    context: Annotated[int, typer.Option(help="Tokens per window.")] = 1024,
    stride: Annotated[int | None, typer.Option(help="Tokens between window starts (default: context / 2).")] = None,
    weight: EnsembleWeights = None,
    mode: EnsembleMode = "mix",
    segment_bytes: Annotated[int, typer.Option(help="Ensembles: bytes per segment scored from a fresh context.")] = 2048,
    device: Device = "auto",
    dtype: Dtype = "auto",
    trust_remote_code: TrustRemoteCode = False,
    json: Json = False,
) -> None:
    """Bits per byte: token negative log-likelihoods summed, over the text's UTF-8 bytes (sliding window).

    With several --model flags: the byte-level ensemble's bits per byte (and each member's, byte level).
    """
    from tokeff.core.models import load_model
    from tokeff.core.textio import read_text

    text = read_text(file, max_bytes)
    if len(model) > 1:
        _ensemble_bpb(file, text, model, weight, mode, segment_bytes, device, dtype, trust_remote_code, json)
        return
    model = model[0]
    lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    from tokeff.core.evaluation import bits_per_byte  # imports torch: only once the inputs are known good
    result = bits_per_byte(lm, text, context=context, stride=stride)
    payload = {"model": model, "file": str(file), **result.to_json()}
    if json:
        console.emit_json(payload)
        return
    table = Table("model", "bits/byte", "bytes", "tokens", "bytes/token", "seconds")
    table.add_row(
        model, f"{result.bpb:.4f}", f"{result.bytes:,}", f"{result.tokens:,}",
        f"{result.bytes / result.tokens:.2f}", f"{result.seconds:.1f}",
    )
    console.stdout.print(table)


def _ensemble_bpb(file, text, models, weights, mode, segment_bytes, device, dtype, trust_remote_code, json) -> None:
    from tokeff.core.models import load_model

    normalized = ensemble_weights(weights, len(models), mode)  # bad weights fail before any model loads
    lms = [load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code) for spec in models]
    from tokeff.decoding.bytelevel import byte_bits_per_byte

    result = byte_bits_per_byte(lms, text, weights, mode, segment_bytes)
    payload = {
        "models": models,
        "weights": normalized,
        "mode": mode,
        "file": str(file),
        **result.to_json(),
    }
    if json:
        console.emit_json(payload)
        return
    table = Table("model", "bits/byte (byte level)", "model calls/byte", title=f"{result.bytes:,} bytes, {result.segments} segments")
    for spec, value, calls in zip(models, result.member_bpb, result.model_calls):
        table.add_row(spec, f"{value:.4f}", f"{calls / result.bytes:.2f}")
    table.add_row(f"ensemble ({mode})", f"{result.bpb:.4f}", "")
    console.stdout.print(table)
    console.info(f"{result.seconds:.1f} s")
