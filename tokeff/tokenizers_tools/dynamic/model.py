"""A model extended with a dynamic vocabulary, without training: input embeddings and an output head.

Input side: a new token's embedding is a weighted sum of its pieces' embeddings, taken from the
model's own embedding module (so scaled embeddings such as Gemma's stay consistent), fed to the
model as `inputs_embeds`. See `piece_weights` for the weightings.

Output side: an extended output layer over base + new tokens, so a merged token's probability
comes from a proper distribution and bits per byte stays an honest per-byte measure. A new token
t = (a, p2, ..., pn) gets the output row of its first piece a plus a bias log q_t, and each base
token a gets the bias log q_a, where the q split the probability the model gives a among "a
followed by the pieces of t" (for every new t starting with a) and "a alone". The split uses the
model's own context-free continuation probabilities pi(t) = P(p2..pn | <boundary> a), computed once
per new token (one batched forward pass): q_t = pi(t) - sum of pi over t's nearest extensions
among the new tokens, q_a = 1 - sum of pi over a's nearest extensions. These telescope, so the q
of a and of all tokens starting with a sum to one and the extended softmax has the base
normalizer; it is still normalized explicitly (log_softmax) so clamping cannot leak mass.
Averaging the pieces' output rows instead would give t the mean of its pieces' logits at this
position, where only the first piece is plausible, which puts t's probability far too low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokeff.core.errors import TokeffError
from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import LoadedModel
from tokeff.tokenizers_tools.dynamic.merging import DynamicVocab

EMBEDDING_SCHEMES = ("mean", "linear", "last")
_MIN_SHARE = 1e-9  # floor for a probability share that rounding pushed to zero or below


def piece_weights(n: int, scheme: str) -> torch.Tensor:
    """Weights of a new token's n pieces.

    mean (the default): the plain average, FVT's and the dynamic-tokenization paper's training-free
        choice. Every piece's identity survives in equal part, and the merged position sits at
        the centroid of what the model saw there before.
    linear (weights 1..n) and last (the last piece alone) test the argument that in a causal LM
        the last piece's position is the one that predicts what follows, so it should dominate.
    On smollm2-135m and held-out WikiText-2 (score mode, 37 merges), mean cost the fewest bits of the
    three (docs/tokenizers.md), so the argument does not carry over to a single merged position.
    """
    if scheme == "mean":
        weights = torch.ones(n)
    elif scheme == "linear":
        weights = torch.arange(1, n + 1, dtype=torch.float32)
    elif scheme == "last":
        weights = torch.zeros(n)
        weights[-1] = 1
    else:
        raise TokeffError(f"unknown embedding scheme '{scheme}' (use {', '.join(EMBEDDING_SCHEMES)})")
    return weights / weights.sum()


@dataclass
class DynamicHead:
    """The extended output layer as biases on the base logits (see the module docstring)."""

    base_bias: torch.Tensor  # [V] log q_a (0 for tokens no new token starts with)
    first_piece: torch.Tensor  # [K] output row each new token shares
    new_bias: torch.Tensor  # [K] log q_t

    def log_probs(self, base_logits: torch.Tensor, rows: int = 64) -> torch.Tensor:
        """Log-probabilities over base + new tokens, [T, V + K], computed `rows` positions at a time."""
        out = []
        for chunk in base_logits.float().split(rows):
            extended = torch.cat([chunk + self.base_bias, chunk[:, self.first_piece] + self.new_bias], dim=-1)
            out.append(torch.log_softmax(extended, dim=-1))
        return torch.cat(out)

    def target_log_probs(self, base_logits: torch.Tensor, targets: torch.Tensor, rows: int = 64) -> torch.Tensor:
        """Log-probability of each target id (base or new), without keeping the whole [T, V + K] table."""
        out = []
        for chunk, target in zip(base_logits.float().split(rows), targets.split(rows)):
            out.append(self.log_probs(chunk, rows).gather(1, target[:, None])[:, 0])
        return torch.cat(out)


class DynamicModel:
    """A loaded model plus a dynamic vocabulary: embeds merged sequences and scores them."""

    def __init__(self, lm: LoadedModel, vocab: DynamicVocab, embedding: str = "mean") -> None:
        self.lm = lm
        self.vocab = vocab
        self.embedding = embedding
        self.embed = lm.model.get_input_embeddings()
        self.new_embeddings = self._new_embeddings()
        self._head: DynamicHead | None = None

    @torch.inference_mode()
    def _new_embeddings(self) -> torch.Tensor:
        rows = []
        for pieces in self.vocab.pieces:
            vectors = self.embed(torch.tensor(pieces, device=self.lm.device)).float()
            weights = piece_weights(len(pieces), self.embedding).to(vectors.device)
            rows.append(weights @ vectors)
        hidden = self.embed.weight.shape[1]
        stacked = torch.stack(rows) if rows else torch.empty(0, hidden, device=self.lm.device)
        return stacked.to(self.lm.model.dtype)

    @torch.inference_mode()
    def inputs_embeds(self, ids: list[int]) -> torch.Tensor:
        """[1, len(ids), hidden] input embeddings of a sequence of base and new ids."""
        tokens = torch.tensor(ids, dtype=torch.long, device=self.lm.device)
        is_new = tokens >= self.vocab.base_size
        embeds = self.embed(torch.where(is_new, 0, tokens))
        if is_new.any():
            embeds[is_new] = self.new_embeddings[tokens[is_new] - self.vocab.base_size]
        return embeds.unsqueeze(0)

    @property
    def head(self) -> DynamicHead:
        if self._head is None:
            self._head = self._build_head()
        return self._head

    @torch.inference_mode()
    def _build_head(self) -> DynamicHead:
        vocab, device = self.vocab, self.lm.device
        continuation = self._continuation_probs()
        node_prob = {pieces: prob for pieces, prob in zip(vocab.pieces, continuation)}
        children_mass: dict[tuple[int, ...], float] = {}
        for pieces, prob in node_prob.items():
            parent = _nearest_prefix(pieces, node_prob)
            children_mass[parent] = children_mass.get(parent, 0.0) + prob
        multiplicity: dict[tuple[int, ...], int] = {}
        for pieces in vocab.pieces:  # two merge paths can spell the same pieces: they share the mass
            multiplicity[pieces] = multiplicity.get(pieces, 0) + 1
        base_bias = torch.zeros(vocab.base_size)
        for node, mass in children_mass.items():
            if len(node) == 1:
                base_bias[node[0]] = math.log(max(1.0 - mass, _MIN_SHARE))
        new_bias = torch.tensor(
            [
                math.log(max(node_prob[pieces] - children_mass.get(pieces, 0.0), _MIN_SHARE * node_prob[pieces])
                         / multiplicity[pieces])
                for pieces in vocab.pieces
            ]
        )
        first = torch.tensor([pieces[0] for pieces in vocab.pieces], dtype=torch.long)
        return DynamicHead(base_bias.to(device), first.to(device), new_bias.to(device))

    @torch.inference_mode()
    def _continuation_probs(self, batch: int = 64) -> list[float]:
        """pi(t) = P(p2..pn | <boundary> p1) under the model, for every new token."""
        prefix = prefix_token_id(self.lm)
        probs: list[float] = []
        for start in range(0, len(self.vocab.pieces), batch):
            group = self.vocab.pieces[start : start + batch]
            width = max(len(pieces) for pieces in group) + 1
            ids = torch.full((len(group), width), prefix, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, pieces in enumerate(group):  # right padding: positions before it are unaffected
                ids[row, 1 : len(pieces) + 1] = torch.tensor(pieces)
                mask[row, : len(pieces) + 1] = 1
            logits = self.lm.model(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device)).logits
            logp = torch.log_softmax(logits[:, 1:-1].float(), dim=-1).gather(2, ids[:, 2:, None].to(logits.device))[..., 0]
            for row, pieces in enumerate(group):
                probs.append(math.exp(float(logp[row, : len(pieces) - 1].sum())))
        return probs


def _nearest_prefix(pieces: tuple[int, ...], nodes: dict[tuple[int, ...], float]) -> tuple[int, ...]:
    """The longest proper prefix of `pieces` that is a new token, else its first piece."""
    for end in range(len(pieces) - 1, 1, -1):
        if pieces[:end] in nodes:
            return pieces[:end]
    return pieces[:1]
