"""The model's own rotary tables, to move keys between their pre-RoPE and post-RoPE forms.

Attention modules hand the cache keys after RoPE. Per-channel key statistics are stable only
before the rotation (RoPE mixes channel pairs at a position-dependent angle), so the quantized
cache and the calibration undo the rotation with the model's own cos/sin tables and apply it again
after dequantization. This needs the rotate-half RoPE of Llama, Gemma, Mistral and Qwen models.
"""

from __future__ import annotations

import inspect

import torch

from tokeff.core.errors import TokeffError
from tokeff.kernels.kvquant import rotate_half

# RoPE variants whose tables change with the sequence length would be disturbed by precomputing them.
_LENGTH_DEPENDENT = ("dynamic", "longrope")


class RotaryTables:
    """cos/sin for any positions of any layer, computed by the model's rotary embedding and memoized."""

    def __init__(self, model) -> None:
        config = model.config.get_text_config(decoder=True)
        decoder = model.get_decoder()
        self.rotary = getattr(decoder, "rotary_emb", None)
        if self.rotary is None:
            raise TokeffError(f"{config.model_type}: no rotary embedding found, so keys cannot be quantized before RoPE")
        if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
            raise TokeffError(f"{config.model_type}: partial rotary embeddings are not supported")
        rope_types = str(getattr(self.rotary, "rope_type", ""))
        if any(kind in rope_types for kind in _LENGTH_DEPENDENT):
            raise TokeffError(f"{config.model_type}: RoPE type {rope_types} depends on the length and is not supported")
        self.layer_types = getattr(config, "layer_types", None)
        self.per_layer_type = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self._tables: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def cos_sin(self, layer_idx: int, start: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [count, head_dim] tables for positions start..start+count of layer `layer_idx`."""
        kind = self.layer_types[layer_idx] if self.per_layer_type and self.layer_types else None
        table = self._tables.get(kind)
        if table is None or table[0].shape[0] < start + count or table[0].device != device:
            size = max(start + count, 2 * (table[0].shape[0] if table is not None else 0), 256)
            positions = torch.arange(size, device=device).unsqueeze(0)
            probe = torch.empty(1, device=device, dtype=torch.float32)
            args = (probe, positions, kind) if kind is not None else (probe, positions)
            cos, sin = self.rotary(*args)
            table = self._tables[kind] = (cos[0].float(), sin[0].float())
        return table[0][start : start + count], table[1][start : start + count]

    def rotate(self, x: torch.Tensor, layer_idx: int, start: int) -> torch.Tensor:
        """Apply RoPE to pre-RoPE keys [batch, heads, n, dim] at positions start..start+n."""
        cos, sin = self.cos_sin(layer_idx, start, x.shape[-2], x.device)
        return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)

    def unrotate(self, x: torch.Tensor, layer_idx: int, start: int) -> torch.Tensor:
        """Undo RoPE: the inverse of a (possibly scaled) rotation is its transpose over cos^2 + sin^2."""
        cos, sin = self.cos_sin(layer_idx, start, x.shape[-2], x.device)
        return ((x.float() * cos - rotate_half(x.float()) * sin) / (cos * cos + sin * sin)).to(x.dtype)
