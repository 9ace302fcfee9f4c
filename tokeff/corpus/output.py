"""Job output: numbered parts renamed into place as each completes, resume from them, the final file, the summary.

A run writes `OUT.parts/part-NNNNNN.parquet` (plus `job.json`, what the job computes). Parts hold a
prefix of each source's documents, so a resumed run skips, per source, exactly the rows already in
parts: no document lost, none twice. When the corpus is done the parts are joined into OUT
(.parquet or .jsonl, via a temporary sibling and a rename) and the parts folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokeff.core.errors import TokeffError

SUFFIXES = (".parquet", ".jsonl")


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


class PartWriter:
    def __init__(self, output: Path, schema: pa.Schema, job: dict, resume: bool, force: bool) -> None:
        """Check the output path (fails before anything is written), then open or resume the parts folder."""
        if output.suffix not in SUFFIXES:
            raise TokeffError(f"{output}: the output must end in .parquet or .jsonl")
        if output.exists() and not force:
            raise TokeffError(f"{output} already exists (use --force to replace it)")
        parent = output.parent if str(output.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise TokeffError(f"{output}: cannot write into {parent}")
        self.output, self.schema, self.folder = output, schema, parts_folder(output)
        self.done: Counter[str] = Counter()
        self.parts = 0
        if self.folder.exists():
            if not resume:
                raise TokeffError(f"{self.folder} holds an interrupted run: pass --resume to finish it, or remove it")
            if json.loads((self.folder / "job.json").read_text()) != job:
                raise TokeffError(f"{self.folder} was written by a different job; remove it to start again")
            for part in self._part_files():
                sources = pq.read_table(part, columns=["source"]).column("source").to_pylist()
                self.done.update(sources)
                self.parts += 1
        else:
            self.folder.mkdir()
            (self.folder / "job.json").write_text(json.dumps(job, sort_keys=True))

    @property
    def resumed_rows(self) -> int:
        return sum(self.done.values())

    def write(self, rows: list[dict] | pa.Table) -> None:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=self.schema)
        if table.num_rows == 0:
            return
        final = self.folder / f"part-{self.parts:06d}.parquet"
        temporary = self.folder / f".{final.name}.partial"
        pq.write_table(table.select(self.schema.names).cast(self.schema), temporary)
        os.replace(temporary, final)  # a killed run leaves only whole parts
        self.parts += 1

    def finish(self) -> "Summary":
        """Join the parts into the output file, summarizing as they stream past, and remove the parts."""
        summary = Summary("bpb" if "bits" in self.schema.names else "watermark")
        handle, temporary = tempfile.mkstemp(prefix=f".{self.output.name}.partial-", dir=self.output.parent)
        os.close(handle)
        try:
            if self.output.suffix == ".parquet":
                with pq.ParquetWriter(temporary, self.schema) as writer:
                    for table in self._tables():
                        summary.add(table)
                        writer.write_table(table)
            else:
                with open(temporary, "w", encoding="utf-8") as stream:
                    for table in self._tables():
                        summary.add(table)
                        stream.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
            os.replace(temporary, self.output)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        shutil.rmtree(self.folder)
        return summary

    def _tables(self):
        for part in self._part_files():
            yield pq.read_table(part).cast(self.schema)

    def _part_files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))


class Summary:
    """Corpus totals: bits per byte is total bits over total bytes of the scored documents, never a mean of ratios."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.documents = self.failed = self.bytes = self.tokens = 0
        self.bits = 0.0
        self.p_values: list[float] = []

    def add(self, table: pa.Table) -> None:
        rows = table.select([name for name in ("bytes", "tokens", "bits", "p_value", "error") if name in table.schema.names])
        for row in rows.to_pylist():
            self.documents += 1
            if row["error"] is not None:
                self.failed += 1
                continue
            self.bytes += row["bytes"]
            self.tokens += row["tokens"]
            if self.kind == "bpb":
                self.bits += row["bits"]
            else:
                self.p_values.append(row["p_value"])

    def to_json(self, alpha: float | None = None) -> dict:
        payload = {"documents": self.documents, "failed": self.failed, "bytes": self.bytes, "tokens": self.tokens}
        if self.kind == "bpb":
            payload.update(bits=self.bits, bpb=self.bits / self.bytes if self.bytes else None)
        else:
            from scipy.stats import false_discovery_control

            adjusted = false_discovery_control(self.p_values, method="bh") if self.p_values else []
            payload.update(alpha=alpha, detections=sum(p <= alpha for p in self.p_values),
                           detections_bh=int(sum(q <= alpha for q in adjusted)))
        return payload
