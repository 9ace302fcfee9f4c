"""`--method recycle`: Token Recycling (Luo et al. 2024, "Turning Trash into Treasure").

Every forward pass yields next-token logits for every token it scored, most of them for draft tokens
that get rejected. Their top-k candidates are recycled into an adjacency matrix (one row of k token
ids per vocabulary token, a few MB, latest observation wins). A draft tree is read from the matrix
breadth-first along a template of (parent, rank) slots, verified in one forward pass with tree
attention, and the longest path the target agrees with is kept. The matrix persists across
generations of one decoder (hot start) and is seeded from the prompt's own logits.

The paper's static 80-node tree suits a GPU, where verifying 80 tokens costs about as much as one.
On a CPU it does not, so the tree is sized each step by `DraftBudget` from measured step times and
measured per-slot acceptance (or fixed with `--tree-size`).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import torch

from tokeff.core.options import Option
from tokeff.decoding.budget import DraftBudget
from tokeff.decoding.drafting import Draft, Drafter, DraftingMethod
from tokeff.decoding.registry import register
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import Prompt
from tokeff.decoding.verify import Acceptance, DraftTree

TOP_K = 8  # candidates kept per token (the paper's k)
# Prior P(rank r is the next token | the path so far was right), before any step is measured.
RANK_PRIOR = (0.55, 0.15, 0.07, 0.045, 0.03, 0.02, 0.015, 0.01)
TEMPLATE_NODES = 96  # slots the budget can choose from
TEMPLATE_DEPTH = 10
SEED_LOGIT_FLOATS = 2**25  # the prompt's last positions whose logits seed the matrix (128 MiB of float32)


class TreeTemplate:
    """Draft slots as (parent slot, rank): slot i's token is row(token of parent)[rank]. Built best-first by
    prior path probability, so parents precede children and slots are numbered breadth-first-ish."""

    def __init__(self, nodes: int = TEMPLATE_NODES, depth: int = TEMPLATE_DEPTH) -> None:
        self.parents, self.ranks, self.depth, prior = [-1], [0], [0], [1.0]
        frontier = [(-RANK_PRIOR[0], 0, 0)]  # (-path prior, parent slot, rank)
        while frontier and len(self.parents) <= nodes:
            negative, parent, rank = heapq.heappop(frontier)
            slot = len(self.parents)
            self.parents.append(parent)
            self.ranks.append(rank)
            self.depth.append(self.depth[parent] + 1)
            prior.append(-negative)
            if rank + 1 < TOP_K:  # the next sibling
                heapq.heappush(frontier, (-prior[parent] * RANK_PRIOR[rank + 1], parent, rank + 1))
            if self.depth[slot] < depth:  # the first child
                heapq.heappush(frontier, (-prior[slot] * RANK_PRIOR[0], slot, 0))
        self.priors = [RANK_PRIOR[rank] for rank in self.ranks]


class AdjacencyMatrix:
    """Row t: the top-k next tokens the model predicted the last time it scored token t."""

    def __init__(self, vocab: int) -> None:
        self.rows = np.zeros((vocab, TOP_K), dtype=np.int64)
        self.known = np.zeros(vocab, dtype=bool)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.known.nbytes

    def update(self, tokens: list[int], logits: torch.Tensor) -> None:
        top = torch.topk(logits, TOP_K, dim=-1).indices.cpu().numpy()
        self.rows[tokens] = top
        self.known[tokens] = True

    def draft(self, root: int, template: TreeTemplate) -> tuple[DraftTree, list[int], list[int]]:
        """The template filled from the matrix, without slots under a token never seen: the candidate
        tree, each node's template slot, and each node's depth."""
        token = np.full(len(template.parents), -1, dtype=np.int64)
        token[0] = root
        for slot in range(1, len(template.parents)):
            parent_token = token[template.parents[slot]]
            if parent_token >= 0 and self.known[parent_token]:
                token[slot] = self.rows[parent_token, template.ranks[slot]]
        slots = [slot for slot in range(len(token)) if token[slot] >= 0]
        index = {slot: i for i, slot in enumerate(slots)}
        tree = DraftTree(
            [int(token[slot]) for slot in slots], [-1, *(index[template.parents[s]] for s in slots[1:])]
        )
        return tree, slots, [template.depth[slot] for slot in slots]


class RecycleDrafter(Drafter):
    def __init__(self, method: TokenRecycling) -> None:
        self.method = method
        self.candidates: tuple[DraftTree, list[int], list[int]] | None = None

    def prefill(self, prompt_ids: list[int], logits: torch.Tensor) -> None:
        self.method.matrix.update(prompt_ids[-len(logits) :], logits)

    def propose(self, context: list[int], limit: int) -> Draft:
        tree, slots, depth = self.candidates = self.method.matrix.draft(context[-1], self.method.template)
        return Draft(self.method.budget.select(tree, slots, depth, limit).tree)

    def observe(self, draft: Draft, logits: torch.Tensor, accepted: Acceptance, seconds: float) -> None:
        self.method.matrix.update(draft.tree.tokens, logits)
        tree, slots, depth = self.candidates
        self.method.budget.observe(tree, slots, depth, accepted.tokens, len(draft.tree), seconds)

    def details(self) -> dict[str, Any]:
        return {"tree_size": self.method.opts["tree_size"] or "adaptive", "matrix_bytes": self.method.matrix.nbytes}


@register
class TokenRecycling(DraftingMethod):
    name = "recycle"
    summary = "Token Recycling: draft trees from recycled top-k candidates, verified with tree attention (lossless)"
    options = (
        Option("tree_size", int, None, "draft-tree nodes per step (default: adaptive to this machine)",
               min=1, max=TEMPLATE_NODES),
    )

    def __init__(self, lm, config, **options: Any) -> None:
        super().__init__(lm, config, **options)
        tree_size = self.opts["tree_size"]
        vocab = lm.model.get_output_embeddings().weight.shape[0]
        self.prefill_logits = max(1, SEED_LOGIT_FLOATS // vocab)
        # Kept across generations (the paper's hot start), like the measured step cost and slot rates.
        self.matrix = AdjacencyMatrix(vocab)
        self.template = TreeTemplate()
        self.budget = DraftBudget(self.template.priors, fixed=tree_size)

    def drafter(self, prompt: Prompt, chooser: TokenChooser) -> Drafter:
        return RecycleDrafter(self)
