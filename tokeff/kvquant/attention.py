"""Attention over the quantized cache without a float copy of it (dequantize-and-attend).

A quantized layer hands attention only its full-precision tokens (sinks, residual window, new
tokens) and tags them with a `PackedBody`: the packed tokens as they were when the layer was
called. This attention function, registered with transformers' `AttentionInterface`, hands both
to the `attend` kernels, which dequantize the packed rows as they go and attend them and the
full-precision rows in one softmax. Untagged calls (other caches, prefill without a packed body)
go to transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from tokeff.kernels.kvquant import DenseRows, PackedRows, attend

NAME = "tokeff_packed_kv"
_TAG = "tokeff_packed_body"


@dataclass(frozen=True)
class PackedBody:
    """The packed tokens of one layer at one call, and where their columns sit in the mask."""

    keys: PackedRows
    values: PackedRows
    skip: int  # leading packed rows out of the sliding window
    cos: torch.Tensor | None  # RoPE tables of the body's positions (keys stored before RoPE)
    sin: torch.Tensor | None
    first_column: int  # the body's first column in the attention mask (after the sinks)

    @property
    def tokens(self) -> int:
        return self.keys.codes.shape[2] - self.skip


def tag(keys: torch.Tensor, body: PackedBody) -> torch.Tensor:
    setattr(keys, _TAG, body)
    return keys


def install(model: torch.nn.Module) -> bool:
    """Route `model`'s attention through `packed_kv_attention` (idempotent); False if the model's
    attention cannot be swapped (then the cache hands attention dequantized buffers instead)."""
    AttentionInterface.register(NAME, packed_kv_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if model.config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME


def packed_kv_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs,
) -> tuple[torch.Tensor, None]:
    body: PackedBody | None = getattr(key, _TAG, None)
    if body is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError("the quantized KV cache's attention does not support logit soft-capping")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    body_bias, dense_bias = _split_mask(attention_mask, body, query.shape[0], query.shape[2], key.shape[2], query.device)
    out, _ = attend(query, body.keys, body.values, scaling, body.skip, body.cos, body.sin, body_bias,
                    dense=DenseRows(key, value, dense_bias))
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _split_mask(mask: torch.Tensor | None, body: PackedBody, batch: int, q_len: int, dense_len: int, device: torch.device):
    """Additive biases [batch, q, columns] (or None: nothing masked) for the packed body and the
    full-precision rows. The mask's columns are [sinks, packed body, residual window, new tokens];
    without a mask (one new token, or a causal call SDPA would handle with is_causal) the body is
    all visible and the new tokens are causal among themselves."""
    if mask is None:
        if q_len == 1:
            return None, None
        causal = torch.ones(q_len, dense_len, dtype=torch.bool, device=device).tril(dense_len - q_len)
        return None, torch.zeros(causal.shape, device=device).masked_fill(~causal, -torch.inf).expand(batch, -1, -1)
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, -torch.inf)
    first, last = body.first_column, body.first_column + body.tokens
    if mask.shape[-1] != dense_len + body.tokens:
        raise RuntimeError(f"attention mask has {mask.shape[-1]} columns for {dense_len + body.tokens} cached tokens")
    mask = mask[:, 0].expand(batch, -1, -1)
    body_bias, dense_bias = mask[..., first:last], torch.cat([mask[..., :first], mask[..., last:]], dim=-1)
    return tuple(None if bool((part == 0).all()) else part.contiguous() for part in (body_bias, dense_bias))
