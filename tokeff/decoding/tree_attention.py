"""Scoring a whole token tree in one forward pass: each node attends to the keys it may see (the cached
context and its own ancestors), at the position its depth gives it.

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
    depth, ancestors = tree_layout(tree)
    past = runner.length
    positions = past + depth
    visible = torch.cat([torch.ones(len(tree), past, dtype=torch.bool), ancestors], dim=1)
    return forward_masked(runner, tree.tokens, positions, visible, torch.cat([torch.arange(past), positions]))


def forward_masked(
    runner: CachedRunner, tokens: list[int], positions: torch.Tensor, visible: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """Logits after `tokens` (at `positions`), appended to the runner's cache.

    `visible[i, j]`: token i attends to key j, the keys being the cache's entries in order, then
    `tokens`; `key_positions[j]` is key j's position (sliding-window layers see only keys less than
    a window behind). A cache whose entries are not in position order (a covering tree laid out
    node by node) is fine: positions, not cache slots, decide what a window sees.
    """
    model = runner.lm.model
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    masks = {}
    for layer_type in dict.fromkeys(layer_types):
        kv_length, kv_offset = runner.cache.get_mask_sizes(len(tokens), layer_types.index(layer_type))
        allowed = visible[:, kv_offset : kv_offset + kv_length]
        if layer_type == "sliding_attention":
            keys = key_positions[kv_offset : kv_offset + kv_length]
            allowed = allowed & (keys[None, :] > positions[:, None] - config.sliding_window)
        masks[layer_type] = _model_mask(allowed, model)
    mask = masks if len(masks) > 1 else next(iter(masks.values()))
    return runner.forward(tokens, attention_mask=mask, position_ids=positions[None].to(runner.lm.device))


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
