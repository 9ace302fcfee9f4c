"""`tokeff kvquant calibrate`: fit a calibrated KV-cache quantizer for a model on calibration text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Force, Json, KvResidual, KvSinks, Model, ModelArgs, Output, with_shared_args
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
    schemes: Annotated[str | None, typer.Option(
        help="Comma-separated candidate schemes (default: all; `tokeff kvquant schemes` lists them).")] = None,
    scheme_option: Annotated[list[str] | None, typer.Option(
        "--scheme-option", help="SCHEME.OPTION=VALUE, e.g. fixed.outliers=0.02; repeatable.")] = None,
    group: Annotated[str, typer.Option(help="One codebook per 'layer' or per 'head' (KV head).")] = "layer",
    samples: Annotated[int, typer.Option(help="Calibration sequences.")] = 16,
    context: Annotated[int, typer.Option(help="Tokens per calibration sequence.")] = 512,
    sensitivity: Annotated[
        bool, typer.Option("--sensitivity/--no-sensitivity", help="Weight k-means by squared loss gradients (Fisher).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the k-means subsample.")] = 0,
    kv_residual: Annotated[int, typer.Option(
        help="Recent tokens the cache will keep exact (its --kv-residual): not quantized when schemes are compared.")] = 128,
    loader: ModelArgs = ModelArgs(),
    force: Force = False,
    json: Json = False,
) -> None:
    """Collect keys, values and queries on the text, fit every candidate scheme and keep, per layer and
    separately for keys and values, the one that changes attention least within uniform:BITS's bytes."""
    from tokeff.core.artifacts import check_output_path
    from tokeff.core.textio import read_text
    from tokeff.kvquant import check_bits
    from tokeff.kvquant.calibrate import candidate_settings, parse_scheme_options

    check_bits(bits)
    if kv_residual < 0:
        raise TokeffError(f"--kv-residual must be >= 0, got {kv_residual}")
    names = [name.strip() for name in schemes.split(",")] if schemes else None
    settings = parse_scheme_options(scheme_option or [])
    candidate_settings(names, settings)  # bad names or options fail before the model loads
    if group not in ("layer", "head"):
        raise TokeffError(f"--group must be 'layer' or 'head', got '{group}'")
    check_output_path(output, force)
    read_text(text)  # a bad text fails before the model loads
    from tokeff.kvquant.calibrate import calibrate_artifact

    result = calibrate_artifact(
        loader.load(model), text, output, bits=bits, per_head=group == "head", samples=samples, context=context,
        sensitivity=sensitivity, seed=seed, schemes=names, settings=settings,
        residual=kv_residual, force=force,
    )
    per_layer = ("key_selection", "value_selection")  # in the manifest; too long for a summary
    payload = {"output": str(output), "model": model, "bits": bits,
               **{k: v for k, v in result.metrics.items() if k not in per_layer}}
    if json:
        console.emit_json(payload)
        return
    table = Table("metric", "value", title=f"{output} ({bits}-bit KV calibration of {model})")
    for key, value in payload.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.stdout.print(table)


@app.command("schemes")
def list_schemes() -> None:
    """The quantization schemes calibration chooses from, with their options."""
    from tokeff.core.options import describe
    from tokeff.kvquant.schemes import SCHEMES

    for name, scheme in SCHEMES.items():
        console.stdout.print(f"{name} ({scheme.tensor}): {scheme.summary}", markup=False)
        if scheme.options:
            console.stdout.print(describe(scheme.options), markup=False)


@app.command("eval")
@with_shared_args
def evaluate(
    model: Model,
    text: Annotated[Path, typer.Argument(help="UTF-8 evaluation text (not the calibration text).")],
    kv_quant: Annotated[list[str], typer.Option("--kv-quant", help="A calibrated artifact or uniform:BITS; repeatable.")],
    max_bytes: Annotated[int | None, typer.Option(help="Score only the first N bytes.")] = None,
    context: Annotated[int, typer.Option(help="Tokens per window.")] = 1024,
    stride: Annotated[int | None, typer.Option(help="Tokens between window starts (default: context / 2).")] = None,
    chunk: Annotated[int, typer.Option(help="Tokens per model call in decode order.")] = 16,
    kv_residual: KvResidual = 128,
    kv_sinks: KvSinks = 1,
    segment: Annotated[int, typer.Option(help="Tokens per bootstrap segment.")] = 128,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    loader: ModelArgs = ModelArgs(),
    json: Json = False,
) -> None:
    """Each cache against the full model on the same windows: KL divergence, top-1 agreement and
    Δ bits/byte with 95% bootstrap intervals over segments, and KV bytes per token."""
    from tokeff.core.textio import read_text

    data = read_text(text, max_bytes)
    if chunk < 1:
        raise TokeffError(f"--chunk must be >= 1, got {chunk}")
    lm = loader.load(model)
    from tokeff.kvquant.quality import kv_quality
    from tokeff.kvquant.spec import kv_cache_factory

    factories = [kv_cache_factory(spec, lm, residual=kv_residual, sinks=kv_sinks) for spec in kv_quant]  # all checked first
    rows = []
    for spec, factory in zip(kv_quant, factories):
        quality = kv_quality(lm, data, factory, context, stride, chunk, segment, resamples)
        rows.append({"kv_quant": spec, **quality.to_json()})
        console.info(f"{spec}: {quality.tokens:,} tokens in {quality.seconds:.1f} s")
    payload = {"model": model, "file": str(text), "context": context, "chunk": chunk, "kv_residual": kv_residual,
               "kv_sinks": kv_sinks, "segment": segment, "caches": rows}
    if json:
        console.emit_json(payload)
        return
    table = Table("cache", "KL (nats/token)", "top-1 agreement", "Δ bits/byte", "bits/byte", "KV bytes/token",
                  title=f"{model} on {rows[0]['tokens']:,} tokens of {text} (95% bootstrap intervals)")
    for row in rows:
        kl, top1, delta = row["kl"], row["top1"], row["delta_bpb"]
        table.add_row(
            row["kv_quant"], f"{kl['value']:.5f} [{kl['low']:.5f}, {kl['high']:.5f}]",
            f"{top1['value']:.4f} [{top1['low']:.4f}, {top1['high']:.4f}]",
            f"{delta['value']:+.5f} [{delta['low']:+.5f}, {delta['high']:+.5f}]", f"{row['bpb']:.4f}",
            f"{row['kv_bytes_per_token']:,.0f}",
        )
    console.stdout.print(table)
