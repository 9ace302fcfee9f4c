"""`--method h2o`: Heavy-Hitter Oracle (Zhang et al. 2023). Each layer and KV head keeps at most
`--kv-budget` positions: the `--window` most recent plus the heavy hitters, the older positions
with the largest attention accumulated over every query so far.

Accumulated attention needs the attention probabilities, which fused kernels (sdpa) do not return:
while an H2O cache is in use the model runs eager attention, and a forward hook on each attention
module hands its probabilities to the cache, which then evicts. Kept keys keep their original
positions, so (unlike `sink`) the stream must stay within the model's context length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option
from tokeff.core.models import LoadedModel
from tokeff.decoding.bounded import BoundedCacheMethod
from tokeff.decoding.registry import register


class HeavyHitterLayer(DynamicLayer):
    """Keys and values of the kept positions, per KV head, with their accumulated attention."""

    def __init__(self, budget: int, recent: int) -> None:
        super().__init__()
        self.budget, self.recent = budget, recent
        self.seen = 0  # tokens fed so far: the next token's position
        self.scores: torch.Tensor | None = None  # (batch, kv heads, kept) accumulated attention
        self.positions: torch.Tensor | None = None  # (batch, kv heads, kept) original positions

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        batch, heads, new, _ = key_states.shape
        fresh = torch.arange(self.seen, self.seen + new, device=key_states.device).expand(batch, heads, new)
        zeros = torch.zeros(batch, heads, new, device=key_states.device)
        self.scores = zeros if self.scores is None else torch.cat([self.scores, zeros], dim=-1)
        self.positions = fresh if self.positions is None else torch.cat([self.positions, fresh], dim=-1)
        self.seen += new
        return super().update(key_states, value_states)

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = super().get_seq_length()
        # The kept positions are numbered as if contiguous and just before the new ones: every one is visible.
        return kept + query_length, self.seen - kept

    def observe(self, weights: torch.Tensor) -> None:
        """Accumulates attention probabilities (batch, query heads, queries, keys) and evicts past the budget."""
        batch, query_heads, _, keys = weights.shape
        heads = self.keys.shape[1]
        received = weights.float().sum(dim=2).view(batch, heads, query_heads // heads, keys).sum(dim=2)
        self.scores += received
        if keys > self.budget:
            self._evict()

    def _evict(self) -> None:
        kept = self.keys.shape[-2]
        older = kept - self.recent
        heavy = self.scores[..., :older].topk(self.budget - self.recent, dim=-1).indices.sort(dim=-1).values
        recent = torch.arange(older, kept, device=heavy.device).expand(*heavy.shape[:2], self.recent)
        index = torch.cat([heavy, recent], dim=-1)
        self.scores = self.scores.gather(-1, index)
        self.positions = self.positions.gather(-1, index)
        expanded = index[..., None].expand(*index.shape, self.keys.shape[-1])
        self.keys = self.keys.gather(2, expanded)
        self.values = self.values.gather(2, index[..., None].expand(*index.shape, self.values.shape[-1]))


class HeavyHitterCache(Cache):
    def __init__(self, lm: LoadedModel, budget: int, recent: int) -> None:
        _install_attention_hooks(lm.model)
        layers = lm.text_config.num_hidden_layers
        super().__init__(layers=[HeavyHitterLayer(budget, recent) for _ in range(layers)])


def _install_attention_hooks(model) -> None:
    """Once per model: each attention module passes its probabilities to an H2O cache, when one is in use."""
    if getattr(model, "_tokeff_h2o_hooks", False):
        return
    for layer in model.get_decoder().layers:
        layer.self_attn.register_forward_hook(_pass_attention, with_kwargs=True)
    model._tokeff_h2o_hooks = True


def _pass_attention(module, args, kwargs, output) -> None:
    cache = kwargs.get("past_key_values")
    if isinstance(cache, HeavyHitterCache):
        weights = output[1]
        if weights is None:
            raise TokeffError("h2o needs attention probabilities: use it through --method h2o, which runs eager attention")
        cache.layers[module.layer_idx].observe(weights)


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """The model computes attention probabilities explicitly for the duration (then goes back)."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


@register
class HeavyHitters(BoundedCacheMethod):
    name = "h2o"
    summary = "H2O: keep recent tokens plus the heaviest-attended ones within --kv-budget (lossy)"
    options = (
        Option("kv_budget", int, 512, "positions kept per layer and head", min=2),
        Option("window", int, None, "recent part of the budget (default: half of it)", min=1),
    )

    def __init__(self, lm, config, **options: Any) -> None:
        super().__init__(lm, config, **options)
        budget = self.opts["kv_budget"]
        recent = budget // 2 if self.opts["window"] is None else self.opts["window"]
        if recent >= budget:
            raise TokeffError(f"--window must be less than --kv-budget {budget}, got {recent}")
        self.budget, self.recent = budget, recent
        self.prefill_chunk = budget

    def make_cache(self, lm: LoadedModel) -> Cache:
        return HeavyHitterCache(lm, self.budget, self.recent)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        with eager_attention(self.lm.model):
            yield
