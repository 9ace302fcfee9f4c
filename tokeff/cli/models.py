"""`tokeff models list|pull|info`: the built-in models and what any model argument resolves to."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli.options import Json
from tokeff.core import console
from tokeff.core.builtin_models import BUILTINS
from tokeff.core.errors import TokeffError

app = typer.Typer(help="List, install and describe models.", no_args_is_help=True)


@app.command("list")
def list_models(json: Json = False) -> None:
    """Show the built-in models, whether they are installed and converted."""
    from tokeff.core.artifacts import is_artifact
    from tokeff.core.resolve import cached_folder

    rows = [
        {
            "name": model.name,
            "description": model.description,
            "package": model.requirement,
            "installed": model.installed(),
            "converted": is_artifact(cached_folder(model)),
            "cache": str(cached_folder(model)),
        }
        for model in BUILTINS.values()
    ]
    if json:
        console.emit_json(rows)
        return
    table = Table("name", "installed", "converted", "package", "description")
    for row in rows:
        table.add_row(row["name"], _yes(row["installed"]), _yes(row["converted"]), row["package"], row["description"])
    console.stdout.print(table)


@app.command()
def pull(
    names: Annotated[list[str] | None, typer.Argument(help="Built-in model names.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every built-in model.")] = False,
    json: Json = False,
) -> None:
    """Install built-in models from PyPI and convert them once into the cache."""
    from tokeff.core.resolve import model_folder

    wanted = list(BUILTINS) if all_models else (names or [])
    if not wanted:
        raise TokeffError("name a built-in model or pass --all")
    unknown = [name for name in wanted if name not in BUILTINS]
    if unknown:
        raise TokeffError(f"unknown built-in model '{unknown[0]}' (built-ins: {', '.join(BUILTINS)})")
    results = []
    for name in wanted:
        model = BUILTINS[name]
        if not model.installed():
            console.info(f"installing {model.requirement}")
            command = [sys.executable, "-m", "pip", "install", "-q", *model.pip_args, model.requirement]
            if subprocess.run(command, stdout=sys.stderr).returncode != 0:
                raise TokeffError(f"pip could not install {model.requirement}")
        results.append({"name": name, "folder": str(model_folder(name))})
    if json:
        console.emit_json(results)
    else:
        for result in results:
            console.stdout.print(f"{result['name']}\t{result['folder']}")


@app.command()
def info(model: Annotated[str, typer.Argument(help="Built-in name, .gguf file, folder or hub id.")], json: Json = False) -> None:
    """Architecture, vocabulary size, tied embeddings and parameter count of a model."""
    from tokeff.core.models import describe_model

    facts = describe_model(model)
    if json:
        console.emit_json(facts)
        return
    table = Table("property", "value", title=model)
    for key, value in facts.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    console.stdout.print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
