"""Scatter-logsumexp: add up token probabilities (given as log-probs) into a few bins, in log space.

The byte-level model turns a next-token distribution over a whole vocabulary (49k-262k entries)
into a distribution over 256 byte values + end: every token's log-probability goes to the bin of
its next byte. `out[b] = log(sum(exp(values[i]) for i where bins[i] == b))`, -inf for empty bins.

Three implementations with one contract: a plain torch reference (what the tests compare
against), a Numba loop for the CPU (one pass for the maxima, one for the sums, no temporaries
of vocabulary size) and a Triton kernel for CUDA tensors, used only where Triton is installed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # Numba is a dependency, but a broken install should cost speed, not correctness
    import numba
except ImportError:  # pragma: no cover
    numba = None

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build: no Triton
    triton = None


def scatter_logsumexp_reference(values: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """torch reference: float64 result of length `n_bins`."""
    values = values.double()
    peak = torch.full((n_bins,), -math.inf, dtype=torch.float64, device=values.device)
    peak.scatter_reduce_(0, bins, values, reduce="amax")
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = torch.zeros(n_bins, dtype=torch.float64, device=values.device)
    sums.index_add_(0, bins, torch.exp(values - safe_peak[bins]))
    return torch.log(sums) + safe_peak


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _scatter_logsumexp_numba(values, bins, n_bins):  # pragma: no cover - compiled
        peak = np.full(n_bins, -np.inf)
        for i in range(values.shape[0]):
            if values[i] > peak[bins[i]]:
                peak[bins[i]] = values[i]
        sums = np.zeros(n_bins)
        for i in range(values.shape[0]):
            b = bins[i]
            if peak[b] > -np.inf:
                sums[b] += np.exp(values[i] - peak[b])
        out = np.full(n_bins, -np.inf)
        for b in range(n_bins):
            if sums[b] > 0.0:
                out[b] = np.log(sums[b]) + peak[b]
        return out


def scatter_logsumexp_numba(values: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    result = _scatter_logsumexp_numba(
        values.detach().cpu().double().numpy(), bins.detach().cpu().numpy().astype(np.int64, copy=False), n_bins
    )
    return torch.from_numpy(result)


if triton is not None:  # pragma: no cover - needs a CUDA GPU

    @triton.jit
    def _scatter_max_kernel(values, bins, peak, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        v = tl.load(values + offsets, mask=mask, other=-float("inf"))
        b = tl.load(bins + offsets, mask=mask, other=0)
        tl.atomic_max(peak + b, v, mask=mask)

    @triton.jit
    def _scatter_sum_kernel(values, bins, peak, sums, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        v = tl.load(values + offsets, mask=mask, other=-float("inf"))
        b = tl.load(bins + offsets, mask=mask, other=0)
        p = tl.load(peak + b, mask=mask, other=0.0)
        p = tl.where(p == -float("inf"), 0.0, p)
        tl.atomic_add(sums + b, tl.exp(v - p), mask=mask)

    def scatter_logsumexp_triton(values: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
        values = values.float().contiguous()
        bins = bins.to(torch.int32).contiguous()
        peak = torch.full((n_bins,), -math.inf, dtype=torch.float32, device=values.device)
        sums = torch.zeros(n_bins, dtype=torch.float32, device=values.device)
        grid = (triton.cdiv(values.numel(), 1024),)
        _scatter_max_kernel[grid](values, bins, peak, values.numel(), BLOCK=1024)
        _scatter_sum_kernel[grid](values, bins, peak, sums, values.numel(), BLOCK=1024)
        safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        return (torch.log(sums) + safe_peak).double()


def scatter_logsumexp(values: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """log-sum-exp of `values` per bin (float64, on the input's device): Triton on CUDA, Numba on the CPU."""
    if values.is_cuda and triton is not None:
        return scatter_logsumexp_triton(values, bins, n_bins)
    if not values.is_cuda and numba is not None:
        return scatter_logsumexp_numba(values, bins, n_bins)
    return scatter_logsumexp_reference(values, bins, n_bins)
