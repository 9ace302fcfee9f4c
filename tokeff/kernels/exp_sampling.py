"""Exponential-minimum sampling: the token argmax_v log(u(word, v)) / p_v of each row of probabilities.

This is the per-step cost of `exp` generation: one keyed uniform and one logarithm per vocabulary
entry (262k on gemma3). `exp_choice_numpy` is the reference; the Numba kernel computes the same
hashes and keeps the running maximum, without the vocabulary-sized temporaries, and skips the
logarithm wherever the bound log(u) <= u - 1 already puts the token below the best so far (most of
the vocabulary, whose probabilities are tiny), which leaves the chosen token unchanged.
"""

from __future__ import annotations

import numba
import numpy as np

from tokeff.kernels.keyed_uniform import _S11, _TO_UNIT, keyed_hash_scalar, keyed_uniforms


def exp_choice_numpy(probs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Reference: the token of each row [rows, vocab] under its key word (uint64 [rows])."""
    probs = np.asarray(probs, dtype=np.float64)
    vocab = np.arange(probs.shape[-1])
    tokens = np.empty(len(probs), dtype=np.int64)
    for row, (p, word) in enumerate(zip(probs, np.asarray(words, dtype=np.uint64))):  # one row: bounded memory
        with np.errstate(divide="ignore", over="ignore"):  # log(u) / tiny p -> -inf: never chosen
            ranks = np.where(p > 0, np.log(keyed_uniforms(word, vocab)) / np.where(p > 0, p, 1.0), -np.inf)
        tokens[row] = int(ranks.argmax())
    return tokens


@numba.njit(cache=True)
def _exp_choice(probs, words, tokens):
    for row in range(probs.shape[0]):
        best, chosen = -np.inf, 0
        for v in range(probs.shape[1]):
            p = probs[row, v]
            if p > 0:
                u = np.float64(keyed_hash_scalar(words[row], np.uint64(v)) >> _S11) * _TO_UNIT
                if (u - 1.0) / p > best:
                    rank = np.log(u) / p
                    if rank > best:
                        best, chosen = rank, v
        tokens[row] = chosen


def exp_choice(probs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """The token of each row [rows, vocab] under its key word (uint64 [rows]) -> int64 [rows]."""
    probs = np.ascontiguousarray(probs, dtype=np.float64)
    words = np.ascontiguousarray(words, dtype=np.uint64)
    tokens = np.empty(len(probs), dtype=np.int64)
    _exp_choice(probs, words, tokens)
    return tokens
