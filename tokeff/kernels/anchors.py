"""Each target's nearest anchors (cosine), found exactly by blocked matmuls.

OMP over every anchor costs targets × anchors × dim × k; with a 262k-token donor that is hours on
a CPU. One similarity matmul instead picks each target's few hundred best-correlated anchors,
and OMP then searches only those. Measured on gemma3-270m/smollm2-135m (held-out shared tokens,
docs/transplant-holdout.md) this also codes better than searching all anchors: it keeps OMP's later
picks from fitting the donor space with far-away tokens whose base rows do not follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BLOCK = 2048  # targets per matmul: bounds the (block × anchors) similarity matrix


@torch.inference_mode()
def nearest_anchors(
    queries: torch.Tensor, anchors: torch.Tensor, count: int, absolute: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, count) of the anchors with the largest cosine to each query, and those cosines.

    With `absolute`, ranked by |cosine| (what OMP's atom choice uses; the sign is a coefficient).
    Runs on the queries' device.
    """
    count = min(count, anchors.shape[0])
    unit_anchors = F.normalize(anchors.float().to(queries.device), dim=1)
    ids, scores = [], []
    for start in range(0, queries.shape[0], _BLOCK):
        similarity = F.normalize(queries[start : start + _BLOCK].float(), dim=1) @ unit_anchors.T
        ranked = similarity.abs() if absolute else similarity
        where = ranked.topk(count, dim=1).indices
        ids.append(where)
        scores.append(similarity.gather(1, where))
    return torch.cat(ids), torch.cat(scores)
