"""`--method lookup`: prompt-lookup decoding (Saxena 2023). The draft is what followed the latest earlier
occurrence of the context's last n-gram (longest n first); one forward pass verifies it.

The draft length is capped per step by `DraftBudget` (measured acceptance per depth against measured
step cost), or fixed with `--draft-tokens`. Acceptance is measured separately for each matched n-gram
length: a continuation found by a 3-gram is accepted far more often than one found by a 1-gram, so
the budget drafts long after a long match and little or nothing after a short one.
"""

from __future__ import annotations

from typing import Any

from tokeff.core.options import Option
from tokeff.decoding.budget import DraftBudget
from tokeff.decoding.drafting import Draft, Drafter, DraftingMethod
from tokeff.decoding.registry import register
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import Prompt
from tokeff.decoding.verify import Acceptance, DraftTree

MAX_DRAFT = 32  # longest continuation looked at; the budget usually verifies far fewer on a CPU


class NgramIndex:
    """For every n-gram (n <= max_n) of a growing token sequence, where its latest occurrence that has a
    continuation ends; updated in O(max_n) per token, so a lookup costs no scan of the context."""

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n
        self.tokens: list[int] = []
        self.follows: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before `token` now have a continuation
            for n in range(1, min(self.max_n, end) + 1):
                self.follows[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def continuation(self, length: int) -> tuple[list[int], int]:
        """What followed the latest earlier occurrence of the longest matching suffix n-gram, and that n
        (0 when nothing matched)."""
        for n in range(min(self.max_n, len(self.tokens)), 0, -1):
            start = self.follows.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + length], n
        return [], 0


class LookupDrafter(Drafter):
    def __init__(self, prompt_ids: list[int], ngram: int, budget: DraftBudget) -> None:
        self.index = NgramIndex(ngram)
        self.index.extend(prompt_ids)
        self.budget = budget
        self.candidates = DraftTree.chain(0, [])
        self.matched = 0

    def propose(self, context: list[int], limit: int) -> Draft:
        self.index.extend(context[len(self.index.tokens) :])
        tokens, self.matched = self.index.continuation(min(MAX_DRAFT, limit))
        self.candidates = DraftTree.chain(context[-1], tokens)
        depth = range(len(self.candidates))
        return Draft(self.budget.select(self.candidates, _slots(depth, self.matched), depth, limit).tree)

    def observe(self, draft: Draft, logits, accepted: Acceptance, seconds: float) -> None:
        depth = range(len(self.candidates))
        self.budget.observe(self.candidates, _slots(depth, self.matched), depth, accepted.tokens, len(draft.tree), seconds)

    def details(self) -> dict[str, Any]:
        return {"draft_tokens": self.budget.fixed or "adaptive"}


def _slots(depth: range, matched: int) -> list[int]:
    """Rate slot of each chain node: one per (matched n-gram length, depth); the root's is never read."""
    return [(max(matched, 1) - 1) * MAX_DRAFT + max(d - 1, 0) for d in depth]


@register
class PromptLookup(DraftingMethod):
    name = "lookup"
    summary = "prompt lookup: draft the tokens that followed the last n-gram earlier in the context (lossless)"
    options = (
        Option("ngram", int, 3, "longest n-gram matched", min=1),
        Option("draft_tokens", int, None, "draft tokens per step (default: adaptive)", min=1),
    )

    def __init__(self, lm, config, **options: Any) -> None:
        super().__init__(lm, config, **options)
        # Kept across generations: the machine's step cost and the drafts' hit rates carry over.
        self.budget = DraftBudget([0.6] * MAX_DRAFT * self.opts["ngram"], fixed=self.opts["draft_tokens"])

    def drafter(self, prompt: Prompt, chooser: TokenChooser) -> Drafter:
        return LookupDrafter(prompt.ids, self.opts["ngram"], self.budget)
