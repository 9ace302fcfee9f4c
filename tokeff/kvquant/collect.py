"""Running calibration text through the model and keeping every layer's pre-RoPE keys and values,
with their sensitivities (squared gradients of the language-model loss, KVQuant's Fisher weights),
and what attention did with them (queries, mask, scaling), so that calibration can measure how much
a quantizer changes each layer's attention output.

A cache that stores nothing records what attention hands it, which works for any model whose
attention calls the cache (no per-architecture hooks): keys arrive after RoPE and are rotated back
with the model's own tables. For sensitivities, the pre-RoPE keys and the values become leaves of
the autograd graph, so one backward pass yields d loss / d key and d loss / d value everywhere.
Queries come from a recording attention function (transformers' `AttentionInterface`), registered
for the duration, which hands the call on to SDPA: again no per-architecture hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from tokeff.core import console
from tokeff.core.models import LoadedModel
from tokeff.core.rope import RotaryTables


@dataclass
class Activations:
    """Per layer, lists of [kv_heads, tokens, head_dim] float32 tensors (one per sample), on the CPU,
    without each sample's first token (the boundary token, an attention sink kept in full precision),
    which `sink_keys`/`sink_values` hold ([kv_heads, 1, head_dim]). `queries` [q_heads, tokens, head_dim]
    (after RoPE) are those of the same tokens, `masks` the boolean [tokens, tokens + 1] visibility of
    every key (sink first) to each of them, `scaling` each layer's score scale."""

    keys: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]
    key_weights: list[list[torch.Tensor]] = field(default_factory=list)
    value_weights: list[list[torch.Tensor]] = field(default_factory=list)
    sink_keys: list[list[torch.Tensor]] = field(default_factory=list)
    sink_values: list[list[torch.Tensor]] = field(default_factory=list)
    queries: list[list[torch.Tensor]] = field(default_factory=list)
    masks: list[list[torch.Tensor]] = field(default_factory=list)
    scaling: list[float] = field(default_factory=list)

    def stacked(self, name: str, layer: int, group: int = 0) -> torch.Tensor:
        """[kv_heads, all tokens, head_dim] for one layer; with `group`, each sample cut to whole groups
        of that many tokens, so that no group of ranges straddles two samples."""
        parts = getattr(self, name)[layer]
        if group:
            parts = [part[:, : part.shape[1] // group * group] for part in parts]
        return torch.cat(parts, dim=1)


class _RecordingLayer(DynamicLayer):
    def __init__(self, layer_idx: int, rope: RotaryTables, sink: list, with_grad: bool):
        super().__init__()
        self.layer_idx, self.rope, self.sink, self.with_grad = layer_idx, rope, sink, with_grad

    def update(self, key_states, value_states, *args, **kwargs):
        keys = self.rope.unrotate(key_states.float(), self.layer_idx, 0)
        values = value_states.float()
        if self.with_grad:
            keys = keys.detach().requires_grad_()
            values = values.detach().requires_grad_()
            self.sink.append((keys, values))
            return self.rope.rotate(keys, self.layer_idx, 0).to(key_states.dtype), values.to(value_states.dtype)
        self.sink.append((keys, values))
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0


class _RecordingCache(Cache):
    def __init__(self, n_layers: int, rope: RotaryTables, with_grad: bool):
        self.records: list[list] = [[] for _ in range(n_layers)]
        super().__init__(layers=[_RecordingLayer(i, rope, self.records[i], with_grad) for i in range(n_layers)])


_RECORDING = "tokeff_recording_kv"


@contextmanager
def _recording_attention(model, sink: dict[int, tuple]) -> Iterator[None]:
    """For the duration, every attention call stores (query, mask, scaling) under its layer index."""

    def record(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        sink[module.layer_idx] = (query.detach(), None if attention_mask is None else attention_mask.detach(), scale)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    AttentionInterface.register(_RECORDING, record)
    AttentionMaskInterface.register(_RECORDING, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_RECORDING)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _visibility(mask: torch.Tensor | None, n: int) -> torch.Tensor:
    """Boolean [n - 1, n]: which keys each query but the first sees (causal when SDPA got no mask)."""
    if mask is None:
        return torch.ones(n, n, dtype=torch.bool).tril()[1:]
    mask = mask[0, 0].cpu()
    return (mask if mask.dtype == torch.bool else mask == 0)[1:]


def collect(lm: LoadedModel, sequences: list[list[int]], sensitivity: bool) -> Activations:
    """Keys, values and queries of every layer for each sequence (its first token, the boundary token,
    held apart: it stays in full precision as an attention sink)."""
    model = lm.model
    n_layers = lm.text_config.num_hidden_layers
    rope = lm.rotary
    lists = lambda: [[] for _ in range(n_layers)]  # noqa: E731
    acts = Activations(keys=lists(), values=lists(), sink_keys=lists(), sink_values=lists(), queries=lists(),
                       masks=lists(), scaling=[0.0] * n_layers)
    if sensitivity:
        acts.key_weights = lists()
        acts.value_weights = lists()
    attended: dict[int, tuple] = {}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:  # only the activations' gradients are needed
        parameter.requires_grad_(False)
    try:
        for ids in console.track(sequences, "collecting keys and values"):
            cache = _RecordingCache(n_layers, rope, with_grad=sensitivity)
            inputs = torch.tensor([ids], device=lm.device)
            with torch.set_grad_enabled(sensitivity), _recording_attention(model, attended):
                logits = model(input_ids=inputs, past_key_values=cache, use_cache=True).logits[0, :-1]
                if sensitivity:
                    F.cross_entropy(logits.float(), inputs[0, 1:]).backward()
            for layer, ((keys, values),) in enumerate(cache.records):
                acts.keys[layer].append(keys.detach()[0, :, 1:].cpu())
                acts.values[layer].append(values.detach()[0, :, 1:].cpu())
                acts.sink_keys[layer].append(keys.detach()[0, :, :1].cpu())
                acts.sink_values[layer].append(values.detach()[0, :, :1].cpu())
                query, mask, acts.scaling[layer] = attended[layer]
                acts.queries[layer].append(query[0, :, 1:].float().cpu())
                acts.masks[layer].append(_visibility(mask, len(ids)))
                if sensitivity:
                    acts.key_weights[layer].append(keys.grad[0, :, 1:].square().cpu())
                    acts.value_weights[layer].append(values.grad[0, :, 1:].square().cpu())
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    return acts
