"""Plain torch dequantization: the definition the Numba and Triton kernels are tested against.

A quantized row (one token of one KV head) is `dim` codes into a sorted codebook of normalized
levels; the value of channel c is `center + half * codebook[code]`, where `center` and `half`
broadcast from a [B', H', T', D'] grid (B' in {1, batch}, H' in {1, heads}, T' dividing the
token count: 1 = calibrated per-channel constants, n / G = one per group of G tokens, n = one per
token; D' in {1, dim}). A few channels per row are stored exactly (sparse outliers) and replace
the dense value. Keys quantized before RoPE get the rotation applied after dequantization.

`attend_reference` is attention straight over packed rows, the contract of the fused kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tokeff.kernels.kvquant.packing import unpack_codes


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotate-half convention of Llama/Gemma RoPE: (x1, x2) -> (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def dequantize_reference(
    codes: torch.Tensor,
    bits: int,
    codebook: torch.Tensor,
    center: torch.Tensor,
    half: torch.Tensor,
    outlier_idx: torch.Tensor,
    outlier_val: torch.Tensor,
    skip: int = 0,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 [batch, heads, n - skip, dim] from packed codes [batch, heads, n, dim * bits / 8]."""
    batch, heads, n, width = codes.shape
    dim = width * 8 // bits
    index = unpack_codes(codes, bits, dim)
    book = codebook.float()
    if book.shape[0] == 1:
        x = book[0][index]
    else:  # one codebook per head
        x = torch.gather(book[None, :, None, :].expand(batch, heads, n, book.shape[1]), 3, index)
    grid_b, grid_h, grid_t, grid_d = center.shape
    shape = (batch, heads, grid_t, n // grid_t, grid_d, dim // grid_d)
    scale = half.float().reshape(grid_b, grid_h, grid_t, 1, grid_d, 1)
    offset = center.float().reshape(grid_b, grid_h, grid_t, 1, grid_d, 1)
    x = (offset + scale * x.reshape(shape)).reshape(batch, heads, n, dim)
    if outlier_idx.shape[-1]:
        x = x.scatter(3, outlier_idx.long(), outlier_val.float())
    x = x[:, :, skip:]
    if cos is not None:
        x = x * cos.float() + rotate_half(x) * sin.float()
    return x


class PackedRows(NamedTuple):
    """One packed K or V tensor with everything needed to dequantize it (the arguments above)."""

    codes: torch.Tensor
    bits: int
    codebook: torch.Tensor
    center: torch.Tensor
    half: torch.Tensor
    outlier_idx: torch.Tensor
    outlier_val: torch.Tensor


class DenseRows(NamedTuple):
    """Full-precision rows attended in the same softmax as packed ones (sinks, recent and new tokens)."""

    keys: torch.Tensor  # [batch, kv_heads, m, dim], RoPE already applied
    values: torch.Tensor  # [batch, kv_heads, m, v_dim]
    bias: torch.Tensor | None  # [batch, q, m]: 0 or -inf (a causal mask over new tokens)


def attend_reference(
    query: torch.Tensor,
    keys: PackedRows,
    values: PackedRows,
    scaling: float,
    skip: int = 0,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dense: DenseRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `query` [batch, q_heads, q, dim] over packed rows `skip..n` and `dense` rows: (out, lse).

    out [batch, q_heads, q, v_dim] is softmax(scores) @ values and lse [batch, q_heads, q] the natural
    log of the softmax's denominator, so that attention over more keys can be merged in afterwards.
    Query heads share key heads in groups (grouped-query attention); `bias` [batch, q, n - skip] is
    added to the packed rows' scores (a mask: 0 or -inf). A query that sees no key gets out 0, lse -inf.
    """
    k = dequantize_reference(*keys, skip, cos, sin)
    v = dequantize_reference(*values, skip)
    if dense is not None:
        batch, q_len = query.shape[0], query.shape[2]
        if bias is not None or dense.bias is not None:
            zeros = lambda m: torch.zeros(batch, q_len, m, device=query.device)  # noqa: E731
            bias = torch.cat([bias if bias is not None else zeros(k.shape[2]),
                              dense.bias if dense.bias is not None else zeros(dense.keys.shape[2])], -1)
        k, v = torch.cat([k, dense.keys.float()], 2), torch.cat([v, dense.values.float()], 2)
    return softmax_attention(query, k, v, scaling, bias)


def softmax_attention(query, keys, values, scaling: float, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of plain attention over float rows [batch, kv_heads, m, dim], heads shared in groups."""
    groups = query.shape[1] // keys.shape[1]
    k, v = keys.float().repeat_interleave(groups, 1), values.float().repeat_interleave(groups, 1)
    scores = query.float() @ k.transpose(-1, -2) * scaling
    if bias is not None:
        scores = scores + bias[:, None].float()
    lse = scores.logsumexp(-1)
    out = torch.softmax(scores, -1) @ v
    return torch.where(torch.isfinite(lse)[..., None], out, 0.0), lse


def merge_attention(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of disjoint key sets from each set's (out [..., parts, D], lse [..., parts])."""
    total = lse.logsumexp(-1)
    weight = torch.where(torch.isfinite(total)[..., None], torch.exp(lse - total[..., None]), 0.0)
    return (out * weight[..., None]).sum(-2), total


def merge_blocks(acc: torch.Tensor, maxima: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) from the kernels' per-block partial softmaxes: unnormalized acc [..., blocks, D],
    each block's score maximum and its denominator relative to it [..., blocks]."""
    seen = sums > 0
    safe = torch.where(seen, sums, 1.0)
    return merge_attention(acc / safe[..., None], torch.where(seen, maxima + torch.log(safe), -torch.inf))
