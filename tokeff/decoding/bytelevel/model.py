"""A tokenized language model as an exact model over bytes (the Byte-Token Representation Lemma).

The probability that the model's output starts with the bytes x is the sum, over the *covers*
of x, of the cover's probability. A cover is a token sequence t_1..t_k whose first k-1 tokens
spell a prefix x[:m] (m < n) and whose last token starts with the rest x[m:] (it may run past
the end). The next-byte distribution follows: P(x + b) sums the covers of x + b, P(x + end) is
the probability of the tokenization of x followed by an end-of-sequence token.

Covering rule (which covers are summed, and why the sum is exact):

1. The first k-1 tokens of a cover are a tokenization the tokenizer itself gives x[:m]
   (`prefixes.py`): as if the text ended there, or cut just before a character of each class a
   regex pre-tokenizer distinguishes. The model only ever saw tokenizer output, so these are the
   covers the lemma keeps (its "valid" encodings). For BPE (both built-in models) canonical
   tokenizations are closed under prefixes: a prefix of the tokenization of a text, ending at
   byte m, is the tokenization of x[:m], so no valid cover is missed. Pre-tokenizer lookahead
   breaks that closure (GPT-2's `\\s+(?!\\S)`: alone, "\\n\\n\\n" is one token, before "def" it
   is two, because the run's last whitespace starts a new pre-token; about 1% of smollm2's token
   boundaries in Python code), which is what the probes restore.
2. A position between two bytes that occur together in no token is a *hard boundary*: every
   tokenization of the text splits there, whatever the merges or the pre-tokenizer (a
   pre-tokenizer boundary between a word and a space or a bracket is one). Tokens before the
   last hard boundary are fixed (the trunk, tokenized with the lookahead a pre-tokenizer needs),
   and no cover's token crosses it. This keeps the covering tree a few tokens deep.
3. The last token of a cover is any token whose bytes continue the text. Checking that the pair
   it forms with the token before it is a canonical merge would need the whole vocabulary per
   node; a model that never saw such pairs gives them no probability, which is all the lemma
   asks, and `tests/test_bytelevel.py` checks the sum against brute force both ways: against the
   covers this rule names on the raw model, and against *all* tokenizations on a model that
   puts no mass on non-canonical ones.

Efficiency: the covering tree's nodes (tokenizations of prefixes) share the trunk and most of
their tokens, so one KV cache serves them all: a new node crops the cache to the longest common
prefix and feeds only its new tokens, about one model call of one token per byte. A node keeps
its next-token log-probabilities while the text can still reach it, and the scatter onto 256
bytes + end is one vectorized kernel call (`tokeff/kernels/byte_scatter.py`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from tokeff.core.errors import TokeffError
from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import LoadedModel
from tokeff.decoding.bytelevel.prefixes import Path, PrefixTokenizer
from tokeff.decoding.bytelevel.utf8 import allowed_next, partial_start
from tokeff.decoding.bytelevel.vocab import END, N_BINS, ByteVocab
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.types import DecodeStats
from tokeff.kernels.byte_scatter import scatter_logsumexp


@dataclass
class Covers:
    """The next tokens that can continue a text: entry i is token `ids[i]` after `paths[j]` (tokens after
    the trunk, j the segment that `offsets` puts i in). Either `paths[j]` spells the whole text and the
    token is any next token (an end-of-sequence token included), or the token is a cover's last one and
    runs past the text's end. `logprobs` are joint log-probabilities normalized over the entries (float64,
    -inf where the next byte would break UTF-8), `bins` the next byte each spells (END for the end)."""

    logprobs: torch.Tensor
    ids: torch.Tensor
    bins: torch.Tensor
    paths: list[Path]
    offsets: list[int]
    inside: list[int]  # bytes of the text that the segment's tokens start with (0 after a whole tokenization)

    def entry(self, index: int) -> tuple[Path, int, int]:
        """(path, token, how many of the token's bytes the text already holds) of entry `index`."""
        segment = bisect.bisect_right(self.offsets, index) - 1
        return self.paths[segment], int(self.ids[index]), self.inside[segment]


class _Node:
    """A token sequence after the trunk: its log-probability and the next-token log-probabilities after it."""

    __slots__ = ("logp", "dist", "children")

    def __init__(self, logp: float | None) -> None:
        self.logp = logp
        self.dist: torch.Tensor | None = None
        self.children: dict[int, _Node] = {}


class ByteLevelModel:
    """Next-byte distributions of a tokenized LM for a text that grows one byte at a time.

    `text` is a prompt whose own probability is not needed (generation); text added with
    `append` is scored, so `prefix_logprob` is the log-probability of everything appended.
    `context_ids` are the tokens before the text (default: the model's document-boundary token).
    """

    def __init__(
        self,
        lm: LoadedModel,
        text: bytes | str = b"",
        context_ids: list[int] | None = None,
        stats: DecodeStats | None = None,
        lookahead: int = 8,
    ) -> None:
        self.lm = lm
        self.vocab = ByteVocab.for_model(lm)
        self._first_bin = self.vocab.first_bin.to(lm.device)
        self._all_ids = torch.arange(len(self.vocab), device=lm.device)
        self.prefixes = PrefixTokenizer.for_model(lm)
        self.stats = stats if stats is not None else DecodeStats()
        # A plain DynamicCache: its layers can be cropped anywhere, sliding-window ones included.
        self.runner = CachedRunner(lm, self.stats, DynamicCache())
        self.lookahead = lookahead  # bytes a pre-tokenizer may look ahead past a hard boundary
        self.trunk: list[int] = list(context_ids) if context_ids else [prefix_token_id(lm)]
        self.text = bytearray()
        self.start = 0  # byte offset in `text` where the trunk ends
        self.root = _Node(0.0)
        self.scored = True  # root.logp is the log-probability of text[:start]
        self._cached: list[int] = []  # the tokens whose keys and values the cache holds
        self._next: torch.Tensor | None = None
        if text:
            self.text += text.encode("utf-8") if isinstance(text, str) else text
            self.scored = False
            self._commit(scored=False)

    # --- public API ---------------------------------------------------------------------------

    def append(self, data: bytes | int, scored: bool = True) -> None:
        """Extend the text; `scored=False` extends it as prompt (no model call, and no `prefix_logprob` after)."""
        self.scored = self.scored and scored
        for byte in [data] if isinstance(data, int) else data:
            self.text.append(byte)
            self._commit(scored=scored)  # byte by byte, so a long append never computes a long path at once
        self._next = None

    def next_byte_logprobs(self) -> torch.Tensor:
        """log P(next byte | text) over 257 outcomes (bytes 0-255, then END), float64, summing to 1."""
        if self._next is None:
            *_, values, bins = zip(*self._next_tokens())
            scores = scatter_logsumexp(torch.cat(values), torch.cat(bins), N_BINS).cpu()
            scores[~allowed_next(self.text)] = -math.inf
            scores = scores[: END + 1]
            total = torch.logsumexp(scores, 0)
            if not torch.isfinite(total):
                raise TokeffError("no tokenization of the model can continue this text")
            self._next = scores - total
        return self._next

    def next_covers(self, allow_end: bool = True) -> Covers:
        """Every next token that can continue the text, with its joint probability: the choices a
        token-level continuation starts from (their next bytes sum to `next_byte_logprobs`)."""
        paths, inside, ids, values, bins = zip(*self._next_tokens())
        values, bins = torch.cat(values), torch.cat(bins)
        allowed = allowed_next(self.text).to(bins.device)[bins]
        if not allow_end:
            allowed &= bins != END
        values = values.masked_fill(~allowed, -math.inf)
        total = torch.logsumexp(values, 0)
        if not torch.isfinite(total):
            raise TokeffError("no tokenization of the model can continue this text")
        offsets = [0]
        for segment in ids[:-1]:
            offsets.append(offsets[-1] + len(segment))
        return Covers(values - total, torch.cat(ids), bins, list(paths), offsets, list(inside))

    def token_logits(self, path: Sequence[int]) -> torch.Tensor:
        """Next-token logits after the trunk and `path` (one model call, feeding what the cache lacks)."""
        sequence = self.trunk + list(path)
        feed_from = self.runner.crop_to_common(self._cached, sequence, len(sequence) - 1)
        logits = self.runner.forward(sequence[feed_from:], logits_to_keep=1)[-1]
        self._cached = sequence
        return logits

    def prefix_logprob(self) -> float:
        """log of the sum over the covers of the appended text: the lemma's byte-level probability."""
        if not self.scored:
            raise TokeffError("the probability of a prompt given at construction is not computed; use append")
        n = len(self.text)
        if n == 0:
            return 0.0
        terms = [self.root.logp] if self.start == n else []
        for m in range(max(self.start, n - self.vocab.max_len), n):
            ids = self.vocab.extending(bytes(self.text[m:n]))
            if len(ids):
                for path in self.prefixes.tokenizations(bytes(self.text[self.start : m]), bytes(self.text[m:])):
                    node = self._ensure(path)
                    terms.append(float(torch.logsumexp(node.dist[ids.to(node.dist.device)].double(), 0)) + node.logp)
        return float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0)) if terms else -math.inf

    @property
    def model_calls(self) -> int:
        return self.stats.forward_passes

    # --- the covering tree --------------------------------------------------------------------

    def live_paths(self) -> list[tuple[int, Path]]:
        """(m, path) for every prefix text[:m] from which a cover can still continue the text: the
        covering tree's nodes, each the tokens after the trunk (no model call)."""
        n = len(self.text)
        live = []
        for m in range(max(self.start, n - self.vocab.max_len), n + 1):
            if m < n and not self.vocab.has_longer(bytes(self.text[m:n])):
                continue
            for path in self.prefixes.tokenizations(bytes(self.text[self.start : m]), bytes(self.text[m:])):
                live.append((m, path))
        return live

    def _next_tokens(self) -> list[tuple[Path, int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(path, n - m, ids, joint log-probabilities, next-byte bins): the tokens that can follow each live node."""
        n = len(self.text)
        terms = []
        for m, path in self.live_paths():
            node = self._ensure(path)
            if m == n:  # continue with any token; END is an end-of-sequence token
                ids, bins = self._all_ids, self._first_bin
                values = node.dist.double() + node.logp
            else:  # the covers of text[m:]: tokens that start with it, binned by their next byte
                ids, bins = self.vocab.next_bins(bytes(self.text[m:n]))
                ids, bins = ids.to(node.dist.device), bins.to(node.dist.device)
                values = node.dist[ids].double() + node.logp
            terms.append((path, n - m, ids, values, bins))
        return terms

    def _ensure(self, path: Path) -> _Node:
        """The node for `path` (tokens after the trunk), with its distribution computed by one model call if missing."""
        nodes = [self.root]
        for token in path:
            parent = nodes[-1]
            child = parent.children.get(token)
            if child is None:
                logp = None if parent.dist is None or parent.logp is None else parent.logp + float(parent.dist[token])
                child = parent.children[token] = _Node(logp)
            nodes.append(child)
        first = next((i for i, node in enumerate(nodes) if node.dist is None), None)
        if first is not None:
            self._compute(path, nodes, first)
        return nodes[-1]

    def _compute(self, path: Path, nodes: list[_Node], first: int) -> None:
        """One model call: feed what the cache lacks of trunk + path, keep the logits from node `first` on."""
        sequence = self.trunk + list(path)
        needed_from = len(self.trunk) - 1 + first  # the position whose logits give nodes[first]'s distribution
        feed_from = self.runner.crop_to_common(self._cached, sequence, needed_from)
        logits = self.runner.forward(sequence[feed_from:], logits_to_keep=len(sequence) - needed_from)
        self._cached = sequence
        dists = torch.log_softmax(logits, dim=-1)
        for node, dist in zip(nodes[first:], dists):
            node.dist = dist
        for index in range(1, len(nodes)):
            if nodes[index].logp is None and nodes[index - 1].logp is not None:
                nodes[index].logp = nodes[index - 1].logp + float(nodes[index - 1].dist[path[index - 1]])

    def _commit(self, scored: bool) -> None:
        """Move the trunk to the last hard boundary that the pre-tokenizer's lookahead can no longer change."""
        text, n = self.text, len(self.text)
        boundary = next(
            (
                q
                for q in range(n - self.lookahead, self.start, -1)
                if not 0x80 <= text[q] < 0xC0 and self.vocab.is_hard_boundary(text[q - 1], text[q])  # between characters
            ),
            None,
        )
        if boundary is None:
            return
        tail = bytes(text[self.start : n])
        tokens = self.prefixes.boundary_tokens(tail[: partial_start(tail)], boundary - self.start)
        if tokens is None:  # the tokenizer did not split there after all (cannot happen for a BPE)
            return
        self.root = self._ensure(tokens) if scored else _Node(0.0)
        self.trunk += tokens
        self.start = boundary
