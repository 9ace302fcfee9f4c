"""`tokeff eval bpb`: bits per UTF-8 byte of a text under a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Device, Dtype, Json, KvQuant, KvResidual, KvSinks, TrustRemoteCode
from tokeff.core import console
from tokeff.core.errors import TokeffError

app = typer.Typer(help="Measure models.", no_args_is_help=True)


@app.command()
def bpb(
    file: Annotated[Path, typer.Argument(help="UTF-8 text to score.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Built-in name, .gguf file, folder or hub id.")],
    max_bytes: Annotated[int | None, typer.Option(help="Score only the first N bytes.")] = None,
    context: Annotated[int, typer.Option(help="Tokens per window.")] = 1024,
    stride: Annotated[int | None, typer.Option(help="Tokens between window starts (default: context / 2).")] = None,
    kv_quant: KvQuant = None,
    kv_residual: KvResidual = 128,
    kv_sinks: KvSinks = 1,
    chunk: Annotated[
        int, typer.Option(help="With --kv-quant: tokens per model call in decode order (1 is exactly generation).")
    ] = 16,
    device: Device = "auto",
    dtype: Dtype = "auto",
    trust_remote_code: TrustRemoteCode = False,
    json: Json = False,
) -> None:
    """Bits per byte: token negative log-likelihoods summed, over the text's UTF-8 bytes (sliding window)."""
    from tokeff.core.models import load_model
    from tokeff.core.textio import read_text

    text = read_text(file, max_bytes)
    lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    from tokeff.core.evaluation import bits_per_byte  # imports torch: only once the inputs are known good
    make_cache = None
    if kv_quant is not None:
        from tokeff.decoding.kvcache.spec import kv_cache_factory

        if chunk < 1:
            raise TokeffError(f"--chunk must be >= 1, got {chunk}")
        make_cache = kv_cache_factory(kv_quant, lm, residual=kv_residual, sinks=kv_sinks)
    result = bits_per_byte(lm, text, context=context, stride=stride, make_cache=make_cache, chunk=chunk)
    payload = {"model": model, "file": str(file), **result.to_json()}
    if kv_quant is not None:
        payload.update(kv_quant=kv_quant, kv_residual=kv_residual, kv_sinks=kv_sinks, chunk=chunk)
    if json:
        console.emit_json(payload)
        return
    table = Table("model", "bits/byte", "bytes", "tokens", "bytes/token", "seconds")
    table.add_row(
        model, f"{result.bpb:.4f}", f"{result.bytes:,}", f"{result.tokens:,}",
        f"{result.bytes / result.tokens:.2f}", f"{result.seconds:.1f}",
    )
    console.stdout.print(table)
