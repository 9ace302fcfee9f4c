"""Turning next-token logits into a token: argmax, or a seeded sample from the warped distribution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tokeff.core.errors import TokeffError
from tokeff.decoding.types import DecodeConfig


class TokenChooser:
    """Greedy when temperature is 0, else sampling after transformers' temperature/top-k/top-p warpers.

    Lossless accelerated methods call `distribution` for the acceptance rule and `sample` to draw
    from a (residual) distribution with the same seeded generator.
    """

    def __init__(self, config: DecodeConfig) -> None:
        if config.temperature < 0:
            raise TokeffError(f"--temperature must be >= 0, got {config.temperature}")
        if config.top_p is not None and not 0 < config.top_p <= 1:
            raise TokeffError(f"--top-p must be in (0, 1], got {config.top_p}")
        if config.top_k is not None and config.top_k < 1:
            raise TokeffError(f"--top-k must be >= 1, got {config.top_k}")
        self.greedy = config.temperature == 0
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k is not None:
                self.warpers.append(TopKLogitsWarper(config.top_k))
            if config.top_p is not None and config.top_p < 1:
                self.warpers.append(TopPLogitsWarper(config.top_p))
        self.generator = torch.Generator()
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities (float32, on the CPU) of the last axis after warping; one-hot when greedy."""
        logits = logits.float().cpu()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        flat = logits.reshape(-1, logits.shape[-1])
        warped = self.warpers(torch.empty((flat.shape[0], 0), dtype=torch.long), flat)
        return torch.softmax(warped, dim=-1).reshape(logits.shape)

    def sample(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """The next token from one position's logits; `history` is every token before it (prompt included).

        Plain choosers ignore the history; a watermark chooser derives its randomness from it.
        """
        if self.greedy:
            return int(logits.argmax())
        return self.sample(self.distribution(logits))


def make_chooser(config: DecodeConfig) -> TokenChooser:
    """The configured chooser: a plug-in's (a watermark's) if given, else plain greedy/sampling."""
    return config.chooser_factory(config) if config.chooser_factory else TokenChooser(config)
