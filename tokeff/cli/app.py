"""Entry point: the command table (each command's module imported only when it runs, so `tokeff --help`
and every command start without loading the others' libraries), errors as one-line messages and exit codes."""

from __future__ import annotations

import importlib
import os
import sys

import click
import typer
from typer.core import TyperGroup

from tokeff.core import interrupt
from tokeff.core.errors import TokeffError

# name: (module in tokeff.cli, attribute: a Typer group or a command function, one-line help for listings)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("artifacts", "inspect", "Show an artifact's manifest: what made it, from what, with which parameters and results."),
    "verify": ("artifacts", "verify", "Recompute hashes and check shapes; exit 1 with the first problem if anything is off."),
    "decode": ("decode", "decode", "Stream a continuation with any decode method (`tokeff decode --list-methods`)."),
    "transplant": ("transplant", "transplant", "Give a model another model's tokenizer: new tokens' rows estimated from shared ones."),
    "ensemble": ("ensemble", "ensemble", "Generate from models with different vocabularies, combined byte by byte."),
    "dynamic": ("dynamic", "dynamic", "Dynamic tokenization of a text batch: length reduction and bits-per-byte cost."),
    "models": ("models", "app", "List, install and describe models."),
    "eval": ("evaluate", "app", "Measure models."),
    "watermark": ("watermark", "app", "Watermark generated text and detect it."),
    "kvquant": ("kvquant", "app", "Calibrated KV-cache quantization (KVQuant)."),
    "tokenizer": ("tokenizer", "app", "Train and compare tokenizers."),
}


class LazyCommands(TyperGroup):
    """A group that builds a command from its module only when that command is looked up to run.

    Listing the commands in `--help` uses the table's one-line help instead, so it imports nothing.
    """

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, summary = COMMANDS[name]
        if self._listing:
            return click.Command(name, short_help=summary)
        target = getattr(importlib.import_module(f"tokeff.cli.{module}"), attribute)
        if isinstance(target, typer.Typer):
            command = typer.main.get_group(target)  # a group even with one subcommand (`eval bpb`)
        else:
            single = typer.Typer(add_completion=False)
            single.command(name)(target)
            command = typer.main.get_command(single)
        command.name = name
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="tokeff",
    cls=LazyCommands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def tokeff() -> None:
    """Model-surgery and tokenizer utilities for language models."""


def _quiet_libraries() -> None:
    """Library warnings and tqdm bars would bury tokeff's own stderr output (environment variables, read
    when transformers and huggingface_hub are imported, so that nothing is imported here)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"tokeff: error: {message}\n")
    sys.exit(code)


def _interrupted() -> None:
    """Ctrl-C: no partial output left behind, exit 130 without waiting for the command's thread."""
    interrupt.remove_partials()
    os.write(2, b"tokeff: error: interrupted\n")  # not sys.stderr: the worker may hold its lock
    os._exit(130)  # a normal exit would wait on (or tear down under) a worker still in native code


def main() -> None:
    try:
        _quiet_libraries()
        # In a worker thread, so that Ctrl-C stops even a long native call (see core/interrupt.py);
        # standalone mode: Typer reports usage errors itself and exits 2.
        interrupt.run_in_worker(app)
    except TokeffError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _interrupted()
    except MemoryError:
        _fail("out of memory", 1)
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get("TOKEFF_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set TOKEFF_DEBUG=1 for a traceback)", 1)
