"""The decode-method registry and the base class every method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.decoding.types import DecodeConfig, DecodeResult, Prompt, TextCallback

_METHODS: dict[str, type[DecodeMethod]] = {}



class DecodeMethod(ABC):
    """One way of generating a continuation. Subclasses set `name` and register with `@register`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lossless: ClassVar[bool] = True  # output equals plain decoding of the same model
    default_temperature: ClassVar[float] = 0.0  # used when --temperature is not given
    options: ClassVar[dict[str, Any]] = {}  # option name -> default, accepted from the CLI

    def __init__(self, lm: LoadedModel, config: DecodeConfig, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            raise TokeffError(f"{flags} does not apply to --method {self.name}")
        self.lm = lm
        self.config = config
        self.opts = {**self.options, **options}

    @classmethod
    def parse_options(cls, pairs: list[str]) -> dict[str, Any]:
        """KEY=VALUE strings from the command line, typed like the option's default."""
        parsed: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in cls.options:
                known = ", ".join(cls.options) or "none"
                raise TokeffError(f"--option {pair!r}: expected KEY=VALUE with KEY one of --method {cls.name}'s options ({known})")
            parsed[key] = _typed(raw.strip(), cls.options[key], pair)
        return parsed

    @abstractmethod
    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        """Generate up to `config.max_new_tokens` tokens after the prompt, streaming text to `on_text`."""


def _typed(raw: str, default: Any, pair: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        return type(default)(raw) if default is not None else raw
    except ValueError:
        raise TokeffError(f"--option {pair!r}: {raw!r} is not a valid {type(default).__name__}") from None


def register(cls: type[DecodeMethod]) -> type[DecodeMethod]:
    if cls.name in _METHODS:
        raise ValueError(f"decode method '{cls.name}' registered twice")
    _METHODS[cls.name] = cls
    return cls


def _load_all() -> None:
    """Import every module of this package once, so each method registers itself (no central list to edit).

    Done on first lookup rather than at import, so `tokeff --help` does not pay for torch.
    """
    import importlib
    import pkgutil

    import tokeff.decoding as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def get_method(name: str) -> type[DecodeMethod]:
    _load_all()
    if name not in _METHODS:
        raise TokeffError(f"unknown decode method '{name}' (available: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def method_names() -> list[str]:
    _load_all()
    return sorted(_METHODS)
