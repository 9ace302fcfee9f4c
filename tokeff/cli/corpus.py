"""Options and output of the corpus mode of `tokeff watermark detect` and `tokeff eval bpb` (with -o)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.core import console

CorpusOutput = Annotated[
    Path | None, typer.Option("-o", "--output", help="Corpus mode: one row per document into this .parquet or .jsonl.")
]
Engine = Annotated[str, typer.Option(help="Corpus mode: local (this process) or ray (Ray Data).")]
Address = Annotated[str | None, typer.Option(help="ray: join this running cluster (default: start Ray on this machine).")]
Workers = Annotated[int, typer.Option(help="ray: scoring actors (each loads the key or model once).")]
GpusPerWorker = Annotated[float, typer.Option(help="ray: GPUs per actor.")]
BatchSize = Annotated[int, typer.Option(help="Corpus mode: documents per batch.")]
Field = Annotated[str, typer.Option(help="JSONL and Parquet: the field holding each document's text.")]
IdField = Annotated[str | None, typer.Option(help="JSONL and Parquet: the field holding each document's id (default: path:N).")]
Resume = Annotated[bool, typer.Option("--resume", help="Finish an interrupted run with the documents not yet written.")]
FailOnError = Annotated[bool, typer.Option("--fail-on-error", help="Exit 1 if any document could not be scored.")]


def run_corpus(kind: str, params: dict, files: list[Path], output: Path, *, engine: str, address: str | None,
               workers: int, gpus_per_worker: float, batch_size: int, field: str, id_field: str | None,
               resume: bool, force: bool, fail_on_error: bool, json: bool) -> None:
    """Score a corpus, print its summary (stdout), exit 1 on failed rows only with --fail-on-error."""
    from tokeff.corpus.engines import EngineOptions, run_job
    from tokeff.corpus.reader import ReaderOptions
    from tokeff.corpus.scorers import JobSpec

    summary = run_job(JobSpec(kind, params), files, output, ReaderOptions(field, id_field),
                      EngineOptions(engine, batch_size, address, workers, gpus_per_worker), resume=resume, force=force)
    if json:
        console.emit_json(summary)
    else:
        table = Table(*summary)
        table.add_row(*[f"{value:.4f}" if isinstance(value, float) else str(value) for value in summary.values()])
        console.stdout.print(table)
    if fail_on_error and summary["failed"]:
        raise typer.Exit(1)
