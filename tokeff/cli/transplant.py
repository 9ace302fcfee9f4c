"""`tokeff transplant`: give a model another model's tokenizer, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tokeff.cli.options import Device, Force, Json, Output
from tokeff.core import console
from tokeff.core.options import cli_parameters, with_cli_parameters
from tokeff.surgery.transplant.estimators import ESTIMATORS


@with_cli_parameters(cli_parameters({name: cls.options for name, cls in ESTIMATORS.items()}, "method"))
def transplant(
    base: Annotated[str, typer.Argument(help="Model to transplant into: built-in name, .gguf, folder or hub id.")],
    donor: Annotated[str, typer.Option("--donor", help="Model whose tokenizer (and embeddings) to use.")],
    output: Output,
    method: Annotated[str, typer.Option(help=f"How new tokens' rows are estimated: {', '.join(ESTIMATORS.names())}.")] = "omp",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="KEY=VALUE: any option of the method, instead of its flag (repeatable).")
    ] = None,
    pad_to: Annotated[int, typer.Option(help="Pad the vocabulary rows to a multiple of this.")] = 64,
    new_scale: Annotated[
        str,
        typer.Option(help="Multiply the estimated output rows (tied: input rows too) by this; auto picks it on sampled text."),
    ] = "auto",
    tune_text: Annotated[
        Path | None, typer.Option(help="Text for --new-scale auto (default: text sampled from BASE).")
    ] = None,
    maps: Annotated[
        list[str] | None,
        typer.Option("--map", help="DONOR_TOKEN=BASE_TOKEN: which base row a donor special token copies (repeatable)."),
    ] = None,
    donor_tokenizer_only: Annotated[
        bool, typer.Option("--donor-tokenizer-only", help="DONOR is only a tokenizer (methods subword, mean, zero).")
    ] = False,
    eval_text: Annotated[
        Path | None, typer.Option(help="Report bits per byte of base and transplanted model on this UTF-8 text.")
    ] = None,
    eval_context: Annotated[
        int | None, typer.Option(help="Tokens per evaluation window (default: 1024, or the model's positions if fewer).")
    ] = None,
    heal: Annotated[
        bool, typer.Option("--heal", help="Then fit only the new rows to the base model's own text, base frozen (minutes).")
    ] = False,
    heal_steps: Annotated[
        int | None, typer.Option(help="Optimizer steps of --heal (default: up to 200, none started after 7 minutes of fitting).")
    ] = None,
    heal_text: Annotated[
        Path | None, typer.Option(help="UTF-8 text for --heal (default: text sampled from BASE); its end is held out.")
    ] = None,
    device: Device = "auto",
    force: Force = False,
    json: Json = False,
    **method_options: Any,
) -> None:
    """Give BASE the tokenizer of DONOR: new tokens' rows are estimated from shared tokens (OMP by default)."""
    from tokeff.core.options import given_options
    from tokeff.surgery.transplant.pipeline import TransplantOptions, transplant as run

    chosen = given_options(method_options, param or [], ESTIMATORS.get(method).options, "--param")
    options = TransplantOptions(
        method=method, method_options=chosen, pad_to=pad_to, new_scale=new_scale, maps=maps or [], donor_tokenizer_only=donor_tokenizer_only,
        eval_text=str(eval_text) if eval_text is not None else None,
        tune_text=str(tune_text) if tune_text is not None else None, eval_context=eval_context, device=device,
        heal=heal, heal_steps=heal_steps, heal_text=str(heal_text) if heal_text is not None else None,
    )
    result = run(base, donor, output, options, force=force)
    if json:
        console.emit_json(result)
        return
    vocab = result["vocabulary"]
    table = Table("field", "value", title=f"transplant -> {output}")
    settings = ", ".join(f"{key}={value}" for key, value in result["transplant"]["method_options"].items())
    table.add_row("method", method + (f" ({settings})" if settings else ""))
    table.add_row("donor tokens", f"{vocab['donor_tokens']:,} ({result['transplant']['vocab_rows']:,} rows)")
    table.add_row("shared / new / unreachable", f"{vocab['shared']:,} / {vocab['new']:,} / {vocab['unreachable']:,}")
    if result.get("new_scale"):
        table.add_row("new output rows scaled by", f"{result['new_scale']['value']:g} ({result['new_scale']['text']})")
    table.add_row("special tokens", ", ".join(f"{s['donor']}->{s['base']} ({s['how']})" for s in result["special_tokens"]))
    healing = result.get("heal")
    if healing:
        held = healing["held_out"]
        table.add_row(
            f"heal ({healing['steps']} steps, {healing['seconds']:.0f} s)",
            f"held-out bits/byte {held['before_bpb']:.4f} -> {held['after_bpb']:.4f} (base {held['base_bpb']:.4f}); "
            f"tokens/byte {held['tokens_per_byte']:.4f} (base {held['base_tokens_per_byte']:.4f})",
        )
    quality = result.get("quality")
    if quality:
        table.add_row("bits/byte base -> transplanted", f"{quality['base_bpb']:.4f} -> {quality['transplanted_bpb']:.4f}")
        for label in ("shared", "new"):
            if quality.get(f"{label}_bytes"):
                table.add_row(
                    f"  on bytes under {label} tokens",
                    f"{quality[f'{label}_base_bpb']:.4f} -> {quality[f'{label}_transplanted_bpb']:.4f} "
                    f"({quality[f'{label}_bytes'] / quality['bytes']:.1%} of bytes)",
                )
    table.add_row("time", f"{result['seconds']:.1f} s (transplant {result['seconds_transplant']:.1f} s)")
    table.add_row("peak memory", f"{result['peak_rss_mib']:,.0f} MiB")
    console.stdout.print(table)
