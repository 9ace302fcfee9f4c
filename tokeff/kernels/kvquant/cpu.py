"""Numba kernels for the CPU.

- `dequantize_into_cpu`: one pass per row (unpack, codebook, scale, outliers, RoPE), written straight
  into the attention buffer, rows in parallel. The torch reference takes about a dozen passes and
  temporaries over the same data.
- `attend_cpu`: dequantize-and-attend. Each (sequence, KV head, block of tokens) dequantizes its
  rows one at a time and folds them into an online softmax for every query head of the group, so
  the packed cache is read once and no float copy of it is written; one more block per KV head
  takes the full-precision rows. The blocks' partial softmaxes are merged at the end
  (flash-decoding's split over tokens), in Numba too: torch's small ops would cost more than the
  kernel on short contexts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange


_ATTEND_BLOCK = 256  # tokens per parallel unit of `attend_cpu`


@njit(inline="always")
def _dequantize_row(dst, codes, b, h, t, bits, codebook, center, half, outlier_idx, outlier_val, n):
    """Row (b, h, t) of the packed tensor into `dst` (length dim), outliers applied, no RoPE.

    Codes are read 8 at a time: 8 codes of `bits` bits are exactly `bits` bytes (packing.py), one
    32-bit word, so there is no per-code byte arithmetic; ranges are per row or per channel."""
    dim = dst.shape[0]
    grid_b, grid_h, grid_t, grid_d = center.shape
    book = codebook[h if codebook.shape[0] > 1 else 0]
    gb = b if grid_b > 1 else 0
    gh = h if grid_h > 1 else 0
    gt = t // (n // grid_t)
    row_center = center[gb, gh, gt]
    row_half = half[gb, gh, gt]
    row = codes[b, h, t]
    mask = np.uint32((1 << bits) - 1)
    for group in range(dim // 8):
        word = np.uint32(0)
        for j in range(bits):
            word |= np.uint32(row[group * bits + j]) << np.uint32(8 * j)
        for j in range(8):
            c = group * 8 + j
            level = book[(word >> np.uint32(bits * j)) & mask]
            if grid_d == 1:
                dst[c] = row_center[0] + row_half[0] * level
            elif grid_d == dim:
                dst[c] = row_center[c] + row_half[c] * level
            else:
                dst[c] = row_center[c // (dim // grid_d)] + row_half[c // (dim // grid_d)] * level
    for j in range(outlier_idx.shape[3]):
        dst[outlier_idx[b, h, t, j]] = outlier_val[b, h, t, j]


@njit(inline="always")
def _rotate(dst, src, cos, sin, p):
    """dst = RoPE of src at table row p (rotate-half convention)."""
    half_dim = src.shape[0] // 2
    for c in range(half_dim):
        x1 = src[c]
        x2 = src[c + half_dim]
        dst[c] = x1 * cos[p, c] - x2 * sin[p, c]
        dst[c + half_dim] = x2 * cos[p, c + half_dim] + x1 * sin[p, c + half_dim]


@njit(parallel=True, cache=True)
def _dequantize_rows(out, out_start, codes, bits, codebook, center, half, outlier_idx, outlier_val, skip, cos, sin, rope):
    batch, heads, n, _ = codes.shape
    dim = out.shape[3]
    rows = n - skip
    for row in prange(batch * heads * rows):
        b = row // (heads * rows)
        h = (row // rows) % heads
        t = row % rows + skip
        o = out_start + t - skip
        scratch = np.empty(dim, np.float32)
        _dequantize_row(scratch, codes, b, h, t, bits, codebook, center, half, outlier_idx, outlier_val, n)
        if rope:
            _rotate(out[b, h, o], scratch, cos, sin, t - skip)
        else:
            out[b, h, o, :] = scratch


@njit(inline="always")
def _fold(queries, key, value, bias, b, column, has_bias, q_len, running_max, running_sum, acc):
    """One key/value row into the online softmax of every query row (group member, position)."""
    for col in range(queries.shape[0]):
        score = np.float32(0.0)
        for c in range(key.shape[0]):
            score += queries[col, c] * key[c]
        if has_bias:
            score += bias[b, col % q_len, column]
        if score == -np.inf:
            continue
        if score > running_max[col]:
            correction = math.exp(running_max[col] - score)
            running_sum[col] *= correction
            for c in range(value.shape[0]):
                acc[col, c] *= correction
            running_max[col] = score
        weight = math.exp(score - running_max[col])
        running_sum[col] += weight
        for c in range(value.shape[0]):
            acc[col, c] += weight * value[c]


@njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract", "reassoc"})  # no "ninf": masks are -inf
def _attend_blocks(
    query, scaling, skip, block,
    k_codes, k_bits, k_book, k_center, k_half, k_idx, k_val,
    v_codes, v_bits, v_book, v_center, v_half, v_idx, v_val,
    cos, sin, rope, bias, has_bias,
    dense_keys, dense_values, dense_bias, has_dense_bias,
    acc_out, max_out, sum_out,
):
    """Partial attention per block, as an online softmax: blocks of packed tokens, then one block of
    the dense rows. acc_out [B, Hq, q, blocks, Dv] (unnormalized), max_out and sum_out [B, Hq, q,
    blocks] (the block's running score maximum and the softmax denominator relative to it)."""
    batch, kv_heads, n, _ = k_codes.shape
    q_heads, q_len, dim = query.shape[1], query.shape[2], query.shape[3]
    v_dim = acc_out.shape[4]
    groups = q_heads // kv_heads
    blocks = acc_out.shape[3]
    width = groups * q_len  # query rows sharing one KV head: (group member, position)
    for unit in prange(batch * kv_heads * blocks):
        b = unit // (kv_heads * blocks)
        h = (unit // blocks) % kv_heads
        blk = unit % blocks
        queries = np.empty((width, dim), np.float32)
        for g in range(groups):
            for i in range(q_len):
                queries[g * q_len + i] = query[b, h * groups + g, i] * scaling
        running_max = np.full(width, -np.inf, np.float32)
        running_sum = np.zeros(width, np.float32)
        acc = np.zeros((width, v_dim), np.float32)
        if blk == blocks - 1:  # the dense rows
            for r in range(dense_keys.shape[2]):
                _fold(queries, dense_keys[b, h, r], dense_values[b, h, r], dense_bias, b, r, has_dense_bias, q_len,
                      running_max, running_sum, acc)
        else:
            raw = np.empty(dim, np.float32)
            key = np.empty(dim, np.float32)
            value = np.empty(v_dim, np.float32)
            first = skip + blk * block
            for t in range(first, min(n, first + block)):
                if rope:
                    _dequantize_row(raw, k_codes, b, h, t, k_bits, k_book, k_center, k_half, k_idx, k_val, n)
                    _rotate(key, raw, cos, sin, t - skip)
                else:
                    _dequantize_row(key, k_codes, b, h, t, k_bits, k_book, k_center, k_half, k_idx, k_val, n)
                _dequantize_row(value, v_codes, b, h, t, v_bits, v_book, v_center, v_half, v_idx, v_val, n)
                _fold(queries, key, value, bias, b, t - skip, has_bias, q_len, running_max, running_sum, acc)
        for col in range(width):
            g, i = col // q_len, col % q_len
            max_out[b, h * groups + g, i, blk] = running_max[col]
            sum_out[b, h * groups + g, i, blk] = running_sum[col]
            acc_out[b, h * groups + g, i, blk, :] = acc[col]


@njit(cache=True)
def _merge_blocks(acc, maxima, sums):
    """reference.merge_blocks inside Numba: torch's dozen small ops would cost more than the kernel
    on short contexts. Returns out [..., Dv] and lse [...] (flattened leading axes)."""
    rows, blocks, v_dim = acc.shape
    out = np.zeros((rows, v_dim), np.float32)
    lse = np.full(rows, -np.inf, np.float32)
    for r in range(rows):
        top = -np.inf
        for k in range(blocks):
            if sums[r, k] > 0:
                top = max(top, maxima[r, k])
        if top == -np.inf:
            continue
        total = 0.0
        for k in range(blocks):
            if sums[r, k] > 0:
                weight = math.exp(maxima[r, k] - top)
                total += sums[r, k] * weight
                out[r] += acc[r, k] * np.float32(weight)
        out[r] /= np.float32(total)
        lse[r] = top + math.log(total)
    return out, lse


def _f32(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float32 array (one Numba specialization), without copying what already is one:
    these conversions run for every layer at every step."""
    if tensor.dtype != torch.float32 or not tensor.is_contiguous():
        tensor = tensor.float().contiguous()
    return tensor.detach().numpy()


_EMPTY = np.zeros((1, 1), np.float32)


def _packed_args(rows) -> tuple:
    codes, bits, codebook, center, half, outlier_idx, outlier_val = rows
    return (codes.contiguous().numpy(), bits, _f32(codebook), _f32(center), _f32(half),
            outlier_idx.contiguous().numpy(), _f32(outlier_val))


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
    _dequantize_rows(
        out.numpy(), out_start, *_packed_args((codes, bits, codebook, center, half, outlier_idx, outlier_val)), skip,
        _f32(cos) if rope else _EMPTY, _f32(sin) if rope else _EMPTY, rope,
    )


def attend_cpu(query, keys, values, scaling, skip, cos, sin, bias, dense=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`attend_reference`'s contract (see reference.py) on float32 CPU tensors."""
    batch, q_heads, q_len, _ = query.shape
    rows = keys.codes.shape[2] - skip
    v_dim = values.codes.shape[3] * 8 // values.bits
    blocks = -(-rows // _ATTEND_BLOCK) + 1  # the last block holds the dense rows (maybe none)
    acc = np.empty((batch, q_heads, q_len, blocks, v_dim), np.float32)
    maxima = np.empty((batch, q_heads, q_len, blocks), np.float32)
    sums = np.empty((batch, q_heads, q_len, blocks), np.float32)
    rope = cos is not None
    no_rows = np.zeros((batch, keys.codes.shape[1], 0, 1), np.float32)
    no_bias = np.zeros((1, 1, 1), np.float32)
    dense_keys = _f32(dense.keys) if dense is not None else no_rows
    dense_values = _f32(dense.values) if dense is not None else no_rows
    dense_bias = dense.bias if dense is not None else None
    _attend_blocks(
        _f32(query), np.float32(scaling), skip, _ATTEND_BLOCK, *_packed_args(keys), *_packed_args(values),
        _f32(cos) if rope else _EMPTY, _f32(sin) if rope else _EMPTY, rope,
        _f32(bias) if bias is not None else no_bias, bias is not None,
        dense_keys, dense_values, _f32(dense_bias) if dense_bias is not None else no_bias, dense_bias is not None,
        acc, maxima, sums,
    )
    out, lse = _merge_blocks(acc.reshape(-1, blocks, v_dim), maxima.reshape(-1, blocks), sums.reshape(-1, blocks))
    return torch.from_numpy(out).reshape(batch, q_heads, q_len, v_dim), torch.from_numpy(lse).reshape(batch, q_heads, q_len)
