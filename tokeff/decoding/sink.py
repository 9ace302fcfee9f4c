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

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.core.options import Option
from tokeff.decoding.bounded import BoundedCacheMethod
from tokeff.decoding.registry import register


def rope_inv_freq(model, layer_idx: int) -> torch.Tensor:
    """The rotary inverse frequencies a layer's keys were rotated with (Gemma 3 keeps one set per layer type)."""
    rotary = getattr(model.get_decoder(), "rotary_emb", None)
    layer_types = getattr(model.config.get_text_config(), "layer_types", None)
    inv_freq = None
    if rotary is not None and layer_types:
        inv_freq = getattr(rotary, f"{layer_types[layer_idx]}_inv_freq", None)
    if rotary is not None and inv_freq is None:
        inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None:
        raise TokeffError("--method sink needs a model with rotary position embeddings")
    return inv_freq.float()


def rotate_keys(keys: torch.Tensor, inv_freq: torch.Tensor, shift: int) -> torch.Tensor:
    """Keys rotated by RoPE at position p, moved to p + shift (the rotate-half layout of Llama and Gemma)."""
    angles = shift * inv_freq.to(keys.device)
    cos, sin = torch.cat([angles.cos()] * 2), torch.cat([angles.sin()] * 2)
    rotary_dim = cos.shape[0]  # models with partial rotary rotate only the leading dimensions
    rotated, rest = keys[..., :rotary_dim].float(), keys[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
    moved = (rotated * cos + rotated_half * sin).to(keys.dtype)
    return torch.cat([moved, rest], dim=-1) if rest.shape[-1] else moved


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
            self.keys = torch.cat([keys[..., : self.sinks, :], rotate_keys(keys[..., kept, :], self.inv_freq, -evict)], -2)
            self.values = torch.cat([values[..., : self.sinks, :], values[..., kept, :]], dim=-2)
        return keys, values


class SinkCache(Cache):
    def __init__(self, lm: LoadedModel, sinks: int, window: int) -> None:
        layers = lm.model.config.get_text_config().num_hidden_layers
        super().__init__(layers=[SinkLayer(sinks, window, rope_inv_freq(lm.model, i)) for i in range(layers)])


@register
class AttentionSinks(BoundedCacheMethod):
    name = "sink"
    summary = "StreamingLLM: attention sinks plus a window of recent tokens, for streams past the context (lossy)"
    options = (
        Option("sinks", int, 4, "attention-sink tokens kept", min=0),
        Option("window", int, 1020, "recent tokens kept", min=1),
    )

    def __init__(self, lm, config, **options: Any) -> None:
        super().__init__(lm, config, **options)
        sinks, window = self.opts["sinks"], self.opts["window"]
        limit = lm.model.config.get_text_config().max_position_embeddings
        if limit and sinks + 2 * window > limit:
            raise TokeffError(
                f"--sinks {sinks} plus twice --window {window} (the cache and one prompt chunk) exceeds "
                f"the model's {limit} positions"
            )
        self.prefill_chunk = window

    def make_cache(self, lm: LoadedModel) -> Cache:
        return SinkCache(lm, self.opts["sinks"], self.opts["window"])
