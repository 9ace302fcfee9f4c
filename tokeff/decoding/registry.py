"""The decode-method registry and the base class every method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from tokeff.core.models import LoadedModel
from tokeff.core.options import Option, resolve
from tokeff.core.registry import Registry
from tokeff.decoding.types import DecodeConfig, DecodeResult, Prompt, TextCallback

METHODS: Registry[type[DecodeMethod]] = Registry("decode method", "tokeff.decoding")


class DecodeMethod(ABC):
    """One way of generating a continuation. Subclasses set `name` and register with `@register`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lossless: ClassVar[bool] = True  # output equals plain decoding of the same model
    default_temperature: ClassVar[float] = 0.0  # used when --temperature is not given
    options: ClassVar[tuple[Option, ...]] = ()  # everything a user can set on this method (CLI flags, -o)

    def __init__(self, lm: LoadedModel, config: DecodeConfig, **options: Any) -> None:
        self.opts = self.resolve_options(options)
        self.lm = lm
        self.config = config

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Every option's value, the given ones checked against their specs (callable before any model loads)."""
        return resolve(cls.options, given, f"--method {getattr(cls, 'name', cls.__name__)}")  # bases run inside other methods

    @abstractmethod
    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        """Generate up to `config.max_new_tokens` tokens after the prompt, streaming text to `on_text`."""


register = METHODS.register
get_method = METHODS.get


def method_names() -> list[str]:
    return METHODS.names()
