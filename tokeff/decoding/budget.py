"""How many draft tokens to verify per step, chosen for the machine at hand rather than copied from a
GPU setting: expected accepted tokens per second of verification, both measured while decoding.

- `StepCost` measures seconds per step against tokens fed (recent steps of each size, interpolated);
  on a CPU a forward pass of 32 tokens costs several times one of 1 token, on a GPU about the same.
- `AcceptanceRates` estimates, for each draft slot (a tree-template node, a chain depth), the
  probability that its token is accepted given its parent was, from counts with a prior.
- `DraftBudget` combines them: it ranks the candidate nodes by the product of rates along their path
  and keeps the prefix of that ranking that maximizes (1 + expected accepted) / predicted seconds.
  After each step it updates the rates counterfactually for every candidate node, verified or not
  (the tokens the target chose tell which unverified candidates would have been accepted), so
  nodes left out of the tree still get measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tokeff.decoding.verify import DraftTree


class StepCost:
    """Seconds of one verification step by tokens fed: the median of the recent steps of each size,
    interpolated between measured sizes. Not a line: on a CPU one token goes through matrix-vector
    kernels and two or more through matrix-matrix ones, so the first extra token costs the most."""

    def __init__(self, memory: int = 8) -> None:
        self.memory = memory
        self.recent: dict[int, list[float]] = {}

    def observe(self, n_tokens: int, seconds: float) -> None:
        self.recent[n_tokens] = [*self.recent.get(n_tokens, [])[-(self.memory - 1) :], seconds]

    @property
    def ready(self) -> bool:
        return len(self.recent) >= 2

    def predict(self, n_tokens: np.ndarray) -> np.ndarray:
        sizes = np.array(sorted(self.recent), dtype=float)
        times = np.maximum.accumulate([float(np.median(self.recent[int(n)])) for n in sizes])
        # Past the largest measured size, continue the slope of the last two (never downwards).
        slope = max((times[-1] - times[-2]) / (sizes[-1] - sizes[-2]), 0.0) if len(sizes) > 1 else 0.0
        inside = np.interp(n_tokens, sizes, times)
        return np.where(n_tokens > sizes[-1], times[-1] + slope * (n_tokens - sizes[-1]), inside)


class AcceptanceRates:
    """P(slot accepted | its parent accepted) per slot key, as (hits + strength * prior) / (trials + strength)."""

    def __init__(self, priors: Sequence[float], strength: float = 4.0) -> None:
        self.priors = np.asarray(priors, dtype=float)
        self.hits = np.zeros(len(priors))
        self.trials = np.zeros(len(priors))
        self.strength = strength

    def rates(self) -> np.ndarray:
        return (self.hits + self.strength * self.priors) / (self.trials + self.strength)

    def record(self, keys: Sequence[int], accepted: Sequence[bool]) -> None:
        np.add.at(self.trials, list(keys), 1)
        np.add.at(self.hits, [key for key, hit in zip(keys, accepted) if hit], 1)


@dataclass
class Selection:
    tree: DraftTree  # the nodes to verify (root first)
    nodes: list[int]  # their indices in the candidate tree


class DraftBudget:
    """Picks which candidate draft nodes to verify each step; see the module docstring."""

    def __init__(self, priors: Sequence[float], fixed: int | None = None, explore: Sequence[int] = (4, 24)) -> None:
        self.rates = AcceptanceRates(priors)
        self.cost = StepCost()
        self.fixed = fixed  # a size the user chose: always the best `fixed` nodes
        self.explore = list(explore)  # sizes tried while the cost line is unknown
        self.node_seconds = 0.0  # cost of producing each draft node, when drafting is not free (a draft model)
        self.steps = 0

    def select(self, candidates: DraftTree, keys: Sequence[int], depth: Sequence[int], limit: int) -> Selection:
        """`candidates` holds every node that could be verified (invalid ones already dropped), `keys[i]`
        the rate slot of node i, `depth[i]` its distance from the root; nodes deeper than `limit` are skipped."""
        rates = self.rates.rates()
        value = np.ones(len(candidates))
        for node in range(1, len(candidates)):
            value[node] = value[candidates.parents[node]] * rates[keys[node]]
        usable = [node for node in range(1, len(candidates)) if depth[node] <= limit]
        # Stable order with parents first: a child's value never exceeds its parent's.
        ranked = sorted(usable, key=lambda node: (-value[node], depth[node], node))
        size = self.choose_size(value[ranked])
        chosen = [0, *sorted(ranked[:size])]
        position = {node: i for i, node in enumerate(chosen)}
        tree = DraftTree(
            [candidates.tokens[node] for node in chosen],
            [-1, *(position[candidates.parents[node]] for node in chosen[1:])],
        )
        return Selection(tree, chosen)

    def choose_size(self, values: np.ndarray) -> int:
        """How many of the ranked nodes to verify; `values[i]` is the chance that the i-th is accepted."""
        if len(values) == 0:
            return 0
        self.steps += 1
        if self.fixed is not None:
            return min(self.fixed, len(values))
        if not self.cost.ready:
            return min(self.explore[(self.steps - 1) % len(self.explore)], len(values))
        sizes = np.arange(len(values) + 1)
        gain = 1.0 + np.concatenate([[0.0], np.cumsum(values)])
        best = int(np.argmax(gain / (self.cost.predict(sizes + 1.0) + self.node_seconds * sizes)))
        if self.steps % 32 == 0:  # now and then probe a neighbouring size, so costs and rates stay current
            best = min(len(values), max(1, best * 2)) if (self.steps // 32) % 2 else best // 2
        return best

    def observe(
        self, candidates: DraftTree, keys: Sequence[int], depth: Sequence[int], emitted: Sequence[int],
        fed: int, seconds: float,
    ) -> None:
        """After a step: `emitted` are the tokens the target chose (the true continuation), `fed` the tokens
        the step fed to the model and `seconds` what it took."""
        self.cost.observe(fed, seconds)
        on_path = np.zeros(len(candidates), dtype=bool)
        on_path[0] = True
        tried, hits = [], []
        for node in range(1, len(candidates)):
            d = depth[node]
            if on_path[candidates.parents[node]] and d <= len(emitted):
                hit = candidates.tokens[node] == emitted[d - 1]
                on_path[node] = hit
                tried.append(keys[node])
                hits.append(hit)
        self.rates.record(tried, hits)
