"""Exact byte-level probabilities from tokenized language models (the Byte-Token Representation Lemma).

`ByteLevelModel` turns a model into next-byte distributions, `ByteEnsemble` combines models with
different vocabularies byte by byte, `generate_bytes` decodes from either byte by byte,
`generate_by_tokens` decodes from one model at token speed, and
`byte_bits_per_byte` scores a text. The decode methods live in `tokeff/decoding/byte.py`.
"""

from tokeff.decoding.bytelevel.ensemble import ByteEnsemble
from tokeff.decoding.bytelevel.generate import generate_by_tokens, generate_bytes
from tokeff.decoding.bytelevel.model import ByteLevelModel
from tokeff.decoding.bytelevel.scoring import byte_bits_per_byte

__all__ = ["ByteEnsemble", "ByteLevelModel", "byte_bits_per_byte", "generate_by_tokens", "generate_bytes"]
