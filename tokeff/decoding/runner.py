"""Model calls with a KV cache, counted: the step every decode method is built from."""

from __future__ import annotations

import torch
from transformers import Cache, DynamicCache

from tokeff.core.models import LoadedModel
from tokeff.decoding.types import DecodeConfig, DecodeStats


class CachedRunner:
    """Feeds tokens through the model with a growing transformers cache and records the statistics."""

    def __init__(self, lm: LoadedModel, stats: DecodeStats, cache: Cache | None = None) -> None:
        self.lm = lm
        self.stats = stats
        self.cache = cache if cache is not None else DynamicCache(config=lm.model.config)

    @classmethod
    def for_config(cls, lm: LoadedModel, stats: DecodeStats, config: DecodeConfig) -> CachedRunner:
        """A runner with the cache the configuration asks for (e.g. a quantized one), else a plain one."""
        return cls(lm, stats, config.cache_factory(lm) if config.cache_factory else None)

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
        self.cache.crop(length)
