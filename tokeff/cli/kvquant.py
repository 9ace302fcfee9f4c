"""`tokeff kvquant calibrate`: fit a calibrated KV-cache quantizer for a model on calibration text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Force, Json, Model, ModelArgs, Output, with_shared_args
from tokeff.core import console
from tokeff.core.errors import TokeffError

app = typer.Typer(help="Calibrated KV-cache quantization (KVQuant).", no_args_is_help=True)


@app.command()
@with_shared_args
def calibrate(
    model: Model,
    text: Annotated[Path, typer.Option("--text", help="UTF-8 calibration text.")],
    output: Output,
    bits: Annotated[int, typer.Option(help="Bits per key and value entry: 2, 3 or 4.")] = 4,
    outliers: Annotated[float, typer.Option(help="Fraction of entries per token kept exact (dense-and-sparse).")] = 0.01,
    group: Annotated[str, typer.Option(help="One codebook per 'layer' or per 'head' (KV head).")] = "layer",
    samples: Annotated[int, typer.Option(help="Calibration sequences.")] = 16,
    context: Annotated[int, typer.Option(help="Tokens per calibration sequence.")] = 512,
    sensitivity: Annotated[
        bool, typer.Option("--sensitivity/--no-sensitivity", help="Weight k-means by squared loss gradients (Fisher).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the k-means subsample.")] = 0,
    loader: ModelArgs = ModelArgs(),
    force: Force = False,
    json: Json = False,
) -> None:
    """Collect pre-RoPE keys and values on the text, fit key ranges, outliers and codebooks, write an artifact."""
    from tokeff.core.artifacts import check_output_path
    from tokeff.core.textio import read_text
    from tokeff.kvquant import check_bits, check_outliers

    check_bits(bits)
    check_outliers(outliers)
    if group not in ("layer", "head"):
        raise TokeffError(f"--group must be 'layer' or 'head', got '{group}'")
    check_output_path(output, force)
    read_text(text)  # a bad text fails before the model loads
    from tokeff.kvquant.calibrate import calibrate_artifact

    result = calibrate_artifact(
        loader.load(model), text, output, bits=bits, outliers=outliers, per_head=group == "head", samples=samples,
        context=context, sensitivity=sensitivity, seed=seed, force=force,
    )
    payload = {"output": str(output), "model": model, "bits": bits, **result.metrics}
    if json:
        console.emit_json(payload)
        return
    table = Table("metric", "value", title=f"{output} ({bits}-bit KV calibration of {model})")
    for key, value in payload.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.stdout.print(table)
