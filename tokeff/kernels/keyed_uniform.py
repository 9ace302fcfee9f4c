"""Keyed uniforms u(word, token) in [0, 1): the random numbers every watermark key stands for.

u(word, v) is element v+1 of the SplitMix64 stream seeded with `word`: mix64(word + (v + 1) * golden),
top 53 bits. A counter-based generator gives random access, so a key of n positions is n 64-bit
words rather than an n x vocabulary matrix of floats, and detection computes only the entries
for the tokens of the text. The NumPy and Numba versions are bit-identical (tests check this).
"""

from __future__ import annotations

import numba
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)
_TO_UNIT = 2.0**-53


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def keyed_hashes(words: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The 64-bit hash behind u(word, token), for broadcast arrays of uint64 words and token ids."""
    words = np.asarray(words, dtype=np.uint64)
    tokens = np.asarray(tokens).astype(np.uint64)
    return mix64(words + (tokens + _ONE) * GOLDEN)


def keyed_uniforms(words: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """u(word, token) for broadcast arrays of uint64 words and integer token ids (float64)."""
    return (keyed_hashes(words, tokens) >> _S11).astype(np.float64) * _TO_UNIT


def stream_words(seed: int | np.uint64, start: int, count: int) -> np.ndarray:
    """`count` words of the SplitMix64 stream of `seed` from index `start` (derived keys)."""
    index = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    return mix64(np.uint64(seed) + index * GOLDEN)


@numba.njit(inline="always", cache=True)
def mix64_scalar(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(inline="always", cache=True)
def keyed_hash_scalar(word: np.uint64, token: np.uint64) -> np.uint64:
    return mix64_scalar(word + (token + _ONE) * GOLDEN)
