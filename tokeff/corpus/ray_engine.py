"""Engine `ray`: Ray Data reads the corpus (one read task per file), scores it in an actor pool, streams results back.

Imported only for `--engine ray`: importing Ray costs seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
from ray.data.datasource import Datasource

from tokeff.core.errors import TokeffError
from tokeff.core.resolve import first_line
from tokeff.corpus.reader import ReaderOptions, read_file
from tokeff.corpus.scorers import JobSpec

CRASH_ONCE_ENV = "TOKEFF_TEST_ACTOR_CRASH_ONCE"  # tests: a file path; the first actor to claim it dies


class _ScoreActor:
    """Ray Data's callable class: each actor builds the scorer (loads key or model) once."""

    def __init__(self, spec: JobSpec, crash_marker: str | None = None) -> None:
        # An actor has one CPU: Ray limits its OpenMP threads to it, this the tokenizers' Rust pool (created on
        # first use, so set before the scorer is built), or each actor would tokenize on every core. Set here, not
        # as a runtime_env: Ray starts workers for a runtime_env apart from the idle ones it keeps ready.
        os.environ["RAYON_NUM_THREADS"] = "1"
        self.spec, self.scorer, self.crash_marker = spec, spec.build(), crash_marker

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.crash_marker:
            try:
                os.close(os.open(self.crash_marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)  # a worker killed mid-batch: Ray restarts the actor and retries the batch
            except FileExistsError:
                pass
        return pa.Table.from_pylist(self.scorer(batch.to_pylist()), schema=self.spec.schema)


def ray_batches(spec: JobSpec, files, reader, skip, engine) -> Iterator[pa.Table]:
    import ray
    import ray.data

    if not ray.is_initialized():
        if engine.address:
            try:
                ray.init(address=engine.address, log_to_driver=False, logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise TokeffError(f"--address {engine.address}: {first_line(exc)} (if the cluster uses Ray's token "
                                  "authentication, as `ray start` sets up by default, run with RAY_AUTH_MODE=token)") from None
        else:
            # "local": a new instance even where a cluster started by `ray start` runs here (ray.init would join it)
            ray.init(address="local", num_cpus=engine.workers + 1, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # parts must hold a prefix of each source (resume)
    context.enable_progress_bars = False
    # Reading is light: a fraction of a CPU, so the scoring actors get the cores.
    dataset = ray.data.read_datasource(CorpusDatasource(files, reader, skip, engine.batch_size), override_num_blocks=len(files), num_cpus=0.25)
    # A read task's output is buffered into blocks of up to 128 MiB, so a file of short documents arrives as one
    # block, which one actor would score alone: cut the stream into batch-sized blocks that every actor can take.
    dataset = dataset.repartition(target_num_rows_per_block=engine.batch_size)
    with warnings.catch_warnings():  # Ray deprecates these keywords but documents them as the way to set retries
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        dataset = _score(dataset, spec, engine)
    # Ray's driver prints worker deaths to stdout: while the job runs they go to stderr, stdout keeps the results.
    with contextlib.redirect_stdout(sys.stderr):
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def _score(dataset, spec: JobSpec, engine):
    import ray.data

    return dataset.map_batches(
        _ScoreActor,
        fn_constructor_kwargs={"spec": spec, "crash_marker": os.environ.get(CRASH_ONCE_ENV)},
        batch_size=engine.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=engine.workers),
        num_cpus=1,
        num_gpus=engine.gpus_per_worker or None,
        max_restarts=-1,  # a dead actor is replaced ...
        max_task_retries=-1,  # ... and its batch retried, so every document comes out exactly once
    )


class CorpusDatasource(Datasource):
    """A Ray Data datasource over the corpus reader: one read task per file, streaming its documents in blocks."""

    def __init__(self, files: list[Path], reader: ReaderOptions, skip: dict[str, int], block_rows: int = 1024) -> None:
        super().__init__()
        self.files, self.reader, self.skip, self.block_rows = files, reader, skip, block_rows

    def estimate_inmemory_data_size(self) -> int:
        return sum(path.stat().st_size for path in self.files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        def read(path: Path):
            documents = read_file(path, self.reader, self.skip.get(str(path), 0))
            while rows := list(islice(documents, self.block_rows)):
                yield pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)

        return [ReadTask(lambda path=path: read(path),
                         BlockMetadata(num_rows=None, size_bytes=path.stat().st_size, input_files=(str(path),),
                                       exec_stats=None))
                for path in self.files]


DOCUMENT_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                             ("bytes", pa.int64()), ("error", pa.string())])
