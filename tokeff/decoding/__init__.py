"""Online decode methods behind one registry: `tokeff decode --method NAME` looks up a class here."""

from tokeff.decoding.registry import DecodeMethod, get_method, method_names, register

__all__ = ["DecodeMethod", "get_method", "method_names", "register"]
