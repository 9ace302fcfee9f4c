"""`tokeff eval bpb`: bits per UTF-8 byte of a text under a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tokeff.cli import corpus
from tokeff.cli.options import (
    CorpusArgs, EnsembleMode, EnsembleWeights, Json, KvQuant, KvResidual, KvSinks, ModelArgs, Models, with_shared_args,
)
from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.options import cli_parameters, with_cli_parameters
from tokeff.core.weights import AUTO, ensemble_weights, parse_weights

app = typer.Typer(help="Measure models.", no_args_is_help=True)


def _bounded_methods() -> dict:
    """The decode methods that bound the KV cache (sink, h2o): `--method` here, with their option flags."""
    from tokeff.decoding.bounded import BoundedCacheMethod
    from tokeff.decoding.registry import METHODS

    return {name: cls for name, cls in METHODS.items() if issubclass(cls, BoundedCacheMethod)}


@app.command()
@with_shared_args
@with_cli_parameters(cli_parameters({name: cls.options for name, cls in _bounded_methods().items()}, "method"))
def bpb(
    files: Annotated[list[Path], typer.Argument(help="UTF-8 text to score (with -o: a corpus of files, folders, globs, JSONL, Parquet).")],
    model: Models,
    max_bytes: Annotated[int | None, typer.Option(help="Score only the first N bytes.")] = None,
    context: Annotated[int, typer.Option(help="Tokens per window.")] = 1024,
    stride: Annotated[int | None, typer.Option(help="Tokens between window starts (default: context / 2), in decode order too; "
                                                      "--stride equal to --context scores non-overlapping segments.")] = None,
    method: Annotated[
        str | None,
        typer.Option(help="Score in decode order through a bounded cache (sink, h2o), beside the full cache."),
    ] = None,
    kv_quant: KvQuant = None,
    kv_residual: KvResidual = 128,
    kv_sinks: KvSinks = 1,
    chunk: Annotated[
        int | None,
        typer.Option(help="With --method or --kv-quant: tokens per model call in decode order "
                          "(1 is exactly generation; default 1 with --method, 16 with --kv-quant)."),
    ] = None,
    weight: EnsembleWeights = None,
    mode: EnsembleMode = "mix",
    segment_bytes: Annotated[int, typer.Option(help="Byte level: bytes scored per window.")] = 2048,
    context_bytes: Annotated[int, typer.Option(help="Byte level: bytes of the text before each window it sees first "
                                                     "(0: a fresh context per segment).")] = 2048,
    byte_level: Annotated[bool, typer.Option("--byte-level", help="Score one model byte by byte (implied by several --model).")] = False,
    incremental: Annotated[bool, typer.Option("--incremental", help="Byte level: one model call per byte (the reference), "
                                                                     "not batched covering trees.")] = False,
    loader: ModelArgs = ModelArgs(),
    json: Json = False,
    corpus_args: CorpusArgs = CorpusArgs(),
    **bounded: Any,
) -> None:
    """Bits per byte: token negative log-likelihoods summed, over the text's UTF-8 bytes (sliding window).

    With several --model flags: the byte-level ensemble's bits per byte (and each member's, byte level, on the same windows).
    With -o (corpus mode, one model, sliding windows): one row per document, corpus bits per byte on stdout.
    """
    from tokeff.core.textio import read_text

    if corpus_args.output is not None:
        if len(model) > 1 or method or kv_quant or max_bytes:
            raise TokeffError("corpus mode (-o) scores one --model with sliding windows (no --method, --kv-quant, --max-bytes)")
        params = dict(model=model[0], context=context, stride=stride, device=loader.device, dtype=loader.dtype,
                      trust_remote_code=loader.trust_remote_code)
        corpus.run_corpus("bpb", params, files, corpus_args, json)
        return
    if len(files) != 1:
        raise TokeffError("give one file, or -o OUT to score a corpus")
    file = files[0]
    text = read_text(file, max_bytes)
    if len(model) > 1 or byte_level:
        if method is not None or kv_quant is not None:
            raise TokeffError("--method and --kv-quant score tokens; not with --byte-level or several --model")
        _byte_bpb(file, text, model, parse_weights(weight), mode, segment_bytes, context_bytes, not incremental, loader, json)
        return
    model = model[0]
    if chunk is not None and chunk < 1:
        raise TokeffError(f"--chunk must be >= 1, got {chunk}")
    if method is not None:
        if kv_quant is not None:
            raise TokeffError("--method and --kv-quant do not combine in eval bpb")
        _bounded_bpb(file, model, text, method, context, stride, chunk or 1, bounded, loader, json)
        return
    given = [name for name, value in bounded.items() if value is not None]
    if given:
        raise TokeffError(f"--{given[0].replace('_', '-')} applies only with --method")
    if chunk is not None and kv_quant is None:
        raise TokeffError("--chunk applies only with --method or --kv-quant")
    chunk = chunk or 16
    lm = loader.load(model)
    from tokeff.core.evaluation import bits_per_byte  # imports torch: only once the inputs are known good
    from tokeff.core.scoring import DecodeOrder

    order = None
    if kv_quant is not None:
        from tokeff.kvquant.spec import kv_cache_factory

        order = DecodeOrder(kv_cache_factory(kv_quant, lm, residual=kv_residual, sinks=kv_sinks), chunk=chunk)
    result = bits_per_byte(lm, text, context=context, stride=stride, decode_order=order)
    payload = {"model": model, "file": str(file), **result.to_json()}
    if kv_quant is not None:
        payload.update(kv_quant=kv_quant, kv_residual=kv_residual, kv_sinks=kv_sinks)
    if json:
        console.emit_json(payload)
        return
    table = Table("model", "bits/byte", "bytes", "tokens", "bytes/token", "seconds")
    table.add_row(
        model, f"{result.bpb:.4f}", f"{result.bytes:,}", f"{result.tokens:,}",
        f"{result.bytes / result.tokens:.2f}", f"{result.seconds:.1f}",
    )
    console.stdout.print(table)


def _bounded_bpb(
    file: Path, model: str, text: str, method: str, context: int, stride: int | None, chunk: int, options: dict,
    loader: ModelArgs, json: bool,
) -> None:
    from tokeff.decoding import get_method
    from tokeff.decoding.bounded import BoundedCacheMethod, bounded_cache_bpb
    from tokeff.decoding.types import DecodeConfig

    method_cls = get_method(method)
    if not issubclass(method_cls, BoundedCacheMethod):
        raise TokeffError(f"--method {method} does not bound the cache; eval bpb --method takes sink or h2o")
    options = {name: value for name, value in options.items() if value is not None}
    method_cls.resolve_options(options)
    lm = loader.load(model)
    payload = {"model": model, "file": str(file), **bounded_cache_bpb(method_cls(lm, DecodeConfig(), **options), text, context, stride, chunk).to_json()}
    if json:
        console.emit_json(payload)
        return
    table = Table("", method, "full cache")
    table.add_row("bits/byte", f"{payload['bpb']:.4f}", f"{payload['full_cache_bpb']:.4f}")
    table.add_row("KV cache", _size(payload["kv_bytes"]), _size(payload["full_cache_kv_bytes"]))
    table.add_row("context", f"{context:,} tokens in decode order", f"{payload['full_cache_context']:,} tokens")
    console.stdout.print(table)
    console.info(f"{model}: {payload['tokens']:,} tokens, {payload['bytes']:,} bytes, {payload['seconds']:.1f} s")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _byte_bpb(file, text, models, weights, mode, segment_bytes, context_bytes, batched, loader: ModelArgs, json) -> None:
    normalized = ensemble_weights(weights, len(models), mode)  # bad weights fail before any model loads
    lms = [loader.load(spec) for spec in models]
    from tokeff.decoding.bytelevel import byte_bits_per_byte

    result = byte_bits_per_byte(lms, text, weights, mode, segment_bytes, context_bytes, batched=batched)
    label = f"ensemble ({mode}, {weights} weights)" if weights == AUTO else f"ensemble ({mode})"
    payload = {
        "models": models,
        "weights": weights if weights == AUTO else normalized,
        "mode": mode,
        "scoring": "batched" if batched else "incremental",
        "file": str(file),
        **result.to_json(),
    }
    if json:
        console.emit_json(payload)
        return
    title = f"{result.bytes:,} bytes, {result.segments} windows, {context_bytes:,} context bytes"
    table = Table("model", "bits/byte (byte level)", "model calls/byte", "ms/byte", title=title)
    for spec, value, calls, seconds in zip(models, result.member_bpb, result.model_calls, result.member_seconds):
        table.add_row(spec, f"{value:.4f}", f"{calls / result.bytes:.3f}", f"{1000 * seconds / result.bytes:.2f}")
    if len(models) > 1:
        table.add_row(label, f"{result.bpb:.4f}", "", "")
    console.stdout.print(table)
    console.info(f"{result.seconds:.1f} s")
