"""Packed low-bit KV rows, the hot loops of the quantized KV cache.

- `attend`: attention straight over packed rows (dequantize-and-attend), returning the softmax's
  log-denominator so that the cache merges in its full-precision tokens;
- `dequantize_into`: dequantized (and, for keys stored before RoPE, rotated) rows written into a
  float buffer.
Each runs as Triton on a CUDA device when Triton is installed, Numba for float32 on the CPU, and the
plain torch reference otherwise; all share one contract (see `reference`).
"""

from __future__ import annotations

import torch

from tokeff.kernels.kvquant.packing import pack_codes, packed_width, unpack_codes
from tokeff.kernels.kvquant.reference import (
    DenseRows,
    PackedRows,
    attend_reference,
    dequantize_reference,
    merge_attention,
    rotate_half,
)

__all__ = [
    "DenseRows",
    "PackedRows",
    "attend",
    "attend_reference",
    "dequantize_into",
    "dequantize_reference",
    "merge_attention",
    "pack_codes",
    "packed_width",
    "rotate_half",
    "unpack_codes",
]


def dequantize_into(
    out: torch.Tensor,
    out_start: int,
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
    backend: str = "auto",
) -> None:
    """Dequantize rows `skip..n` of `codes` [batch, heads, n, bytes] into `out[:, :, out_start:out_start + n - skip]`.

    `out` must be contiguous ([batch, heads, length, dim]); `backend` is auto, triton, numba or torch.
    """
    args = (codes, bits, codebook, center, half, outlier_idx, outlier_val, skip, cos, sin)
    if codes.shape[2] - skip <= 0:
        return
    if backend == "auto":
        backend = _pick_backend(out)
    if backend == "triton":
        from tokeff.kernels.kvquant.gpu import dequantize_into_gpu

        dequantize_into_gpu(out, out_start, *args)
    elif backend == "numba":
        from tokeff.kernels.kvquant.cpu import dequantize_into_cpu

        dequantize_into_cpu(out, out_start, *args)
    elif backend == "torch":
        rows = codes.shape[2] - skip
        out[:, :, out_start : out_start + rows] = dequantize_reference(*args).to(out.dtype)
    else:
        raise ValueError(f"unknown dequantization backend '{backend}'")


def attend(
    query: torch.Tensor,
    keys: PackedRows,
    values: PackedRows,
    scaling: float,
    skip: int = 0,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dense: DenseRows | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of `query` attending over packed rows `skip..n` and `dense` rows; see `attend_reference`."""
    args = (query, keys, values, scaling, skip, cos, sin, bias, dense)
    if backend == "auto":
        backend = _pick_backend(query)
    if backend == "triton":
        from tokeff.kernels.kvquant.gpu import attend_gpu

        return attend_gpu(*args)
    if backend == "numba":
        from tokeff.kernels.kvquant.cpu import attend_cpu

        return attend_cpu(*args)
    if backend == "torch":
        return attend_reference(*args)
    raise ValueError(f"unknown attention backend '{backend}'")


def _pick_backend(out: torch.Tensor) -> str:
    if out.device.type == "cuda":
        from tokeff.kernels.kvquant.gpu import AVAILABLE

        return "triton" if AVAILABLE else "torch"
    if out.device.type == "cpu" and out.dtype == torch.float32:
        return "numba"
    return "torch"
