"""How keys and values become packed codes: normalization, dense-and-sparse outliers, codebooks.

Every quantized entry is `center + half * codebook[code]` with a codebook of normalized levels in
[-1, 1]. What differs between the schemes is where (center, half) come from:
- keys per channel: fixed ranges fitted offline (calibrated, KVQuant) or the min/max of each group
  of `group` tokens (uniform, KIVI);
- values per token: the min/max of the token's own entries.
A calibrated codebook is fitted by k-means; the uniform one is evenly spaced, which makes it plain
asymmetric integer quantization. A few entries per token (the largest deviations) can be kept
exactly in a sparse side list so that outliers do not stretch the range of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tokeff.kernels.kvquant import PackedRows, dequantize_into, pack_codes

# fp16 keeps per-token and per-group ranges and sparse outliers small; tiny ranges are floored so
# that constant rows do not divide by zero.
_STORE_DTYPE = torch.float16
_MIN_HALF = 1e-6


def uniform_codebook(bits: int) -> torch.Tensor:
    """Evenly spaced levels: with a min/max range this is round-to-nearest integer quantization."""
    return torch.linspace(-1.0, 1.0, 2**bits).unsqueeze(0)


@dataclass
class PackedTensor:
    """Quantized rows of one of K or V in one layer: codes plus whatever ranges and outliers are per token."""

    codes: torch.Tensor  # uint8 [batch, heads, n, dim * bits / 8]
    center: torch.Tensor | None  # fp16 [batch, heads, n / token_group, dim or 1]; None for fixed ranges
    half: torch.Tensor | None
    outlier_idx: torch.Tensor  # uint8 [batch, heads, n, k]
    outlier_val: torch.Tensor  # fp16 [batch, heads, n, k]
    token_group: int  # tokens per row of center/half (1 per token, G per group; unused when fixed)

    @property
    def tokens(self) -> int:
        return self.codes.shape[2]

    @property
    def nbytes(self) -> int:
        parts = (self.codes, self.center, self.half, self.outlier_idx, self.outlier_val)
        return sum(part.numel() * part.element_size() for part in parts if part is not None)

    def cat(self, other: PackedTensor) -> PackedTensor:
        def join(a, b):
            return None if a is None else torch.cat([a, b], dim=2)

        return replace(
            self,
            codes=join(self.codes, other.codes),
            center=join(self.center, other.center),
            half=join(self.half, other.half),
            outlier_idx=join(self.outlier_idx, other.outlier_idx),
            outlier_val=join(self.outlier_val, other.outlier_val),
        )

    def slice(self, start: int, stop: int) -> PackedTensor:
        """Tokens start..stop; both must fall on range-group boundaries."""
        group = self.token_group or 1  # fixed ranges (0) have no per-token rows
        if start % group or stop % group:
            raise ValueError(f"cannot cut a group of {group} quantized tokens at {start}..{stop}")

        def rows(a, lo, hi):
            return None if a is None else a[:, :, lo:hi]

        grid = (start // group, stop // group)
        return replace(
            self,
            codes=rows(self.codes, start, stop),
            center=rows(self.center, *grid),
            half=rows(self.half, *grid),
            outlier_idx=rows(self.outlier_idx, start, stop),
            outlier_val=rows(self.outlier_val, start, stop),
        )


@dataclass
class TensorQuantizer:
    """The quantization of keys or of values in one layer."""

    bits: int
    codebook: torch.Tensor  # [1 or heads, 2**bits] sorted levels in [-1, 1]
    per_token: bool  # one range per token (values) instead of per channel (keys)
    group: int = 0  # per-channel ranges from each group of this many tokens; 0 = fixed `center`/`half`
    center: torch.Tensor | None = None  # fixed per-channel ranges [heads, dim]
    half: torch.Tensor | None = None
    outliers: int = 0  # entries per token stored exactly

    @property
    def block(self) -> int:
        """Tokens that must be quantized together (they share ranges)."""
        return self.group if not self.per_token and self.group else 1

    def to(self, device: torch.device) -> TensorQuantizer:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, codebook=move(self.codebook), center=move(self.center), half=move(self.half))

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(normalized x, stored center, stored half, outlier indices) for rows x [batch, heads, n, dim]."""
        x = x.float()
        batch, heads, n, dim = x.shape
        if self.per_token:
            idx = _top_deviations(x - x.mean(-1, keepdim=True), self.outliers)
            dense = torch.ones_like(x, dtype=torch.bool).scatter(3, idx, False)
            lo = torch.where(dense, x, torch.inf).amin(-1, keepdim=True)
            hi = torch.where(dense, x, -torch.inf).amax(-1, keepdim=True)
            center, half = _stored_range(lo, hi)
            return (x - center.float()) / half.float(), center, half, idx
        if self.group:
            grouped = x.reshape(batch, heads, n // self.group, self.group, dim)
            center, half = _stored_range(grouped.amin(3), grouped.amax(3))
            scale = half.float().repeat_interleave(self.group, 2)
            normalized = (x - center.float().repeat_interleave(self.group, 2)) / scale
            return normalized, center, half, x.new_zeros((batch, heads, n, 0), dtype=torch.long)
        normalized = (x - self.center[None, :, None]) / self.half[None, :, None]
        return normalized, None, None, _top_deviations(normalized, self.outliers)

    def quantize(self, x: torch.Tensor) -> PackedTensor:
        """Pack rows x [batch, heads, n, dim] (n a multiple of `block`)."""
        normalized, center, half, idx = self.normalize(x)
        codes = nearest_level(normalized, self.codebook)
        return PackedTensor(
            codes=pack_codes(codes, self.bits),
            center=center,
            half=half,
            outlier_idx=idx.to(torch.uint8),
            outlier_val=x.gather(3, idx).to(_STORE_DTYPE),
            token_group=1 if self.per_token else self.group,
        )

    def ranges(self, packed: PackedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(center, half) as the broadcast grid the kernels take."""
        if packed.center is not None:
            return packed.center, packed.half
        return self.center.unsqueeze(0).unsqueeze(2), self.half.unsqueeze(0).unsqueeze(2)

    def rows(self, packed: PackedTensor) -> PackedRows:
        """What the kernels take to dequantize `packed`."""
        center, half = self.ranges(packed)
        return PackedRows(packed.codes, self.bits, self.codebook, center, half, packed.outlier_idx, packed.outlier_val)

    def dequantize_into(
        self, out: torch.Tensor, start: int, packed: PackedTensor, skip: int = 0, cos=None, sin=None
    ) -> None:
        dequantize_into(out, start, *self.rows(packed), skip, cos, sin)

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """x after quantization and dequantization (for error measurements)."""
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        self.dequantize_into(out, 0, self.quantize(x))
        return out


@dataclass
class KVQuantizer:
    """Keys and values of one layer; `pre_rope` keys are quantized before the rotary embedding."""

    keys: TensorQuantizer
    values: TensorQuantizer
    pre_rope: bool

    @property
    def block(self) -> int:
        return max(self.keys.block, self.values.block)

    def to(self, device: torch.device) -> KVQuantizer:
        return replace(self, keys=self.keys.to(device), values=self.values.to(device))


def nearest_level(normalized: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook level for every entry; codebook [1 or heads, levels] sorted."""
    midpoints = (codebook[:, 1:] + codebook[:, :-1]) / 2
    if codebook.shape[0] == 1:
        return torch.bucketize(normalized.contiguous(), midpoints[0])
    heads = codebook.shape[0]
    rows = normalized.transpose(0, 1).reshape(heads, -1).contiguous()
    codes = torch.searchsorted(midpoints.contiguous(), rows)
    return codes.reshape(heads, normalized.shape[0], *normalized.shape[2:]).transpose(0, 1)


def _top_deviations(deviation: torch.Tensor, k: int) -> torch.Tensor:
    if k == 0:
        return deviation.new_zeros((*deviation.shape[:-1], 0), dtype=torch.long)
    return deviation.abs().topk(k, dim=-1).indices


def _stored_range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    center = ((hi + lo) / 2).to(_STORE_DTYPE)
    half = ((hi - lo) / 2).clamp_min(_MIN_HALF).to(_STORE_DTYPE)
    return center, half
