"""The `kgw` scheme (Kirchenbauer et al.): a green list seeded by the previous tokens gets a logit bias.

Token v is green after context c (the previous `context_width` tokens) when u(word(c), v) <
green_fraction, where word(c) chains the key word through the context tokens. Deciding each
(context, token) pair by its own uniform, rather than by cutting a permutation of the vocabulary,
makes the pairs independent Bernoulli(green_fraction) under the null, so that the binomial tail is
exact. Detection counts each distinct (context, token) pair once: a repeated phrase is one piece
of evidence, not many, and counting it again would break the binomial null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.kernels.keyed_uniform import GOLDEN, keyed_uniforms, mix64


def context_words(key: WatermarkKey, contexts: np.ndarray) -> np.ndarray:
    """The green-list seed of each context row (int array [..., context_width])."""
    contexts = np.asarray(contexts).astype(np.uint64)
    words = np.full(contexts.shape[:-1], key.words[0], dtype=np.uint64)
    for column in range(contexts.shape[-1]):
        words = mix64(words + (contexts[..., column] + np.uint64(1)) * GOLDEN)
    return words


def green_mask(key: WatermarkKey, contexts: np.ndarray, vocab_size: int) -> np.ndarray:
    """Boolean [rows, vocab_size]: which tokens are green after each context row."""
    words = context_words(key, contexts)
    return keyed_uniforms(words[:, None], np.arange(vocab_size)[None, :]) < key["green_fraction"]


@dataclass
class KgwScore:
    statistic: float  # z-score of the green count (for reading; the p-value is the exact tail)
    p_value: float
    scored: int  # distinct (context, token) pairs
    green: int


def score_tokens(key: WatermarkKey, tokens: np.ndarray) -> KgwScore:
    width, fraction = key["context_width"], key["green_fraction"]
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) <= width:
        return KgwScore(0.0, 1.0, 0, 0)
    contexts = np.lib.stride_tricks.sliding_window_view(tokens[:-1], width)
    targets = tokens[width:]
    words = context_words(key, contexts)
    pairs = np.unique(np.stack([words, targets.astype(np.uint64)], axis=1), axis=0)
    green = int((keyed_uniforms(pairs[:, 0], pairs[:, 1]) < fraction).sum())
    scored = len(pairs)
    z = (green - fraction * scored) / np.sqrt(scored * fraction * (1 - fraction))
    return KgwScore(float(z), float(binom.sf(green - 1, scored, fraction)), scored, green)
