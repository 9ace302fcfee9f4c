"""Numba dequantization for the CPU: one pass per row (unpack, codebook, scale, outliers, RoPE),
written straight into the attention buffer, rows in parallel. The torch reference takes about a
dozen passes and temporaries over the same data."""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange


@njit(parallel=True, cache=True)
def _dequantize_rows(out, out_start, codes, bits, codebook, center, half, outlier_idx, outlier_val, skip, cos, sin, rope):
    batch, heads, n, _ = codes.shape
    dim = out.shape[3]
    rows = n - skip
    grid_b, grid_h, grid_t, grid_d = center.shape
    token_group = n // grid_t
    channel_group = dim // grid_d
    n_outliers = outlier_idx.shape[3]
    mask = (1 << bits) - 1
    half_dim = dim // 2
    for row in prange(batch * heads * rows):
        b = row // (heads * rows)
        h = (row // rows) % heads
        t = row % rows + skip
        o = out_start + t - skip
        book = h if codebook.shape[0] > 1 else 0
        gb = b if grid_b > 1 else 0
        gh = h if grid_h > 1 else 0
        gt = t // token_group
        for c in range(dim):
            bit = c * bits
            byte = bit >> 3
            shift = bit & 7
            value = np.int32(codes[b, h, t, byte]) >> shift
            if shift + bits > 8:
                value |= np.int32(codes[b, h, t, byte + 1]) << (8 - shift)
            gc = c // channel_group
            out[b, h, o, c] = center[gb, gh, gt, gc] + half[gb, gh, gt, gc] * codebook[book, value & mask]
        for j in range(n_outliers):
            out[b, h, o, outlier_idx[b, h, t, j]] = outlier_val[b, h, t, j]
        if rope:
            p = t - skip
            for c in range(half_dim):
                x1 = out[b, h, o, c]
                x2 = out[b, h, o, c + half_dim]
                out[b, h, o, c] = x1 * cos[p, c] - x2 * sin[p, c]
                out[b, h, o, c + half_dim] = x2 * cos[p, c + half_dim] + x1 * sin[p, c + half_dim]


def _f32(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()


def dequantize_into_cpu(
    out: torch.Tensor,
    out_start: int,
    codes: torch.Tensor,
    bits: int,
    codebook: torch.Tensor,
    center: torch.Tensor,
    half: torch.Tensor,
    outlier_idx: torch.Tensor,
    outlier_val: torch.Tensor,
    skip: int,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
) -> None:
    """Write rows `skip..n` of the dequantized tensor into `out[:, :, out_start:]` (a contiguous float32 CPU tensor)."""
    rope = cos is not None
    empty = np.zeros((1, 1), np.float32)
    _dequantize_rows(
        out.numpy(),
        out_start,
        codes.contiguous().numpy(),
        bits,
        _f32(codebook),
        _f32(center),
        _f32(half),
        outlier_idx.contiguous().numpy(),
        _f32(outlier_val),
        skip,
        _f32(cos) if rope else empty,
        _f32(sin) if rope else empty,
        rope,
    )
