"""Triton kernels for the GPU, on tiles of (tokens x channels) read straight from the packed bytes,
the codebook, the rows' ranges and their few outliers:

- `dequantize_into_gpu`: one program per block of rows of one KV head, writing the (rotated) float
  rows into the attention buffer;
- `attend_gpu`: dequantize-and-attend, one program per (query row, block of tokens): scores, the
  block's softmax and its weighted values, merged over blocks afterwards (flash-decoding's split).

Importable without Triton; `AVAILABLE` says whether they run.
"""

from __future__ import annotations

import torch

from tokeff.kernels.kvquant.reference import DenseRows, PackedRows, merge_attention, merge_blocks, softmax_attention

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the Numba kernels and the torch reference serve instead
    triton = None

AVAILABLE = triton is not None
_ROWS = 16  # tokens per program of the dequantization kernel
_ATTEND_ROWS = 64  # tokens per program of the attention kernel

if AVAILABLE:

    @triton.jit
    def _dequantize_tile(
        src, t, valid_t, c, codes_ptr, row_bytes, codebook_ptr, book_len, book, center_ptr, half_ptr,
        grid_base, grid_t, token_group, grid_d, idx_ptr, val_ptr,
        BITS: tl.constexpr, N_OUTLIERS: tl.constexpr, DIM: tl.constexpr,
    ):
        """Values [tokens, channels] of channels `c` of rows `src` (flat row ids; `t` their token index)."""
        bit = c * BITS
        byte = bit >> 3
        shift = bit & 7
        valid = valid_t[:, None] & (c < DIM)[None, :]
        row = codes_ptr + src[:, None] * row_bytes + byte[None, :]
        lo = tl.load(row, mask=valid, other=0).to(tl.int32)
        hi = tl.load(row + 1, mask=valid & (byte + 1 < row_bytes)[None, :], other=0).to(tl.int32)
        code = ((lo | (hi << 8)) >> shift[None, :]) & ((1 << BITS) - 1)
        level = tl.load(codebook_ptr + book * book_len + code, mask=valid, other=0.0)
        grid = (grid_base + t // token_group)[:, None] * grid_d + (c // (DIM // grid_d))[None, :]
        center = tl.load(center_ptr + grid, mask=valid, other=0.0)
        half = tl.load(half_ptr + grid, mask=valid, other=0.0)
        x = center + half * level
        for j in tl.static_range(N_OUTLIERS):
            where = tl.load(idx_ptr + src * N_OUTLIERS + j, mask=valid_t, other=0).to(tl.int32)
            value = tl.load(val_ptr + src * N_OUTLIERS + j, mask=valid_t, other=0.0).to(tl.float32)
            x = tl.where(c[None, :] == where[:, None], value[:, None], x)
        return x

    @triton.jit
    def _rows(
        b, h, t, valid_t, codes_ptr, codebook_ptr, center_ptr, half_ptr, idx_ptr, val_ptr, cos_ptr, sin_ptr,
        heads, n, skip, row_bytes, book_len, n_books, grid_b, grid_h, grid_t, grid_d,
        BITS: tl.constexpr, DIM: tl.constexpr, N_OUTLIERS: tl.constexpr, ROPE: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Dequantized (and, with ROPE, rotated) rows `t` of KV head h of sequence b: [tokens, BLOCK_D]."""
        src = (b * heads + h) * n + t
        book = tl.where(n_books > 1, h, 0)
        gb = tl.where(grid_b > 1, b, 0)
        gh = tl.where(grid_h > 1, h, 0)
        grid_base = (gb * grid_h + gh) * grid_t
        c = tl.arange(0, BLOCK_D)
        x = _dequantize_tile(src, t, valid_t, c, codes_ptr, row_bytes, codebook_ptr, book_len, book, center_ptr,
                             half_ptr, grid_base, grid_t, n // grid_t, grid_d, idx_ptr, val_ptr, BITS, N_OUTLIERS, DIM)
        if ROPE:
            # rotate_half pairs channel c with c +- DIM/2: dequantize the partner too rather than shuffle registers.
            partner = (c + DIM // 2) % DIM
            xp = _dequantize_tile(src, t, valid_t, partner, codes_ptr, row_bytes, codebook_ptr, book_len, book,
                                  center_ptr, half_ptr, grid_base, grid_t, n // grid_t, grid_d, idx_ptr, val_ptr,
                                  BITS, N_OUTLIERS, DIM)
            table = (t - skip)[:, None] * DIM + c[None, :]
            valid = valid_t[:, None] & (c < DIM)[None, :]
            cos = tl.load(cos_ptr + table, mask=valid, other=0.0)
            sin = tl.load(sin_ptr + table, mask=valid, other=0.0)
            sign = tl.where(c < DIM // 2, -1.0, 1.0)
            x = x * cos + sign[None, :] * xp * sin
        return x

    @triton.jit
    def _dequantize_kernel(
        out_ptr, codes_ptr, codebook_ptr, center_ptr, half_ptr, idx_ptr, val_ptr, cos_ptr, sin_ptr,
        heads, n, skip, out_start, out_len, row_bytes, book_len, n_books, grid_b, grid_h, grid_t, grid_d,
        BITS: tl.constexpr, DIM: tl.constexpr, N_OUTLIERS: tl.constexpr, ROPE: tl.constexpr, BLOCK_D: tl.constexpr,
        ROWS: tl.constexpr,
    ):
        bh = tl.program_id(0)
        b = bh // heads
        h = bh % heads
        t = skip + tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        valid_t = t < n
        x = _rows(b, h, t, valid_t, codes_ptr, codebook_ptr, center_ptr, half_ptr, idx_ptr, val_ptr, cos_ptr, sin_ptr,
                  heads, n, skip, row_bytes, book_len, n_books, grid_b, grid_h, grid_t, grid_d,
                  BITS, DIM, N_OUTLIERS, ROPE, BLOCK_D)
        c = tl.arange(0, BLOCK_D)
        dst = ((bh * out_len + out_start + t - skip) * DIM)[:, None] + c[None, :]
        tl.store(out_ptr + dst, x.to(out_ptr.dtype.element_ty), mask=valid_t[:, None] & (c < DIM)[None, :])

    @triton.jit
    def _attend_kernel(
        q_ptr, bias_ptr, acc_ptr, max_ptr, sum_ptr, scaling, q_heads, q_len, blocks,
        k_codes, k_book, k_center, k_half, k_idx, k_val, cos_ptr, sin_ptr,
        v_codes, v_book, v_center, v_half, v_idx, v_val,
        kv_heads, n, skip, k_bytes, k_book_len, k_books, k_gb, k_gh, k_gt, k_gd,
        v_bytes, v_book_len, v_books, v_gb, v_gh, v_gt, v_gd,
        K_BITS: tl.constexpr, V_BITS: tl.constexpr, DIM: tl.constexpr, V_DIM: tl.constexpr,
        K_OUTLIERS: tl.constexpr, V_OUTLIERS: tl.constexpr, ROPE: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr, ROWS: tl.constexpr,
    ):
        query_row = tl.program_id(0)  # (b, q head, i) flattened
        blk = tl.program_id(1)
        i = query_row % q_len
        qh = (query_row // q_len) % q_heads
        b = query_row // (q_len * q_heads)
        h = qh // (q_heads // kv_heads)
        t = skip + blk * ROWS + tl.arange(0, ROWS)
        valid_t = t < n
        c = tl.arange(0, BLOCK_D)
        query = tl.load(q_ptr + query_row * DIM + c, mask=c < DIM, other=0.0)
        keys = _rows(b, h, t, valid_t, k_codes, k_book, k_center, k_half, k_idx, k_val, cos_ptr, sin_ptr,
                     kv_heads, n, skip, k_bytes, k_book_len, k_books, k_gb, k_gh, k_gt, k_gd,
                     K_BITS, DIM, K_OUTLIERS, ROPE, BLOCK_D)
        scores = tl.sum(keys * query[None, :], axis=1) * scaling
        if HAS_BIAS:
            scores += tl.load(bias_ptr + (b * q_len + i) * (n - skip) + t - skip, mask=valid_t, other=0.0)
        scores = tl.where(valid_t, scores, float("-inf"))
        top = tl.max(scores, axis=0)
        weights = tl.where(scores > float("-inf"), tl.exp(scores - top), 0.0)
        values = _rows(b, h, t, valid_t, v_codes, v_book, v_center, v_half, v_idx, v_val, cos_ptr, sin_ptr,
                       kv_heads, n, skip, v_bytes, v_book_len, v_books, v_gb, v_gh, v_gt, v_gd,
                       V_BITS, V_DIM, V_OUTLIERS, False, BLOCK_V)
        cv = tl.arange(0, BLOCK_V)
        acc = tl.sum(weights[:, None] * values, axis=0)
        part = query_row * blocks + blk
        tl.store(acc_ptr + part * V_DIM + cv, acc, mask=cv < V_DIM)
        tl.store(max_ptr + part, top)
        tl.store(sum_ptr + part, tl.sum(weights, axis=0))


def _packed(rows: PackedRows) -> tuple[list, list, dict]:
    """Tensor arguments, scalar arguments and constexprs of one packed tensor."""
    codes, bits, codebook, center, half, outlier_idx, outlier_val = rows
    tensors = [codes.contiguous(), codebook.float().contiguous(), center.float().contiguous(), half.float().contiguous(),
               outlier_idx.contiguous(), outlier_val.contiguous()]
    scalars = [codes.shape[3], codebook.shape[1], codebook.shape[0], *center.shape]
    return tensors, scalars, {"bits": bits, "dim": codes.shape[3] * 8 // bits, "outliers": outlier_idx.shape[-1]}


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
    batch, heads, n, _ = codes.shape
    if n - skip <= 0:
        return
    tensors, scalars, const = _packed(PackedRows(codes, bits, codebook, center, half, outlier_idx, outlier_val))
    rope = cos is not None
    dummy = codebook.new_zeros(1, dtype=torch.float32)
    codes_t, book, center_t, half_t, idx, val = tensors
    row_bytes, book_len, n_books, *grid = scalars
    _dequantize_kernel[(batch * heads, triton.cdiv(n - skip, _ROWS))](
        out, codes_t, book, center_t, half_t, idx, val,
        cos.float().contiguous() if rope else dummy, sin.float().contiguous() if rope else dummy,
        heads, n, skip, out_start, out.shape[2], row_bytes, book_len, n_books, *grid,
        BITS=bits, DIM=const["dim"], N_OUTLIERS=const["outliers"], ROPE=rope, BLOCK_D=triton.next_power_of_2(const["dim"]),
        ROWS=_ROWS,
    )


def attend_gpu(
    query, keys: PackedRows, values: PackedRows, scaling, skip, cos, sin, bias, dense: DenseRows | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attend_reference`'s contract (see reference.py) on CUDA tensors. The few full-precision
    `dense` rows go through torch and are merged into the kernel's softmax."""
    batch, q_heads, q_len, dim = query.shape
    kv_heads, n = keys.codes.shape[1], keys.codes.shape[2]
    blocks = max(1, triton.cdiv(n - skip, _ATTEND_ROWS))
    k_tensors, k_scalars, k_const = _packed(keys)
    v_tensors, v_scalars, v_const = _packed(values)
    device = query.device
    acc = torch.empty(batch, q_heads, q_len, blocks, v_const["dim"], device=device)
    maxima = torch.empty(batch, q_heads, q_len, blocks, device=device)
    sums = torch.empty(batch, q_heads, q_len, blocks, device=device)
    rope = cos is not None
    dummy = torch.zeros(1, device=device)
    _attend_kernel[(batch * q_heads * q_len, blocks)](
        query.float().contiguous(), bias.float().contiguous() if bias is not None else dummy, acc, maxima, sums,
        float(scaling), q_heads, q_len, blocks,
        *k_tensors, cos.float().contiguous() if rope else dummy, sin.float().contiguous() if rope else dummy,
        *v_tensors, kv_heads, n, skip, *k_scalars, *v_scalars,
        K_BITS=k_const["bits"], V_BITS=v_const["bits"], DIM=dim, V_DIM=v_const["dim"],
        K_OUTLIERS=k_const["outliers"], V_OUTLIERS=v_const["outliers"], ROPE=rope, HAS_BIAS=bias is not None,
        BLOCK_D=triton.next_power_of_2(dim), BLOCK_V=triton.next_power_of_2(v_const["dim"]), ROWS=_ATTEND_ROWS,
    )
    out, lse = merge_blocks(acc, maxima, sums)
    if dense is None:
        return out, lse
    extra_out, extra_lse = softmax_attention(query, dense.keys, dense.values, scaling, dense.bias)
    return merge_attention(torch.stack([out, extra_out], -2), torch.stack([lse, extra_lse], -1))
