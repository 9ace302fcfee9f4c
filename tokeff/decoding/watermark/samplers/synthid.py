"""synthid generation: tournament reweighting with transformers' hashing, as a chooser and as a logits processor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from tokeff.core.errors import TokeffError
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig
from tokeff.decoding.watermark.schemes.synthid import SynthId, accumulate, g_values_of_hashes


def tournament(probs: torch.Tensor, g_values: torch.Tensor) -> torch.Tensor:
    """transformers' `update_scores` on probabilities: one tournament layer per depth. g_values [rows, vocab, depth]."""
    for depth in range(g_values.shape[-1]):
        g = g_values[:, :, depth]
        probs = probs * (1 + g - (g * probs).sum(dim=1, keepdim=True))
    # a layer whose g=1 tokens hold all the mass rounds 1 - mass below 0: those tokens have probability 0
    # (transformers maps their non-finite logs to the dtype's minimum)
    return probs.clamp_min(0)


class SynthIdRule:
    """The generation rule for one text: context from generated tokens (zeros before them), seen contexts skipped."""

    def __init__(self, scheme: SynthId) -> None:
        self.scheme = scheme
        self.generated: list[int] = []
        self.seen: list[int] = []

    def reweight(self, probs: torch.Tensor) -> torch.Tensor:
        key = self.scheme.key
        width = key["ngram_len"] - 1
        context = ([0] * width + self.generated)[-width:] if width else []
        calls = len(self.generated) + 1
        if key["skip_first_ngram_calls"] and calls < key["ngram_len"]:
            return probs
        context_hash = int(accumulate(np.ones(1, dtype=np.uint64), np.array([context], dtype=np.int64))[0])
        repeated = context_hash in self.seen[-key["context_history_size"] :]
        self.seen.append(context_hash)
        if repeated:
            return probs
        hashes = accumulate(np.full(probs.shape[-1], context_hash, dtype=np.uint64), np.arange(probs.shape[-1])[:, None])
        g = g_values_of_hashes(hashes, self.scheme.keys, self.scheme.table)
        return tournament(probs.reshape(1, -1).double(), torch.from_numpy(g[None]).double())[0].float()


class SynthIdChooser(TokenChooser):
    def __init__(self, config: DecodeConfig, scheme: SynthId) -> None:
        super().__init__(config)
        self.rule = SynthIdRule(scheme)
        self.prompt_length: int | None = None

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        if self.prompt_length is None:
            self.prompt_length = len(history)
        self.rule.generated = list(history[self.prompt_length :])
        probs = self.rule.reweight(self.distribution(logits).reshape(-1))
        return int(probs.argmax()) if self.greedy else super().sample(probs / probs.sum())

    def sample(self, probs: torch.Tensor) -> int:
        raise TokeffError("this decode method draws tokens without their context, "
                          "so it cannot carry a watermark; use --method sample or greedy")


class SynthIdLogitsProcessor(LogitsProcessor):
    """Batched rule: warps as the config says, reweights each row, returns log-probabilities to sample from."""

    def __init__(self, scheme: SynthId, config: DecodeConfig, prompt_length: int) -> None:
        self.scheme = scheme
        self.warp = TokenChooser(config)
        self.rules: list[SynthIdRule] = []
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rules:
            self.rules = [SynthIdRule(self.scheme) for _ in range(input_ids.shape[0])]
        probs = self.warp.distribution(scores)
        rows = []
        for row, rule in enumerate(self.rules):
            rule.generated = input_ids[row, self.prompt_length :].tolist()
            rows.append(rule.reweight(probs[row]))
        return torch.log(torch.stack(rows)).to(scores.device, scores.dtype)
