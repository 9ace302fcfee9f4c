"""Entry point: assembles the command groups and turns errors into one-line messages and exit codes."""

from __future__ import annotations

import os
import sys

import typer

from tokeff.cli import artifacts, decode, dynamic, ensemble, evaluate, kvquant, models, tokenizer, transplant, watermark
from tokeff.core import interrupt
from tokeff.core.errors import TokeffError

app = typer.Typer(
    name="tokeff",
    help="Model-surgery and tokenizer utilities for language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models.app, name="models")
app.add_typer(evaluate.app, name="eval")
app.add_typer(watermark.app, name="watermark")
app.add_typer(kvquant.app, name="kvquant")
app.command("inspect")(artifacts.inspect)
app.command("verify")(artifacts.verify)
app.command("decode")(decode.decode)
app.command("transplant")(transplant.transplant)
app.command("ensemble")(ensemble.ensemble)
app.add_typer(tokenizer.app, name="tokenizer")
app.command("dynamic")(dynamic.dynamic)


def _quiet_libraries() -> None:
    """Library warnings and tqdm bars would bury tokeff's own stderr output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


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
