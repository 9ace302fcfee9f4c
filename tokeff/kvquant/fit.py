"""Fitting the calibrated quantizer: per-channel key ranges with outlier thresholds, and
non-uniform codebooks by (sensitivity-weighted) k-means over the normalized entries."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from tokeff.kvquant.quantizer import TensorQuantizer

# k-means on more points barely moves 16 centroids but costs time; a seeded subsample is plenty.
MAX_KMEANS_POINTS = 100_000


def outliers_per_token(fraction: float, head_dim: int) -> int:
    """Entries per token stored exactly: the fraction of the head dimension, at least one if asked for."""
    if fraction <= 0:
        return 0
    return max(1, round(fraction * head_dim))


def key_ranges(keys: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(center, half) per head and channel from keys [heads, tokens, dim]: the range between the
    fraction/2 and 1 - fraction/2 quantiles, so about `fraction` of entries fall outside as outliers."""
    ordered = keys.transpose(1, 2).sort(dim=-1).values  # [heads, dim, tokens]
    last = ordered.shape[-1] - 1
    lo = ordered[..., int(round(fraction / 2 * last))]
    hi = ordered[..., int(round((1 - fraction / 2) * last))]
    return (hi + lo) / 2, ((hi - lo) / 2).clamp_min(1e-6)


def fit_codebook(
    quantizer: TensorQuantizer, samples: torch.Tensor, weights: torch.Tensor | None, per_head: bool, seed: int
) -> torch.Tensor:
    """Codebook [1 or heads, 2**bits] minimizing the (weighted) squared error of the normalized dense entries.

    `samples` [heads, tokens, dim] are normalized with the quantizer's own ranges; entries it would
    store as outliers are left out, as they never use the codebook.
    """
    normalized, _, _, idx = quantizer.normalize(samples.unsqueeze(0))
    dense = torch.ones_like(normalized, dtype=torch.bool).scatter(3, idx, False)[0]
    normalized = normalized[0].clamp(-1, 1)
    if weights is None:
        weights = torch.ones_like(normalized)
    groups = range(samples.shape[0]) if per_head else [slice(None)]
    books = [_kmeans(normalized[g][dense[g]], weights[g][dense[g]], 2**quantizer.bits, seed) for g in groups]
    return torch.stack(books)


def _kmeans(points: torch.Tensor, weights: torch.Tensor, levels: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if points.numel() > MAX_KMEANS_POINTS:
        pick = torch.randperm(points.numel(), generator=generator)[:MAX_KMEANS_POINTS]
        points, weights = points[pick], weights[pick]
    x = points.double().numpy()[:, None]
    w = weights.double().numpy()
    if not np.isfinite(w).all() or w.sum() <= 0:
        w = np.ones_like(w)
    # Start from evenly spaced quantiles: deterministic, and already a good 1-D solution.
    init = np.quantile(x[:, 0], (np.arange(levels) + 0.5) / levels)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than levels
        model = KMeans(n_clusters=levels, init=init, n_init=1, max_iter=100, random_state=seed).fit(x, sample_weight=w)
    return torch.from_numpy(np.sort(model.cluster_centers_[:, 0])).float().clamp(-1, 1)
