"""Triton dequantization for the GPU: one program per row (one token of one KV head), reading only
the packed bytes, the codebook, the row's scale and its few outliers, and writing the rotated
float row into the attention buffer. Importable without Triton; `AVAILABLE` says whether it runs."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the Numba kernel and the torch reference serve instead
    triton = None

AVAILABLE = triton is not None

if AVAILABLE:

    @triton.jit
    def _dequantize_row(
        x_idx, codes_ptr, row_bytes, codebook_ptr, book_len, book, center_ptr, half_ptr, grid_row, gc_div,
        idx_ptr, val_ptr,
        BITS: tl.constexpr, N_OUTLIERS: tl.constexpr, BLOCK_D: tl.constexpr, DIM: tl.constexpr,
    ):
        """Dequantized value of channels `x_idx` of one row, its outliers applied."""
        bit = x_idx * BITS
        byte = bit >> 3
        shift = bit & 7
        valid = x_idx < DIM
        lo = tl.load(codes_ptr + byte, mask=valid, other=0).to(tl.int32)
        hi = tl.load(codes_ptr + byte + 1, mask=valid & (byte + 1 < row_bytes), other=0).to(tl.int32)
        code = ((lo | (hi << 8)) >> shift) & ((1 << BITS) - 1)
        level = tl.load(codebook_ptr + book * book_len + code, mask=valid, other=0.0)
        gc = x_idx // gc_div
        center = tl.load(center_ptr + grid_row + gc, mask=valid, other=0.0)
        half = tl.load(half_ptr + grid_row + gc, mask=valid, other=0.0)
        x = center + half * level
        for j in tl.static_range(N_OUTLIERS):
            where = tl.load(idx_ptr + j).to(tl.int32)
            x = tl.where(x_idx == where, tl.load(val_ptr + j).to(tl.float32), x)
        return x

    @triton.jit
    def _dequantize_kernel(
        out_ptr, codes_ptr, codebook_ptr, center_ptr, half_ptr, idx_ptr, val_ptr, cos_ptr, sin_ptr,
        heads, n, skip, out_start, out_len, row_bytes, book_len, n_books,
        grid_b, grid_h, grid_t, grid_d,
        BITS: tl.constexpr, DIM: tl.constexpr, N_OUTLIERS: tl.constexpr, ROPE: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0)
        rows = n - skip
        b = row // (heads * rows)
        h = (row // rows) % heads
        t = row % rows + skip
        src = (b * heads + h) * n + t
        book = tl.where(n_books > 1, h, 0)
        gb = tl.where(grid_b > 1, b, 0)
        gh = tl.where(grid_h > 1, h, 0)
        gt = t // (n // grid_t)
        grid_row = ((gb * grid_h + gh) * grid_t + gt) * grid_d
        gc_div = DIM // grid_d
        c = tl.arange(0, BLOCK_D)
        row_codes = codes_ptr + src * row_bytes
        row_idx = idx_ptr + src * N_OUTLIERS
        row_val = val_ptr + src * N_OUTLIERS
        x = _dequantize_row(c, row_codes, row_bytes, codebook_ptr, book_len, book, center_ptr, half_ptr, grid_row,
                            gc_div, row_idx, row_val, BITS, N_OUTLIERS, BLOCK_D, DIM)
        if ROPE:
            # rotate_half pairs channel c with c +- DIM/2: dequantize the partner too rather than shuffle registers.
            partner = (c + DIM // 2) % DIM
            xp = _dequantize_row(partner, row_codes, row_bytes, codebook_ptr, book_len, book, center_ptr, half_ptr,
                                 grid_row, gc_div, row_idx, row_val, BITS, N_OUTLIERS, BLOCK_D, DIM)
            p = t - skip
            cos = tl.load(cos_ptr + p * DIM + c, mask=c < DIM, other=0.0)
            sin = tl.load(sin_ptr + p * DIM + c, mask=c < DIM, other=0.0)
            sign = tl.where(c < DIM // 2, -1.0, 1.0)
            x = x * cos + sign * xp * sin
        dst = ((b * heads + h) * out_len + out_start + t - skip) * DIM
        tl.store(out_ptr + dst + c, x.to(out_ptr.dtype.element_ty), mask=c < DIM)


def dequantize_into_gpu(
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
    """Same contract as the CPU kernel; `out` is a contiguous tensor on the codes' device."""
    batch, heads, n, row_bytes = codes.shape
    dim = out.shape[-1]
    rows = batch * heads * (n - skip)
    if rows == 0:
        return
    rope = cos is not None
    dummy = codebook.new_zeros(1)
    _dequantize_kernel[(rows,)](
        out, codes.contiguous(), codebook.float().contiguous(), center.float().contiguous(),
        half.float().contiguous(), outlier_idx.contiguous(), outlier_val.contiguous(),
        cos.float().contiguous() if rope else dummy, sin.float().contiguous() if rope else dummy,
        heads, n, skip, out_start, out.shape[2], row_bytes, codebook.shape[1], codebook.shape[0],
        *center.shape,
        BITS=bits, DIM=dim, N_OUTLIERS=outlier_idx.shape[-1], ROPE=rope, BLOCK_D=triton.next_power_of_2(dim),
    )
