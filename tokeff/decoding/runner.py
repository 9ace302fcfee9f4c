"""Model calls with a KV cache, counted: the step every decode method is built from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.decoding.types import DecodeConfig, DecodeStats


class CachedRunner:
    """Feeds tokens through the model with a growing transformers cache and records the statistics.

    With `rollback=True` the cache can be cut back after a forward pass (rejected draft tokens):
    sliding-window layers then hold their past until `crop`/`keep_new` trims them to the window.
    """

    def __init__(
        self, lm: LoadedModel, stats: DecodeStats, cache: Cache | None = None, rollback: bool = False
    ) -> None:
        self.lm = lm
        self.stats = stats
        self.cache = cache if cache is not None else DynamicCache(config=lm.model.config)
        if rollback:
            self.cache.activate_past_recording()

    @classmethod
    def for_config(
        cls, lm: LoadedModel, stats: DecodeStats, config: DecodeConfig, rollback: bool = False
    ) -> CachedRunner:
        """A runner with the cache the configuration asks for (e.g. a quantized one), else a plain one."""
        return cls(lm, stats, config.cache_factory(lm) if config.cache_factory else None, rollback=rollback)

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, token_ids: list[int], **model_kwargs) -> torch.Tensor:
        """Logits (float32) for each of `token_ids`, appended after the cached context."""
        inputs = torch.tensor([token_ids], dtype=torch.long, device=self.lm.device)
        return self._run(input_ids=inputs, **model_kwargs)

    def forward_embeds(self, embeds: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """Logits for positions given as input embeddings [1, n, hidden] (tokens the vocabulary lacks)."""
        return self._run(inputs_embeds=embeds, **model_kwargs)

    @torch.inference_mode()
    def _run(self, **model_kwargs) -> torch.Tensor:
        output = self.lm.model(past_key_values=self.cache, use_cache=True, **model_kwargs)
        self.stats.forward_passes += 1
        self.stats.observe_cache(self.cache)
        return output.logits[0].float()

    def crop(self, length: int) -> None:
        """Forget cached positions past `length` (rejected draft tokens)."""
        # transformers 5 crops by a negative count; crop(0) also trims recorded sliding-window past.
        if self.length:  # (an empty cache has nothing to crop, and its sliding layers cannot)
            self.cache.crop(min(0, length - self.length))

    def crop_to_common(self, cached: Sequence[int], wanted: Sequence[int], limit: int) -> int:
        """Keep the cached positions that `wanted` shares with `cached` (the ids the cache holds), at most
        `limit` of them, and forget the rest; returns how many were kept, where feeding `wanted` resumes."""
        common = 0
        for held, new in zip(cached[:limit], wanted):
            if held != new:
                break
            common += 1
        self.crop(common)
        return common

    def keep_new(self, n_new: int, keep: list[int]) -> None:
        """Of the `n_new` positions the last forward pass appended, keep only those at `keep` (ascending
        offsets into them): the accepted path of a draft tree, whose other branches were rejected."""
        if len(keep) == n_new:
            self.crop(self.length)
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.lm.device)
        for layer in self.cache.layers:
            if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
                raise TokeffError(f"tree verification cannot prune a {type(layer).__name__} cache")
            if not layer.is_initialized:
                continue
            old, new = layer.keys[..., :-n_new, :], layer.keys[..., -n_new:, :]
            layer.keys = torch.cat([old, new.index_select(-2, index)], dim=-2)
            old, new = layer.values[..., :-n_new, :], layer.values[..., -n_new:, :]
            layer.values = torch.cat([old, new.index_select(-2, index)], dim=-2)
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length -= n_new - len(keep)
                layer.crop(0)
