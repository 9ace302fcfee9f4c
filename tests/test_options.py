"""Typed option specs (tokeff/core/options.py): bounds, types, unknown names, `-o` parsing, CLI flags."""

import inspect

import pytest
import typer
from typer.testing import CliRunner

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option, cli_parameters, describe, parse_assignments, resolve

NGRAM = Option("ngram", int, 3, "longest n-gram", min=1)
MASS = Option("mass", float, 1.0, "nucleus mass", min=0, max=1, min_exclusive=True)
WORDS = Option("across_words", bool, False, "cross words")
EMBEDDING = Option("embedding", str, "mean", "how", choices=("mean", "last"))
SPECS = (NGRAM, MASS, WORDS, EMBEDDING)


def test_bounds_and_types():
    assert NGRAM.check(1) == 1 and MASS.check(1) == 1.0 and isinstance(MASS.check(1), float)
    with pytest.raises(TokeffError, match=r"^--ngram must be an integer >= 1, got 0$"):
        NGRAM.check(0)
    with pytest.raises(TokeffError, match=r"^--mass must be a number in \(0, 1\], got 0$"):
        MASS.check(0)
    with pytest.raises(TokeffError, match=r"--mass must be a number in \(0, 1\], got 1.5"):
        MASS.check(1.5)
    with pytest.raises(TokeffError, match="--ngram must be an integer"):
        NGRAM.check(2.5)
    with pytest.raises(TokeffError, match="--ngram must be an integer"):
        NGRAM.check(True)  # a bool is an int to Python, never to a user
    with pytest.raises(TokeffError, match="--embedding must be one of mean, last, got 'first'"):
        EMBEDDING.check("first")
    assert NGRAM.check("4") == 4 and WORDS.check("yes") is True


def test_resolve_fills_defaults_and_rejects_unknown_names():
    assert resolve(SPECS, {"ngram": 5}, "--method x") == {"ngram": 5, "mass": 1.0, "across_words": False, "embedding": "mean"}
    with pytest.raises(TokeffError, match=r"^--tree-size does not apply to --method lookup$"):
        resolve(SPECS, {"tree_size": 4}, "--method lookup")


def test_parse_assignments():
    assert parse_assignments(["ngram=4", "--across-words=true", "mass=0.5"], SPECS) == {
        "ngram": 4, "across_words": True, "mass": 0.5}
    with pytest.raises(TokeffError, match="-o takes key=value"):
        parse_assignments(["ngram"], SPECS)
    with pytest.raises(TokeffError, match="unknown option 'window'"):
        parse_assignments(["window=3"], SPECS)
    with pytest.raises(TokeffError, match="--ngram must be an integer >= 1, got 'three'"):
        parse_assignments(["ngram=three"], SPECS)
    with pytest.raises(TokeffError, match="--across-words must be true or false"):
        parse_assignments(["across_words=maybe"], SPECS)


def test_describe_lists_flag_bounds_default_and_help():
    assert describe((NGRAM,)) == "  --ngram (an integer >= 1; default 3): longest n-gram"


def _command(owners):
    seen = {}

    def command(**given):
        seen.update({name: value for name, value in given.items() if value is not None})

    command.__signature__ = inspect.Signature(cli_parameters(owners, "--method"))
    app = typer.Typer()
    app.command()(command)
    return app, seen


def test_cli_flags_come_from_the_specs_and_shared_names_merge():
    sink = (Option("window", int, 1020, "recent tokens kept", min=1),)
    h2o = (Option("window", int, None, "recent part of the budget", min=1), Option("kv_budget", int, 512, "kept", min=2))
    app, seen = _command({"sink": sink, "h2o": h2o, "dynamic": (WORDS,)})
    runner = CliRunner()
    result = runner.invoke(app, ["--window", "8", "--kv-budget", "16", "--across-words"])
    assert result.exit_code == 0, result.output
    assert seen == {"window": 8, "kv_budget": 16, "across_words": True}
    seen.clear()
    assert runner.invoke(app, []).exit_code == 0 and seen == {}  # flags not given stay unset
    assert runner.invoke(app, ["--window", "x"]).exit_code == 2  # typed by the spec
    names = [parameter.name for parameter in cli_parameters({"sink": sink, "h2o": h2o}, "--method")]
    assert names == ["kv_budget", "window"]  # one --window for both owners
    with pytest.raises(TypeError, match="different types"):
        cli_parameters({"a": (Option("n", int, 1, "x"),), "b": (Option("n", str, "1", "y"),)}, "--method")
