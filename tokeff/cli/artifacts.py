"""`tokeff inspect` and `tokeff verify`: what an artifact is, and whether it is intact."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Json
from tokeff.core import console
from tokeff.core.errors import TokeffError

ArtifactPath = Annotated[Path, typer.Argument(help="An artifact folder written by tokeff.")]


def inspect(path: ArtifactPath, json: Json = False) -> None:
    """Show an artifact's manifest: what made it, from what, with which parameters and results."""
    from tokeff.core.artifacts import read_manifest

    manifest = read_manifest(path)
    if json:
        console.emit_json(manifest.to_json())
        return
    table = Table("field", "value", title=str(path), show_lines=False)
    table.add_row("kind", manifest.kind)
    table.add_row("created", f"{manifest.created} by tokeff {manifest.tokeff_version}")
    table.add_row("command", " ".join(manifest.command))
    for entry in manifest.inputs:
        table.add_row(f"input: {entry['role']}", f"{entry['spec']}  sha256 {str(entry.get('sha256'))[:16]}")
    for section, values in (("param", manifest.parameters), ("metric", manifest.metrics)):
        for key, value in values.items():
            table.add_row(f"{section}: {key}", _short(value))
    total = sum(entry["bytes"] for entry in manifest.files.values())
    table.add_row("files", f"{len(manifest.files)} files, {total:,} bytes")
    console.stdout.print(table)


def verify(path: ArtifactPath, json: Json = False) -> None:
    """Recompute hashes and check shapes; exit 1 with the first problem if anything is off."""
    from tokeff.core.artifacts import verify_artifact

    problems = verify_artifact(path)
    if json:
        console.emit_json({"path": str(path), "ok": not problems, "problems": problems})
        if problems:
            raise typer.Exit(1)
        return
    if problems:
        extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TokeffError(f"{path}: {problems[0]}{extra}")
    console.stdout.print(f"{path}: ok")


def _short(value: object) -> str:
    text = value if isinstance(value, str) else jsonlib.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."
