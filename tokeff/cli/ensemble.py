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
    greedy_baseline: Annotated[
        bool, typer.Option("--greedy-baseline", help="Also decode the prompt with each member's plain greedy decoding, "
                                                     "for its model calls and seconds per byte beside the ensemble's."),
    ] = False,
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
    greedy = {spec: _greedy_rates(lm, text, len(data), not ignore_eos) for spec, lm in zip(model, lms)} if greedy_baseline else {}
    payload = {
        "models": model,
        "weights": combined.weights.tolist(),  # with auto: the weightings averaged under their posteriors after the last byte
        "auto": weights == AUTO,
        "mode": mode,
        "text": data.decode("utf-8", errors="replace"),
        "bytes": len(data),
        "seconds": seconds,
        "bytes_per_s": len(data) / seconds if seconds > 0 else 0.0,
        "model_calls": calls,
        "model_calls_per_byte": {spec: count / max(1, len(data)) for spec, count in calls.items()},
        "seconds_per_byte": seconds / max(1, len(data)),
        **({"greedy": greedy} if greedy else {}),
    }
    if json:
        console.emit_json(payload)
        return
    sys.stdout.write("\n")
    per_model = ", ".join(f"{spec}: {count} calls" for spec, count in calls.items())
    console.info(f"[ensemble {mode}] {len(data)} bytes in {seconds:.2f} s ({payload['bytes_per_s']:.1f} bytes/s); {per_model}")
    per_byte = ", ".join(f"{spec}: {count / max(1, len(data)):.2f}" for spec, count in calls.items())
    console.info(f"  ensemble: {1000 * payload['seconds_per_byte']:.1f} ms/byte, model calls/byte {per_byte}")
    for spec, rates in greedy.items():
        console.info(f"  {spec} greedy: {1000 * rates['seconds_per_byte']:.1f} ms/byte, "
                     f"{rates['model_calls_per_byte']:.2f} model calls/byte ({rates['bytes']} bytes)")


def _greedy_rates(lm, text: str, n_bytes: int, stop_at_eos: bool) -> dict:
    """Plain greedy token decoding of the same prompt, for about as many bytes: its model calls and seconds per byte."""
    from tokeff.decoding import get_method
    from tokeff.decoding.types import DecodeConfig, Prompt

    started = time.perf_counter()
    config = DecodeConfig(max_new_tokens=max(1, n_bytes // 3), stop_at_eos=stop_at_eos)
    result = get_method("greedy")(lm, config).generate(Prompt.from_text(lm, text))
    seconds = time.perf_counter() - started
    produced = max(1, len(result.text.encode("utf-8")))
    return {"bytes": produced, "seconds_per_byte": seconds / produced, "model_calls_per_byte": result.stats.forward_passes / produced}


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
