"""Scoring a whole draft tree in one forward pass: each node attends to the cached context and to its
own ancestors only, at the position its depth gives it.

transformers passes a ready 4D mask through unchanged; models that mix sliding-window and full
attention layers (Gemma 3) take one mask per layer type, each sized like that layer's cache.
"""

from __future__ import annotations

import torch

from tokeff.core.errors import TokeffError
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.verify import DraftTree


def tree_layout(tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth of every node, and `ancestors[i, j]`: node j is node i or one of its ancestors."""
    n = len(tree)
    depth = torch.zeros(n, dtype=torch.long)
    ancestors = torch.eye(n, dtype=torch.bool)
    for node in range(1, n):
        parent = tree.parents[node]
        depth[node] = depth[parent] + 1
        ancestors[node] |= ancestors[parent]
    return depth, ancestors


def forward_tree(runner: CachedRunner, tree: DraftTree) -> torch.Tensor:
    """Logits after every node of `tree`, which is appended to the runner's cache in node order."""
    model = runner.lm.model
    config = model.config.get_text_config()
    depth, ancestors = tree_layout(tree)
    positions = runner.length + depth
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    masks = {}
    for layer_type in dict.fromkeys(layer_types):
        kv_length, kv_offset = runner.cache.get_mask_sizes(len(tree), layer_types.index(layer_type))
        past = torch.arange(kv_offset, kv_offset + kv_length - len(tree))
        visible = torch.ones(len(tree), len(past), dtype=torch.bool)
        if layer_type == "sliding_attention":
            visible = past[None, :] > positions[:, None] - config.sliding_window
        masks[layer_type] = _model_mask(torch.cat([visible, ancestors], dim=1), model)
    mask = masks if len(masks) > 1 else next(iter(masks.values()))
    return runner.forward(tree.tokens, attention_mask=mask, position_ids=positions[None].to(runner.lm.device))


def _model_mask(allowed: torch.Tensor, model) -> torch.Tensor:
    """A (1, 1, queries, keys) mask in the form the model's attention implementation takes."""
    implementation = model.config._attn_implementation
    allowed = allowed[None, None].to(model.device)
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        blocked = torch.finfo(model.dtype).min
        return torch.zeros(allowed.shape, dtype=model.dtype, device=model.device).masked_fill(~allowed, blocked)
    raise TokeffError(f"tree verification needs sdpa or eager attention, the model uses {implementation}")
