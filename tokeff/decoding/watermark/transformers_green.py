"""kgw's `hashing` lefthash/selfhash: the green lists transformers' `WatermarkLogitsProcessor` draws, and their exact test.

Apart from `schemes/kgw.py` because these green lists are `torch.randperm` draws: a key with tokeff's own
hashing detects without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
from scipy.stats import hypergeom

from tokeff.core.errors import TokeffError
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.scheme import Score
from tokeff.decoding.watermark.schemes.kgw import hashing_key

TABLE_SIZE = 1_000_003  # transformers' `fixed_table` for selfhash
MAX_CANDIDATES = 40  # selfhash biases only the top candidates that are green under their own seed (transformers)


class TransformersGreenLists:
    """transformers' `WatermarkLogitsProcessor` green lists for one key, on the CPU."""

    def __init__(self, key: WatermarkKey) -> None:
        self.key = key
        self.hashing_key = hashing_key(key.words[0])
        self.rows = key["vocab_rows"]
        self.size = int(self.rows * key["green_fraction"])

    @cached_property
    def table(self) -> torch.Tensor:
        return torch.randperm(TABLE_SIZE, generator=torch.Generator().manual_seed(self.hashing_key))

    def seed(self, window: Sequence[int]) -> int:
        """transformers' `set_seed`: lefthash from the last token, selfhash from the window ending with the token."""
        window = list(window)[-self.key["context_width"] :]
        if self.key["hashing"] == "lefthash":
            return (self.hashing_key * window[-1]) % (2**64 - 1)
        ids = torch.tensor(window)
        a, b = self.table[ids % TABLE_SIZE] + 1, self.table[ids[-1] % TABLE_SIZE] + 1
        return (self.hashing_key * a * b).min().item() % (2**64 - 1)

    def green(self, seed: int) -> torch.Tensor:
        return torch.randperm(self.rows, generator=torch.Generator().manual_seed(seed))[: self.size]

    def mask(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean [rows, vocab] of the tokens transformers biases (none before `context_width` tokens)."""
        if logits.shape[-1] != self.rows:
            raise TokeffError(f"this kgw key draws green lists over {self.rows} vocabulary rows (the model's "
                              f"config.vocab_size when it was made), but the model has {logits.shape[-1]}")
        mask = torch.zeros(logits.shape, dtype=torch.bool)
        if input_ids.shape[-1] < self.key["context_width"]:
            return mask
        for row, history in enumerate(input_ids.cpu().tolist()):
            if self.key["hashing"] == "lefthash":
                mask[row, self.green(self.seed(history))] = True
                continue
            for candidate in logits[row].argsort(descending=True)[:MAX_CANDIDATES].tolist():
                if (self.green(self.seed(history + [candidate])) == candidate).any():
                    mask[row, candidate] = True
        return mask

    def score(self, tokens: np.ndarray) -> Score:
        """Exact test over the text's distinct (green-list seed, token) pairs: a sum of hypergeometric counts."""
        width, fraction = self.key["context_width"], self.key["green_fraction"]
        # the seed comes from `width` tokens: the context (lefthash), or the context ending with the token (selfhash)
        span = width if self.key["hashing"] == "selfhash" else width + 1
        tokens = np.asarray(tokens, dtype=np.int64).tolist()
        pairs = {(self.seed(tokens[start : start + width]), tokens[start + span - 1])
                 for start in range(len(tokens) - span + 1)}
        groups: dict[int, list[int]] = {}
        for seed, token in pairs:
            groups.setdefault(seed, []).append(token)
        green, pmf, floor = 0, np.ones(1), 1.0
        for seed, members in groups.items():
            green += int(np.isin(members, self.green(seed).numpy()).sum())
            counts = hypergeom(self.rows, self.size, len(members))
            pmf = np.convolve(pmf, counts.pmf(np.arange(len(members) + 1)))
            floor *= counts.pmf(len(members))
        scored = len(pairs)
        if scored == 0:
            return Score(0.0, 1.0, 1.0, {"scored_pairs": 0, "green": 0})
        z = (green - fraction * scored) / np.sqrt(scored * fraction * (1 - fraction))  # transformers' z-score
        p_value = float(min(1.0, pmf[green:].sum()))
        return Score(float(z), p_value, floor, {"scored_pairs": scored, "green": green})
