"""One registry type for every kind of strategy (decode methods, watermark schemes, transplant estimators).

A strategy is a class with a `name` that registers itself with `@REGISTRY.register` in its own
module; the registry imports every module of its package on first lookup, so adding a strategy
is adding one file, with no central list to edit. Importing lazily keeps `tokeff --help` from
paying for torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from tokeff.core.errors import TokeffError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind  # as users read it: "decode method", "watermark scheme"
        self.package = package  # the package whose modules hold the strategies
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, cls: T) -> T:
        name = cls.name
        if name in self._entries and self._entries[name] is not cls:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = cls
        return cls

    def _load_all(self) -> None:
        if self._loaded:
            return
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")
        self._loaded = True

    def get(self, name: str) -> T:
        self._load_all()
        if name not in self._entries:
            raise TokeffError(f"unknown {self.kind} '{name}' (available: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_all()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]
