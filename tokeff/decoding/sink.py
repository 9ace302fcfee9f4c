"""`--method sink`: StreamingLLM (Xiao et al. 2024). The cache keeps the first `--sinks` tokens (attention
sinks) and the `--window` most recent ones; everything between is evicted.

Positions are those inside the cache, as in the paper: a new token sits right after the kept ones,
and when tokens are evicted the kept window keys are rotated back by the number evicted (RoPE
rotations compose, so one rotation by -d moves a key from position p to p - d). Positions therefore
never exceed sinks + window + one chunk, and a model runs on streams far past its context length.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from tokeff.core.models import LoadedModel
from tokeff.core.options import Option
from tokeff.core.rope import shift_keys
from tokeff.decoding.bounded import BoundedCacheMethod
from tokeff.decoding.registry import register


class SinkLayer(DynamicLayer):
    """A layer cache holding `sinks` first and `window` latest positions, re-rotating keys on eviction."""

    def __init__(self, sinks: int, window: int, inv_freq: torch.Tensor) -> None:
        super().__init__()
        self.sinks, self.window, self.inv_freq = sinks, window, inv_freq

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states)
        evict = keys.shape[-2] - self.sinks - self.window
        if evict > 0:
            # Attention in this call sees every position; the cache keeps only the bound for later calls.
            kept = slice(self.sinks + evict, None)
            self.keys = torch.cat([keys[..., : self.sinks, :], shift_keys(keys[..., kept, :], self.inv_freq, -evict)], -2)
            self.values = torch.cat([values[..., : self.sinks, :], values[..., kept, :]], dim=-2)
        return keys, values


class SinkCache(Cache):
    def __init__(self, lm: LoadedModel, sinks: int, window: int) -> None:
        layers = lm.text_config.num_hidden_layers
        super().__init__(layers=[SinkLayer(sinks, window, lm.rotary.inv_freq(i)) for i in range(layers)])


@register
class AttentionSinks(BoundedCacheMethod):
    bounds_positions = True  # kept keys are rotated back: positions stay below sinks + window + one chunk
    name = "sink"
    summary = "StreamingLLM: attention sinks plus a window of recent tokens, for streams past the context (lossy)"
    options = (
        Option("sinks", int, 4, "attention-sink tokens kept", min=0),
        Option("window", int, 1020, "recent tokens kept", min=1),
    )

    def __init__(self, lm, config, **options: Any) -> None:
        super().__init__(lm, config, **options)
        sinks, window = self.opts["sinks"], self.opts["window"]
        lm.check_context(sinks + 2 * window, what="--sinks plus twice --window (the cache and one prompt chunk)")
        self.prefill_chunk = window

    def make_cache(self, lm: LoadedModel) -> Cache:
        return SinkCache(lm, self.opts["sinks"], self.opts["window"])
