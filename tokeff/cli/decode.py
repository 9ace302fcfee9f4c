"""`tokeff decode`: generate a continuation with any registered decode method."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tokeff.cli.options import Json, KvQuant, KvResidual, KvSinks, Model, ModelArgs, with_shared_args
from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.options import cli_parameters, with_cli_parameters
from tokeff.decoding.registry import METHODS


@with_shared_args
@with_cli_parameters(cli_parameters({name: cls.options for name, cls in METHODS.items()}, "method"))
def decode(
    model: Model,
    prompt: Annotated[str | None, typer.Option(help="Prompt text.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from a UTF-8 file.")] = None,
    method: Annotated[str, typer.Option(help="Decode method (see `tokeff decode --list-methods`).")] = "greedy",
    max_new_tokens: Annotated[int, typer.Option(help="Stop after this many new tokens.")] = 128,
    temperature: Annotated[float | None, typer.Option(help="0 is argmax; default 0, or 1 for --method sample.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the tokenizer's chat template.")] = False,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep going past end-of-sequence.")] = False,
    list_methods: Annotated[bool, typer.Option("--list-methods", help="List decode methods and exit.")] = False,
    watermark: Annotated[Path | None, typer.Option(help="Watermark the text with this key (`tokeff watermark keygen`).")] = None,
    kv_quant: KvQuant = None,
    kv_residual: KvResidual = 128,
    kv_sinks: KvSinks = 1,
    assignments: Annotated[
        list[str] | None,
        typer.Option("-o", "--option", help="KEY=VALUE: any option of the method (see --list-methods); repeatable."),
    ] = None,
    loader: ModelArgs = ModelArgs(),
    json: Json = False,
    **method_options: Any,
) -> None:
    """Stream a continuation to stdout; statistics go to stderr (or into the --json object)."""
    from tokeff.core.options import describe, given_options
    from tokeff.core.textio import read_text
    from tokeff.decoding import get_method, method_names
    from tokeff.decoding.types import DecodeConfig, Prompt

    if list_methods:
        for name in method_names():
            cls = get_method(name)
            console.stdout.print(f"{name}\t{cls.summary}" + (f"\n{describe(cls.options)}" if cls.options else ""))
        return
    if (prompt is None) == (prompt_file is None):
        raise TokeffError("give exactly one of --prompt and --prompt-file")
    if max_new_tokens < 1:
        raise TokeffError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    method_cls = get_method(method)
    text = read_text(prompt_file) if prompt_file is not None else prompt
    if not text:
        raise TokeffError("the prompt is empty")
    config = DecodeConfig(
        max_new_tokens=max_new_tokens,
        temperature=method_cls.default_temperature if temperature is None else temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_at_eos=not ignore_eos,
    )
    # only the flags given, so one that does not apply to the method is an error
    options = given_options(method_options, assignments or [], method_cls.options, "-o")
    method_cls.resolve_options(options)
    key = None
    if watermark is not None:
        from tokeff.decoding.watermark.generation import chooser_factory
        from tokeff.decoding.watermark.keys import check_vocabulary, load_key

        key = load_key(watermark)
        key.rule.check_sampling(config)
    lm = loader.load(model)
    if key is not None:
        check_vocabulary(key, lm.tokenizer, model)
        config.chooser_factory = chooser_factory(key)
    if kv_quant is not None:
        from tokeff.kvquant.spec import kv_cache_factory

        make_cache = kv_cache_factory(kv_quant, lm, residual=kv_residual, sinks=kv_sinks)
        config.cache_factory = lambda _lm: make_cache()
    if options.get("draft") is not None:
        options["draft"] = loader.load(options["draft"])
    decoder = method_cls(lm, config, **options)
    stream = None if json else _write_stdout
    result = decoder.generate(Prompt.from_text(lm, text, chat=chat), on_text=stream)
    if json:
        console.emit_json({"model": model, "method": method, **result.to_json()})
        return
    sys.stdout.write("\n")
    stats = result.stats.to_json()
    console.info(
        f"[{method}] {stats['tokens']} tokens in {stats['seconds']:.2f} s ({stats['tokens_per_s']:.1f} tokens/s"
        + (f"; prefill {stats['prefill_seconds']:.2f} s, then {stats['decode_tokens_per_s']:.1f} tokens/s"
           if "prefill_seconds" in stats else "") + "), "
        f"{stats['forward_passes']} forward passes, {stats['accepted_per_pass']:.2f} tokens/pass, "
        f"peak KV cache {stats['peak_kv_bytes'] / 2**20:.1f} MiB"
    )


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
