"""`tokeff ensemble`: generate from models with different vocabularies, combined byte by byte."""

from __future__ import annotations

import codecs
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tokeff.cli.options import EnsembleMode, EnsembleWeights, Json, ModelArgs, Models, with_shared_args
from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.weights import AUTO, ensemble_weights, parse_weights


@with_shared_args
def ensemble(
    model: Models,
    prompt: Annotated[str | None, typer.Option(help="Prompt text (it may end inside a word).")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from a UTF-8 file.")] = None,
    weight: EnsembleWeights = None,
    mode: EnsembleMode = "mix",
    max_new_bytes: Annotated[int, typer.Option(help="Stop after this many bytes.")] = 256,
    stop: Annotated[list[str] | None, typer.Option(help="Stop after this text (repeatable; escapes like \\n work).")] = None,
    temperature: Annotated[float, typer.Option(help="0 is argmax over bytes.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely bytes.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass over bytes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep going past the end of the text.")] = False,
    loader: ModelArgs = ModelArgs(),
    json: Json = False,
) -> None:
    """Stream a continuation chosen byte by byte from the models' combined next-byte distributions."""
    if (prompt is None) == (prompt_file is None):
        raise TokeffError("give exactly one of --prompt and --prompt-file")
    if max_new_bytes < 1:
        raise TokeffError(f"--max-new-bytes must be >= 1, got {max_new_bytes}")
    weights = parse_weights(weight)
    ensemble_weights(weights, len(model), mode)  # bad flags fail before torch is imported
    from tokeff.core.textio import read_text
    from tokeff.decoding.bytelevel import ByteEnsemble, ByteLevelModel, generate_bytes
    from tokeff.decoding.sampling import make_chooser
    from tokeff.decoding.types import DecodeConfig

    config = DecodeConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    chooser = make_chooser(config)
    text = read_text(prompt_file) if prompt_file is not None else prompt
    if not text:
        raise TokeffError("the prompt is empty")
    stops = [codecs.decode(marker, "unicode_escape").encode("utf-8") for marker in stop or []]
    lms = [loader.load(spec) for spec in model]
    started = time.perf_counter()
    combined = ByteEnsemble([ByteLevelModel(lm, text=text) for lm in lms], weights, mode)
    data = generate_bytes(combined, chooser, max_new_bytes, not ignore_eos, stops, on_text=None if json else _write)
    seconds = time.perf_counter() - started
    calls = dict(zip(model, combined.model_calls))
    payload = {
        "models": model,
        "weights": combined.weights.tolist(),  # with auto: the posteriors after the last byte
        "auto": weights == AUTO,
        "mode": mode,
        "text": data.decode("utf-8", errors="replace"),
        "bytes": len(data),
        "seconds": seconds,
        "bytes_per_s": len(data) / seconds if seconds > 0 else 0.0,
        "model_calls": calls,
        "model_calls_per_byte": {spec: count / max(1, len(data)) for spec, count in calls.items()},
    }
    if json:
        console.emit_json(payload)
        return
    sys.stdout.write("\n")
    per_model = ", ".join(f"{spec}: {count} calls" for spec, count in calls.items())
    console.info(f"[ensemble {mode}] {len(data)} bytes in {seconds:.2f} s ({payload['bytes_per_s']:.1f} bytes/s); {per_model}")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
