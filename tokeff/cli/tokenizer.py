"""`tokeff tokenizer train|stats`: train byte-level BPE tokenizers (optionally with supertokens) and compare tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Force, Json, Output
from tokeff.core import console
from tokeff.core.errors import TokeffError

app = typer.Typer(help="Train and compare tokenizers.", no_args_is_help=True)


@app.command()
def train(
    text: Annotated[list[Path], typer.Option("--text", help="UTF-8 training text (repeat for several files).")],
    vocab: Annotated[int, typer.Option("--vocab", help="Vocabulary size, special tokens included.")],
    output: Output,
    supertokens: Annotated[
        bool, typer.Option("--supertokens", help="Second stage across word boundaries (SuperBPE-style multi-word tokens).")
    ] = False,
    stage1: Annotated[
        int | None, typer.Option("--stage1", help="With --supertokens: merges learned within words before stage 2 (default: 3/4 of the merges, --vocab less bytes and specials).")
    ] = None,
    special_token: Annotated[
        list[str] | None, typer.Option("--special-token", help="Special token (repeatable; the first is BOS/EOS).")
    ] = None,
    min_frequency: Annotated[int, typer.Option(help="Only merge pairs seen at least this often.")] = 2,
    max_bytes: Annotated[int | None, typer.Option(help="Use only the first N bytes of each file.")] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Train a byte-level BPE tokenizer.json with stock `tokenizers`; --supertokens adds multi-word tokens."""
    from tokeff.core.artifacts import check_output_path
    from tokeff.tokenizers_tools.artifact import train_tokenizer_artifact

    check_output_path(output, force)  # before minutes of training, not after
    manifest = train_tokenizer_artifact(
        text, vocab, output, supertokens=supertokens, stage1_merges=stage1, special_tokens=special_token,
        min_frequency=min_frequency, max_bytes=max_bytes, force=force,
    )
    payload = {"output": str(output), **manifest.parameters, **manifest.metrics}
    if json:
        console.emit_json(payload)
        return
    table = Table("field", "value", title=str(output))
    for key in ("vocab_size", "supertokens", "stage1_vocab_size", "merges", "train_bytes", "train_bytes_per_token", "seconds"):
        value = payload[key]
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    console.stdout.print(table)


@app.command()
def stats(
    file: Annotated[Path, typer.Argument(help="UTF-8 text to encode.")],
    tokenizer: Annotated[
        list[str], typer.Option("--tokenizer", "-t", help="Tokenizer folder, tokenizer artifact or model (repeatable).")
    ],
    max_bytes: Annotated[int | None, typer.Option(help="Use only the first N bytes.")] = None,
    json: Json = False,
) -> None:
    """Bytes per token, tokens per word and vocabulary use of several tokenizers on one text, side by side."""
    from tokeff.core.models import load_tokenizer
    from tokeff.core.textio import read_text

    text = read_text(file, max_bytes)
    if not tokenizer:
        raise TokeffError("give at least one --tokenizer")
    loaded = [(spec, load_tokenizer(spec)) for spec in tokenizer]
    from tokeff.tokenizers_tools.stats import tokenizer_stats

    rows = [tokenizer_stats(spec, hf, text).to_json() for spec, hf in loaded]
    if json:
        console.emit_json({"file": str(file), "tokenizers": rows})
        return
    reference = rows[0]["tokens"]
    table = Table(
        "tokenizer", "vocab", "tokens", "vs first", "bytes/token", "tokens/word", "vocab used", "multi-word", "lossless",
        title=f"{file} ({rows[0]['bytes']:,} bytes, {rows[0]['words']:,} words)",
    )
    for row in rows:
        table.add_row(
            row["tokenizer"], f"{row['vocab_size']:,}", f"{row['tokens']:,}", f"{row['tokens'] / reference:.3f}",
            f"{row['bytes_per_token']:.3f}", f"{row['tokens_per_word']:.3f}",
            f"{row['vocab_used']:,} ({row['vocab_used_fraction']:.1%})", f"{row['multiword_fraction']:.1%}",
            "yes" if row["lossless"] else "NO",
        )
    console.stdout.print(table)
