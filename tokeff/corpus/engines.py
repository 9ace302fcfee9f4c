"""The two engines: `local` (batches in this process) and `ray` (Ray Data: read, actor-pool map_batches).

Both stream documents and hand result batches, in corpus order, to the same PartWriter, so their
output and summary are the same and `--resume` works for both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.corpus.output import PartWriter, Summary
from tokeff.corpus.reader import ReaderOptions, expand_sources, read_corpus
from tokeff.corpus.scorers import JobSpec

@dataclass(frozen=True)
class EngineOptions:
    engine: str = "local"
    batch_size: int = 64
    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0


def run_job(spec: JobSpec, sources: list[Path], output: Path, reader: ReaderOptions, engine: EngineOptions,
            resume: bool = False, force: bool = False) -> dict:
    """Score every document of the corpus into `output`; returns the summary (JSON-ready)."""
    if engine.engine not in ("local", "ray"):
        raise TokeffError(f"--engine must be local or ray, got {engine.engine!r}")
    if engine.batch_size < 1 or engine.workers < 1 or engine.gpus_per_worker < 0:
        raise TokeffError("--batch-size and --workers must be >= 1, --gpus-per-worker >= 0")
    files = expand_sources(sources)
    spec.check()
    job = {"kind": spec.kind, "params": {k: str(v) for k, v in spec.params.items()},
           "files": [str(f) for f in files], "field": reader.field, "id_field": reader.id_field}
    writer = PartWriter(output, spec.schema, job, resume=resume, force=force)
    if writer.resumed_rows:
        console.info(f"resuming: {writer.resumed_rows:,} documents already written in {writer.parts} parts")
    started = time.perf_counter()
    if engine.engine == "local":
        batches = _local_batches
    else:
        from tokeff.corpus.ray_engine import ray_batches as batches
    total_bytes = sum(path.stat().st_size for path in files)
    # Start-up (the engine, the model or key loaded in each worker) ends when as many batches as workers have
    # arrived, each worker's first when they start together: (seconds, documents) then. Ending it at the first
    # batch would count the other workers' first batches, scored during start-up, as steady work.
    startup, arrived, first_batches = None, 0, engine.workers if engine.engine == "ray" else 1
    with console.progress() as bar:
        task = bar.add_task("documents", total=total_bytes, docs=writer.resumed_rows)
        for table in batches(spec, files, reader, dict(writer.done), engine):
            writer.write(table)
            arrived += table.num_rows
            first_batches -= 1
            if first_batches == 0:
                startup = (time.perf_counter() - started, arrived)
            bar.update(task, advance=sum(table.column("bytes").to_pylist()), docs=bar.tasks[task].fields["docs"] + table.num_rows)
    summary: Summary = writer.finish()
    seconds = time.perf_counter() - started
    payload = {"output": str(output), "engine": engine.engine, **summary.to_json(spec.params.get("alpha")),
               "seconds": seconds}
    if startup:
        # The rate after start-up is what a long job runs at: start-up is paid once per job.
        later = summary.documents - writer.resumed_rows - startup[1]
        payload.update(startup_seconds=startup[0],
                       steady_docs_per_s=later / (seconds - startup[0]) if later and seconds > startup[0] else None)
    return payload


def _local_batches(spec: JobSpec, files, reader, skip, engine) -> Iterator[pa.Table]:
    scorer = spec.build()
    documents = read_corpus(files, reader, skip)
    while batch := list(islice(documents, engine.batch_size)):
        yield pa.Table.from_pylist(scorer(batch), schema=spec.schema)
