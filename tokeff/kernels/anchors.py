"""Narrowing each target's anchors to a pool of its nearest ones (cosine), shared by similar targets.

OMP over every anchor costs targets × anchors × dim × k; with a 262k-token donor that is hours on
a CPU. Instead the anchors are clustered once (k-means, scikit-learn) and targets are grouped by
their nearest centroid; each group searches one pool, the anchors of the clusters nearest its
centroid. A pool shared by a group lets OMP run from one Gram matrix per pool (`omp_gram`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BLOCK = 4096
_CLUSTERS_PER_POOL = 6  # a pool spans several clusters, so targets near a cluster's edge keep their neighbours
_KMEANS_SAMPLE = 20_000  # centroids are fitted on a sample, then every anchor is assigned


@torch.inference_mode()
def anchor_pools(
    queries: torch.Tensor, anchors: torch.Tensor, pool_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(query rows, anchor ids)]: every query appears in exactly one group. With no more anchors
    than `pool_size`, one group searches them all (exact)."""
    count = anchors.shape[0]
    if count <= pool_size:
        return [(torch.arange(queries.shape[0]), torch.arange(count))]
    queries = F.normalize(queries.float(), dim=1)
    anchors = F.normalize(anchors.float(), dim=1)
    centroids = _centroids(anchors, clusters=max(2, _CLUSTERS_PER_POOL * count // pool_size), seed=seed)
    labels = _nearest(anchors, centroids)
    members = [torch.nonzero(labels == cluster).flatten() for cluster in range(len(centroids))]
    neighbours = (centroids @ centroids.T).argsort(dim=1, descending=True)
    home = _nearest(queries, centroids)
    groups = []
    for cluster in torch.unique(home).tolist():
        pool, size = [], 0
        for other in neighbours[cluster].tolist():
            pool.append(members[other])
            size += len(members[other])
            if size >= pool_size:
                break
        groups.append((torch.nonzero(home == cluster).flatten(), torch.cat(pool)))
    return groups


def _centroids(points: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    from sklearn.cluster import KMeans

    generator = torch.Generator().manual_seed(seed)
    sample = points[torch.randperm(len(points), generator=generator)[:_KMEANS_SAMPLE]]
    kmeans = KMeans(n_clusters=min(clusters, len(sample)), n_init=1, max_iter=20, random_state=seed)
    kmeans.fit(sample.cpu().numpy())
    return F.normalize(torch.from_numpy(kmeans.cluster_centers_).float().to(points.device), dim=1)


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cat([(points[s : s + _BLOCK] @ centroids.T).argmax(dim=1) for s in range(0, len(points), _BLOCK)])
