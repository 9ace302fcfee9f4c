"""Low-bit codes as a little-endian bitstream: code j of a row occupies bits [j*b, (j+1)*b).

Eight b-bit codes fill exactly b bytes, so rows whose length is a multiple of 8 pack without padding
for every width (3 bits included), and any single code can be read from at most two bytes, which is
what the Numba and Triton dequantizers do. No torch or NumPy routine packs sub-byte widths, hence
these few lines.
"""

from __future__ import annotations

import torch

def packed_width(dim: int, bits: int) -> int:
    """Bytes per packed row of `dim` codes."""
    if dim % 8:
        raise ValueError(f"rows of {dim} codes cannot be packed: the length must be a multiple of 8")
    return dim // 8 * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2**bits) of shape [..., dim] -> uint8 [..., dim * bits / 8]."""
    dim = codes.shape[-1]
    width = packed_width(dim, bits)
    groups = codes.to(torch.int64).reshape(*codes.shape[:-1], dim // 8, 8)
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    words = (groups << shifts).sum(-1)  # 8 codes -> one integer of 8*bits bits
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    packed = (words.unsqueeze(-1) >> byte_shifts) & 0xFF
    return packed.reshape(*codes.shape[:-1], width).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 [..., dim * bits / 8] -> int64 codes [..., dim]."""
    groups = packed.to(torch.int64).reshape(*packed.shape[:-1], dim // 8, bits)
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    words = (groups << byte_shifts).sum(-1)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], dim)
