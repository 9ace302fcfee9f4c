"""The model's own rotary position embedding (RoPE), the one place keys are rotated.

Two users: the quantized KV cache and its calibration move keys between their pre-RoPE and
post-RoPE forms (per-channel key statistics are stable only before the rotation, which mixes
channel pairs at a position-dependent angle), using the model's own cos/sin tables; attention
sinks move cached keys to other positions (RoPE rotations compose, so a rotation by -d moves a key
from position p to p - d), using its inverse frequencies. Both need the rotate-half layout of
Llama, Gemma, Mistral and Qwen models.
"""

from __future__ import annotations

import inspect

import torch

from tokeff.core.errors import TokeffError
from tokeff.kernels.kvquant import rotate_half

# RoPE variants whose tables change with the sequence length would be disturbed by precomputing them.
_LENGTH_DEPENDENT = ("dynamic", "longrope")


class RotaryTables:
    """cos/sin for any positions of any layer, computed by the model's rotary embedding and memoized,
    and the inverse frequencies each layer's keys were rotated with (Gemma 3 keeps one set per layer type)."""

    def __init__(self, model) -> None:
        self.config = model.config.get_text_config(decoder=True)
        self.rotary = getattr(model.get_decoder(), "rotary_emb", None)
        if self.rotary is None:
            raise TokeffError(f"{self.config.model_type}: no rotary position embedding found")
        self.layer_types = getattr(self.config, "layer_types", None)
        self.per_layer_type = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self._tables: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def check_tables(self) -> None:
        """Raises unless precomputed tables rotate and unrotate exactly (full rotary, length-independent)."""
        if getattr(self.config, "partial_rotary_factor", 1.0) != 1.0:
            raise TokeffError(f"{self.config.model_type}: partial rotary embeddings are not supported")
        rope_types = str(getattr(self.rotary, "rope_type", ""))
        if any(kind in rope_types for kind in _LENGTH_DEPENDENT):
            raise TokeffError(f"{self.config.model_type}: RoPE type {rope_types} depends on the length and is not supported")

    def _kind(self, layer_idx: int) -> str | None:
        return self.layer_types[layer_idx] if self.per_layer_type and self.layer_types else None

    def inv_freq(self, layer_idx: int) -> torch.Tensor:
        """float32 inverse frequencies of layer `layer_idx` (half the rotated dimensions)."""
        kind = self._kind(layer_idx)
        inv_freq = getattr(self.rotary, f"{kind}_inv_freq", None) if kind else None
        if inv_freq is None:
            inv_freq = getattr(self.rotary, "inv_freq", None)
        if inv_freq is None:
            raise TokeffError(f"{self.config.model_type}: its rotary embedding exposes no inverse frequencies")
        return inv_freq.float()

    def cos_sin(self, layer_idx: int, start: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [count, head_dim] tables for positions start..start+count of layer `layer_idx`."""
        kind = self._kind(layer_idx)
        table = self._tables.get(kind)
        if table is None or table[0].shape[0] < start + count or table[0].device != device:
            self.check_tables()
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


def shift_keys(keys: torch.Tensor, inv_freq: torch.Tensor, shift: int) -> torch.Tensor:
    """Keys rotated by RoPE at position p, moved to p + shift (models with partial rotary rotate only
    the leading 2 * len(inv_freq) dimensions)."""
    angles = shift * inv_freq.to(keys.device)
    cos, sin = torch.cat([angles.cos()] * 2), torch.cat([angles.sin()] * 2)
    rotary_dim = cos.shape[0]
    rotated, rest = keys[..., :rotary_dim].float(), keys[..., rotary_dim:]
    moved = (rotated * cos + rotate_half(rotated) * sin).to(keys.dtype)
    return torch.cat([moved, rest], dim=-1) if rest.shape[-1] else moved
