"""kgw generation: the green-list logit bias, as a decode method's chooser and as a logits processor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from tokeff.core.errors import TokeffError
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.schemes.kgw import TRANSFORMERS, green_mask


def kgw_bias(key: WatermarkKey, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [rows, vocab] plus `bias` on the green list of each row's context (the end of input_ids [rows, length])."""
    if key["hashing"] in TRANSFORMERS:
        green = key.rule.transformers_green.mask(logits, input_ids)
    else:
        green = torch.from_numpy(green_mask(key, input_ids[:, -key["context_width"] :].cpu().numpy(), logits.shape[-1]))
    return logits + key["bias"] * green.to(device=logits.device, dtype=logits.dtype)


class KgwChooser(TokenChooser):
    """Green-list bias on the logits, then greedy or sampling as configured."""

    def __init__(self, config: DecodeConfig, key: WatermarkKey) -> None:
        super().__init__(config)
        self.key = key

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        if len(history) >= self.key["context_width"]:
            logits = kgw_bias(self.key, logits.reshape(1, -1).float(), torch.tensor([list(history)]))[0]
        return int(logits.argmax()) if self.greedy else super().sample(self.distribution(logits))

    def sample(self, probs: torch.Tensor) -> int:
        raise TokeffError("this decode method draws tokens without their context, "
                          "so it cannot carry a watermark; use --method sample or greedy")


class KgwLogitsProcessor(LogitsProcessor):
    def __init__(self, key: WatermarkKey) -> None:
        self.key = key

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return kgw_bias(self.key, scores, input_ids)
