"""`tokeff dynamic`: dynamic tokenization of a text batch, with its length reduction and bits-per-byte cost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Json, Model, ModelArgs, with_shared_args
from tokeff.core import console


@with_shared_args
def dynamic(
    file: Annotated[Path, typer.Argument(help="UTF-8 text: cut into segments of --context tokens, the batch.")],
    model: Model,
    merges: Annotated[
        list[int] | None, typer.Option("--merges", "-k", help="Merges learned on the batch (repeat to sweep).")
    ] = None,
    context: Annotated[int, typer.Option(help="Tokens per segment (model's own tokens, boundary token included).")] = 512,
    max_bytes: Annotated[int | None, typer.Option(help="Use only the first N bytes.")] = None,
    across_words: Annotated[
        bool, typer.Option("--across-words", help="Let merges span word boundaries (default: within words).")
    ] = False,
    embedding: Annotated[str, typer.Option(help="New-token input embedding from its pieces: mean, linear or last.")] = "mean",
    min_count: Annotated[int, typer.Option(help="Only merge pairs seen at least this often in the batch.")] = 2,
    prefill: Annotated[
        float | None,
        typer.Option(help="Merge only the first fraction of each segment and score the rest in the model's tokens."),
    ] = None,
    loader: ModelArgs = ModelArgs(),
    json: Json = False,
) -> None:
    """Dynamic tokenization: merge a batch's frequent token pairs, run the model on the shorter sequences, compare.

    New tokens get input embeddings from their pieces (no training) and probabilities from an
    extended output layer, so bits per byte stays comparable with the model's own tokenization.
    """
    from tokeff.core.textio import read_text

    text = read_text(file, max_bytes)
    lm = loader.load(model)
    from tokeff.tokenizers_tools.dynamic.scoring import evaluate_dynamic

    reports = evaluate_dynamic(
        lm, text, merges or [256], context=context, across_words=across_words, embedding=embedding,
        min_count=min_count, prefill=prefill,
    )
    rows = [report.to_json() for report in reports]
    if json:
        console.emit_json(
            {"model": model, "file": str(file), "context": context, "across_words": across_words,
             "embedding": embedding, "results": rows}
        )
        return
    first = rows[0]
    table = Table(
        "merges", "tokens", "reduction", "bpb", "change", "of it at new tokens", "+ merge table", "model s",
        title=f"{model} on {file}: {first['mode']}, {first['bytes']:,} bytes scored, "
        f"{first['base_tokens']:,} own tokens, own bpb {first['base_bpb']:.4f}, own model s {first['base_seconds']:.1f}",
    )
    for row in rows:
        table.add_row(
            str(row["merges"]), f"{row['dynamic_tokens']:,}", f"{row['length_reduction']:.1%}",
            f"{row['dynamic_bpb']:.4f}", f"{row['bpb_change']:+.4f}",
            "-" if row["new_token_bpb_change"] is None else f"{row['new_token_bpb_change']:+.4f}",
            f"{row['bpb_change'] + row['merge_table_bpb']:+.4f}",
            f"{row['dynamic_seconds']:.1f}",
        )
    console.stdout.print(table)
