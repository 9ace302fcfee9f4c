"""Reading the texts and prompts watermark commands take: plain files or JSONL (what `generate` writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokeff.core.errors import TokeffError
from tokeff.core.textio import read_text


def read_records(path: Path, field: str, lines: bool) -> list[tuple[str, str]]:
    """(source, text) pairs: each JSONL line's `field`, else each non-empty line (`lines`) or the whole file.

    `-` reads standard input as one text.
    """
    if str(path) == "-":
        return [("-", sys.stdin.read())]
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[field]
            except (json.JSONDecodeError, TypeError, KeyError):
                raise TokeffError(f"{path}:{number}: expected a JSON object with a '{field}' string") from None
            if not isinstance(value, str):
                raise TokeffError(f"{path}:{number}: '{field}' must be a string")
            records.append((f"{path}:{number}", value))
        return records
    text = read_text(path)
    if not lines:
        return [(str(path), text)]
    return [(f"{path}:{number}", line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
