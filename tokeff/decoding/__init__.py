"""Online decode methods behind one registry: `tokeff decode --method NAME` looks up a class here.

The registry is imported on first use (PEP 562), not with the package: the registry pulls in torch and
transformers, and watermark detection, which lives under this package, needs neither.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DecodeMethod", "get_method", "method_names", "register"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tokeff.decoding.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
