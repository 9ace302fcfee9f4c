"""Helpers shared by test modules (test files never import each other)."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, check: int | None = None) -> CliResult:
    """The one CLI harness: run `tokeff ARGS` in-process through the real entry point (its error
    mapping and exit codes included) and capture stdout and stderr."""
    from tokeff.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["tokeff", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    result = CliResult(code, out.getvalue(), err.getvalue())
    assert "Traceback" not in result.stderr, result.stderr
    if check is not None:
        assert result.returncode == check, result.stderr
    return result
