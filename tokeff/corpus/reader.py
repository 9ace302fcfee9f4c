"""One corpus reader: text files (one document each), folders and globs of them, JSONL and Parquet.

Documents stream one at a time (constant memory). Each keeps a stable id: the --id-field value,
else `path` (text files) or `path:N` (the Nth line or row, from 1). A bad row (not UTF-8, empty,
missing field) is a document with an `error`, never an exception: one bad row must not stop a job.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tokeff.core.errors import TokeffError


@dataclass(frozen=True)
class ReaderOptions:
    field: str = "text"
    id_field: str | None = None


def document(id: str, source: str, raw: bytes | str | None, error: str | None = None) -> dict:
    """A document row: id, source (its file), text (None on error), bytes (UTF-8 size), error."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    text = None
    if error is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = f"not valid UTF-8 (byte {exc.start})"
        else:
            if not text.strip():
                error, text = "empty document", None
    return {"id": id, "source": source, "text": text, "bytes": len(raw or b""), "error": error}


def expand_sources(sources: list[Path | str]) -> list[Path]:
    """Files named, found under folders (sorted) or matched by globs; a name that matches nothing fails at once."""
    files: list[Path] = []
    for source in map(str, sources):
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not matches:
            raise TokeffError(f"{source}: no such file, folder or matching glob")
        files.extend(matches)
    return files


def read_file(path: Path, options: ReaderOptions, skip: int = 0) -> Iterator[dict]:
    """The documents of one file, after its first `skip` (those a resumed job already wrote)."""
    if path.suffix == ".jsonl":
        rows = _jsonl(path, options)
    elif path.suffix == ".parquet":
        rows = _parquet(path, options)
    else:
        rows = iter([document(str(path), str(path), path.read_bytes())])
    return islice(rows, skip, None)


def read_corpus(files: list[Path], options: ReaderOptions, skip: Mapping[str, int] | None = None) -> Iterator[dict]:
    """Every document of every file in order; `skip` maps a source to its documents already done."""
    for path in files:
        yield from read_file(path, options, (skip or {}).get(str(path), 0))


def _jsonl(path: Path, options: ReaderOptions) -> Iterator[dict]:
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue  # blank lines separate nothing in JSONL
            default_id = f"{path}:{number}"
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                yield document(default_id, str(path), line)  # the UTF-8 error, with its byte offset
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                yield document(default_id, str(path), line, "not a JSON object")
                continue
            if not isinstance(record, dict) or not isinstance(record.get(options.field), str):
                yield document(default_id, str(path), b"", f"no '{options.field}' string")
                continue
            yield document(_id(record.get(options.id_field) if options.id_field else None, default_id),
                           str(path), record[options.field])


def _parquet(path: Path, options: ReaderOptions) -> Iterator[dict]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    names = set(table.schema_arrow.names)
    if options.field not in names or (options.id_field and options.id_field not in names):
        raise TokeffError(f"{path}: no column '{options.field if options.field not in names else options.id_field}'")
    columns = [options.field] + ([options.id_field] if options.id_field else [])
    number = 0
    for batch in table.iter_batches(batch_size=1024, columns=columns):
        ids = batch.column(options.id_field).to_pylist() if options.id_field else None
        for index, value in enumerate(batch.column(options.field).to_pylist()):
            number += 1
            default_id = f"{path}:{number}"
            row_id = _id(ids[index] if ids else None, default_id)
            if value is None:
                yield document(row_id, str(path), b"", f"no '{options.field}' value")
            else:
                yield document(row_id, str(path), value)


def _id(value, default: str) -> str:
    return default if value is None else str(value)
