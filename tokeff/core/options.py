"""Typed options that a strategy (decode method, watermark scheme, transplant estimator) declares once.

A strategy lists its `Option`s; from that one declaration come its defaults, the validation of
values from any source (CLI flags, `-o key=value`, a key file) with one wording of every error,
the CLI flags themselves (`cli_parameters`) and the help listing. Nothing else repeats an
option's name, type, bounds or default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from tokeff.core.errors import TokeffError

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Option:
    """One option: its name (snake_case), type, default (None: unset, the strategy decides), bounds, help."""

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False  # min itself is not allowed: (0, 1) rather than [0, 1]
    max_exclusive: bool = False
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()  # older flag spellings the CLI still accepts ("--length" for --key-length)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = _TYPE_NAMES[self.type]
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_exclusive else "[", ")" if self.max_exclusive else "]"
            return f"{what} in {left}{_num(self.min)}, {_num(self.max)}{right}"
        if self.min is not None:
            return f"{what} {'>' if self.min_exclusive else '>='} {_num(self.min)}"
        if self.max is not None:
            return f"{what} {'<' if self.max_exclusive else '<='} {_num(self.max)}"
        return what

    def parse(self, raw: str, label: str | None = None) -> Any:
        """A value from text (`-o key=value`, a config file); then `check` applies."""
        try:
            if self.type is bool:
                lowered = raw.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                return lowered in ("true", "1", "yes")
            return self.type(raw)
        except ValueError:
            raise TokeffError(f"{label or self.flag} must be {self.bounds_text()}, got {raw!r}") from None

    def check(self, value: Any, label: str | None = None) -> Any:
        """The value, converted to the option's type, or a one-line TokeffError naming the bounds.

        `label` is how the error names the option (default: its flag; a stored file names its key).
        """
        label = label or self.flag
        if value is None:
            return None
        if isinstance(value, str) and self.type is not str:
            value = self.parse(value, label)
        ok = self._typed(value)
        if ok is None:
            raise TokeffError(f"{label} must be {self.bounds_text()}, got {value!r}")
        value = ok
        if self.choices and value not in self.choices:
            raise TokeffError(f"{label} must be {self.bounds_text()}, got {value!r}")
        if self.type in (int, float):
            low = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
            high = self.max is not None and (value >= self.max if self.max_exclusive else value > self.max)
            if low or high:
                raise TokeffError(f"{label} must be {self.bounds_text()}, got {_num(value)}")
        return value

    def _typed(self, value: Any) -> Any:
        if self.type is bool:
            return value if isinstance(value, bool) else None
        if isinstance(value, bool):  # True is an int to Python, never to a user
            return None
        if self.type is int:
            return value if isinstance(value, int) else None
        if self.type is float:
            return float(value) if isinstance(value, (int, float)) else None
        return value if isinstance(value, self.type) else None


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def resolve(
    options: Sequence[Option], given: Mapping[str, Any], owner: str, label: Callable[[Option], str] | None = None
) -> dict[str, Any]:
    """Every option's value: the given ones checked, the rest at their defaults.

    A given name the strategy does not declare is an error naming the flag and the owner
    (`--ngram does not apply to --method sink`), so a stray flag is never silently ignored.
    `label` names an option in value errors (default: its flag).
    """
    by_name = {option.name: option for option in options}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise TokeffError(f"{flags} does not apply to {owner}")
    values = {option.name: option.default for option in options}
    for name, value in given.items():
        option = by_name[name]
        values[name] = option.check(value, label(option) if label else None)
    return values


def parse_assignments(pairs: Iterable[str], options: Sequence[Option]) -> dict[str, Any]:
    """`-o key=value` pairs (key in snake_case or as its flag spelling) parsed by each option's type."""
    by_name = {option.name: option for option in options}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise TokeffError(f"-o takes key=value, got {pair!r}")
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise TokeffError(f"unknown option '{name}' (options here: {known})")
        values[name] = by_name[name].parse(raw)
    return values


def given_options(flags: Mapping[str, Any], pairs: Iterable[str], options: Sequence[Option], via: str) -> dict[str, Any]:
    """The options a user set: generated flags that were given (not None) and `via` KEY=VALUE pairs;
    an option set both ways is an error."""
    given = {name: value for name, value in flags.items() if value is not None}
    assigned = parse_assignments(pairs, options)
    twice = sorted(set(assigned) & set(given))
    if twice:
        raise TokeffError(f"--{twice[0].replace('_', '-')} is given both as a flag and with {via}")
    return {**given, **assigned}


def describe(options: Sequence[Option]) -> str:
    """One line per option for listings: flag, default and help."""
    return "\n".join(f"  {o.flag} ({o.bounds_text()}; default {o.default}): {o.help}" for o in options)


def cli_parameters(owners: Mapping[str, Sequence[Option]], owner_label: str) -> list[inspect.Parameter]:
    """Keyword parameters for a Typer command: one flag per option name across all strategies.

    Strategies that share a name (sink's and h2o's `--window`) share the flag; its help names each
    owner's meaning. Every flag defaults to None, so the command passes on only the flags a user
    gave, and `resolve` rejects one that does not apply to the chosen strategy.
    """
    import typer

    merged: dict[str, list[tuple[str, Option]]] = {}
    for owner, options in owners.items():
        for option in options:
            merged.setdefault(option.name, []).append((owner, option))
    parameters = []
    for name, uses in sorted(merged.items()):
        types = {option.type for _, option in uses}
        if len(types) != 1:
            raise TypeError(f"option {name} is declared with different types: {types}")
        kind = types.pop()
        flags = [f"--{name.replace('_', '-')}", *sorted({alias for _, option in uses for alias in option.aliases})]
        text = "; ".join(f"{owner}: {option.help} (default {option.default})" for owner, option in uses)
        if kind is bool:
            annotation = Annotated[bool | None, typer.Option(*flags, help=text)]
        else:
            annotation = Annotated[kind | None, typer.Option(*flags, help=f"{owner_label} {text}")]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return parameters


def with_cli_parameters(parameters: Sequence[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Decorate a Typer command taking `**options` so Typer also sees `parameters` (from `cli_parameters`)."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        function.__signature__ = signature.replace(parameters=[*fixed, *parameters])
        return function

    return decorate
