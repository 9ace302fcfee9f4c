"""Accepting draft tokens so that the output is exactly what plain decoding would produce.

Two rules, shared by every drafting method:

- `accept_by_choice`, for drafts that are fixed token guesses (prompt lookup, Token Recycling,
  a draft model run greedily or through another tokenizer): walk the draft tree, at each node let
  the chooser pick the next token exactly as plain decoding would (argmax, or one seeded sample
  from the warped distribution), and descend while a child holds that token. Every emitted token
  is one `choose` call on the target's own logits, so the output equals plain decoding's (with a
  seed, token for token); for several children this is the multi-candidate rejection rule of
  SpecInfer with point-mass drafts.
- `accept_by_ratio`, for drafts sampled from a draft model's distribution q: the speculative
  sampling rule (Leviathan et al. 2023; Chen et al. 2023): accept x with probability
  min(1, p(x)/q(x)), else draw from the residual max(0, p - q), so tokens follow p exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokeff.decoding.sampling import TokenChooser


@dataclass
class DraftTree:
    """Guesses for the next tokens. Node 0 is the last committed token (fed again, not yet cached);
    every other node extends its parent by one token. Parents come before their children."""

    tokens: list[int]
    parents: list[int]

    @classmethod
    def chain(cls, root: int, draft: Sequence[int]) -> DraftTree:
        return cls([root, *draft], list(range(-1, len(draft))))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return all(parent == index - 1 for index, parent in enumerate(self.parents))

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.tokens]
        for node, parent in enumerate(self.parents[1:], start=1):
            kids[parent].append(node)
        return kids


@dataclass
class Acceptance:
    path: list[int]  # accepted tree nodes after the root, in order
    tokens: list[int]  # the tokens of `path` followed by one token chosen by the target itself


def accept_by_choice(
    tree: DraftTree, logits: torch.Tensor, chooser: TokenChooser, history: list[int]
) -> Acceptance:
    """`logits[i]` are the target's next-token logits after node i; `history` ends with the root."""
    children = tree.children()
    node, path, tokens = 0, [], []
    while True:
        token = chooser.choose(logits[node], history + tokens)
        tokens.append(token)
        node = next((child for child in children[node] if tree.tokens[child] == token), -1)
        if node < 0:
            return Acceptance(path, tokens)
        path.append(node)


def accept_by_ratio(
    draft: Sequence[int], draft_probs: torch.Tensor, logits: torch.Tensor, chooser: TokenChooser
) -> Acceptance:
    """Speculative sampling over a chain: `draft_probs[i]` is q for draft[i], `logits[i]` the target's
    logits before draft[i] (one more row for the token after the last); both over the same vocabulary."""
    target = chooser.distribution(logits)
    draft_probs = draft_probs.float().cpu()
    uniform = torch.rand(len(draft), generator=chooser.generator)
    tokens: list[int] = []
    for i, token in enumerate(draft):
        p, q = target[i], draft_probs[i]
        if uniform[i] * q[token] < p[token]:
            tokens.append(token)
            continue
        residual = (p - q).clamp_min(0)
        total = residual.sum()
        tokens.append(chooser.sample(residual / total if total > 0 else p))
        return Acceptance(list(range(1, i + 1)), tokens)
    tokens.append(chooser.sample(target[len(draft)]))
    return Acceptance(list(range(1, len(draft) + 1)), tokens)

