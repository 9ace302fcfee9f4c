"""tokeff: model-surgery and tokenizer utilities for language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokeff")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
