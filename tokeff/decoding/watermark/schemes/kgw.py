"""The `kgw` scheme (Kirchenbauer et al.): a green list seeded by the previous tokens gets a logit bias.

Token v is green after context c (the previous `context_width` tokens) when u(word(c), v) <
green_fraction, where word(c) chains the key word through the context tokens. Deciding each
(context, token) pair by its own uniform, rather than by cutting a permutation of the vocabulary,
makes the pairs independent Bernoulli(green_fraction) under the null, so that the binomial tail is
exact. Detection counts each distinct (context, token) pair once: a repeated phrase is one piece
of evidence, not many, and counting it again would break the binomial null.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import binom
from transformers import LogitsProcessor

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.scheme import MIN_TOKENS, SCHEMES, Score, WatermarkScheme
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


def score_tokens(key: WatermarkKey, tokens: np.ndarray) -> Score:
    """z-score of the green count (for reading; the p-value is the exact binomial tail) over distinct pairs."""
    width, fraction = key["context_width"], key["green_fraction"]
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) <= width:
        return Score(0.0, 1.0, 1.0, {"scored_pairs": 0, "green": 0})
    contexts = np.lib.stride_tricks.sliding_window_view(tokens[:-1], width)
    targets = tokens[width:]
    words = context_words(key, contexts)
    pairs = np.unique(np.stack([words, targets.astype(np.uint64)], axis=1), axis=0)
    green = int((keyed_uniforms(pairs[:, 0], pairs[:, 1]) < fraction).sum())
    scored = len(pairs)
    z = (green - fraction * scored) / np.sqrt(scored * fraction * (1 - fraction))
    p_value = float(binom.sf(green - 1, scored, fraction))
    return Score(float(z), p_value, fraction**scored, {"scored_pairs": scored, "green": green})


def kgw_bias(key: WatermarkKey, logits: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """Logits [rows, vocab] plus `bias` on the green list of each row's context [rows, width]."""
    green = green_mask(key, contexts.cpu().numpy(), logits.shape[-1])
    return logits + key["bias"] * torch.from_numpy(green).to(device=logits.device, dtype=logits.dtype)


class KgwChooser(TokenChooser):
    """Green-list bias on the logits, then greedy or sampling as configured."""

    def __init__(self, config: DecodeConfig, key: WatermarkKey) -> None:
        super().__init__(config)
        self.key = key

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        width = self.key["context_width"]
        if len(history) >= width:
            context = torch.tensor([list(history[-width:])])
            logits = kgw_bias(self.key, logits.reshape(1, -1).float(), context)[0]
        return int(logits.argmax()) if self.greedy else super().sample(self.distribution(logits))

    def sample(self, probs: torch.Tensor) -> int:
        raise TokeffError("this decode method draws tokens without their context, "
                          "so it cannot carry a watermark; use --method sample or greedy")


class KgwLogitsProcessor(LogitsProcessor):
    def __init__(self, key: WatermarkKey) -> None:
        self.key = key

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return kgw_bias(self.key, scores, input_ids[:, -self.key["context_width"] :])


@SCHEMES.register
class Kgw(WatermarkScheme):
    name = "kgw"
    summary = "green list (Kirchenbauer et al.)"
    options = (
        Option("green_fraction", float, 0.25, "Fraction of the vocabulary that is green.",
               min=0, max=1, min_exclusive=True, max_exclusive=True),
        Option("bias", float, 2.0, "Logit bias of green tokens.", min=0, max=100, min_exclusive=True),
        Option("context_width", int, 1, "Previous tokens that seed the green list.", min=1, max=16),
        MIN_TOKENS,
    )

    def chooser(self, config: DecodeConfig, offset: int | None = None) -> TokenChooser:
        return KgwChooser(config, self.key)

    def logits_processor(self, config: DecodeConfig, offsets: np.ndarray | None, prompt_length: int) -> LogitsProcessor:
        return KgwLogitsProcessor(self.key)

    def score(self, texts: Sequence[np.ndarray]) -> list[Score]:
        return [score_tokens(self.key, tokens) for tokens in texts]
