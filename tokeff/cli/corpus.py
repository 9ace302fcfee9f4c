"""Running and printing the corpus mode of `tokeff watermark detect` and `tokeff eval bpb` (with -o)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tokeff.cli.options import CorpusArgs
from tokeff.core import console


def run_corpus(kind: str, params: dict, files: list[Path], args: CorpusArgs, json: bool) -> None:
    """Score a corpus, print its summary (stdout), exit 1 on failed rows only with --fail-on-error."""
    from tokeff.corpus.engines import EngineOptions, run_job
    from tokeff.corpus.reader import ReaderOptions
    from tokeff.corpus.scorers import JobSpec

    summary = run_job(JobSpec(kind, params), files, args.output, ReaderOptions(args.field, args.id_field),
                      EngineOptions(args.engine, args.batch_size, args.address, args.workers, args.gpus_per_worker),
                      resume=args.resume, force=args.force)
    if json:
        console.emit_json(summary)
    else:
        table = Table(*summary)
        table.add_row(*[f"{value:.4f}" if isinstance(value, float) else str(value) for value in summary.values()])
        console.stdout.print(table)
    if args.fail_on_error and summary["failed"]:
        raise typer.Exit(1)
