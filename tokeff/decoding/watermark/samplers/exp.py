"""exp generation: exponential-minimum sampling at the key's positions, as a chooser and as a logits processor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from tokeff.core.errors import TokeffError
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.schemes.exp import check_sampling, key_positions
from tokeff.kernels.exp_sampling import exp_choice


class ExpChooser(TokenChooser):
    """Exponential-minimum sampling at key position (offset + tokens generated so far) mod n."""

    def __init__(self, config: DecodeConfig, key: WatermarkKey, offset: int) -> None:
        check_sampling(config)
        super().__init__(config)
        self.key = key
        self.offset = offset
        self.prompt_length: int | None = None

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        if self.prompt_length is None:
            self.prompt_length = len(history)
        position = key_positions(self.key, self.offset, len(history) - self.prompt_length)
        probs = self.distribution(logits).reshape(1, -1).numpy()
        return int(exp_choice(probs, self.key.words[[position]])[0])

    def sample(self, probs: torch.Tensor) -> int:
        raise TokeffError("this decode method draws tokens without their position in the text, "
                          "so it cannot carry a watermark; use --method sample")


class ExpLogitsProcessor(LogitsProcessor):
    """Batched `ExpChooser`: leaves only the exp-sampled token of each row (greedy decoding then takes it)."""

    def __init__(self, key: WatermarkKey, config: DecodeConfig, offsets: np.ndarray, prompt_length: int) -> None:
        self.key = key
        self.warp = TokenChooser(config)
        self.offsets = offsets
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = key_positions(self.key, self.offsets, input_ids.shape[1] - self.prompt_length)
        tokens = exp_choice(self.warp.distribution(scores).numpy(), self.key.words[positions])
        chosen = torch.full_like(scores, -torch.inf)
        chosen[torch.arange(len(tokens)), torch.from_numpy(tokens).to(scores.device)] = 0.0
        return chosen
