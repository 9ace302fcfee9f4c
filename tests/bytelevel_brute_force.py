"""Brute-force byte-level probabilities: enumerate tokenizations, score them with uncached forward passes.

Independent of `tokeff.decoding.bytelevel` (no KV cache, no covering tree, no byte index): the
tests compare the two.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import LoadedModel
from tokeff.decoding.bytelevel.prefixes import LOOKAHEAD_PROBES
from tokeff.tokenizers_tools.canonical import vocab_bytes


class BruteForce:
    """Sums over token sequences that spell a text; `canonical_prefixes` applies the covering rule's first part."""

    def __init__(self, lm: LoadedModel, canonical_prefixes: bool, context: list[int] | None = None) -> None:
        self.lm = lm
        self.canonical_prefixes = canonical_prefixes
        self.context = context or [prefix_token_id(lm)]
        size = lm.model.get_output_embeddings().weight.shape[0]
        self.token_bytes = list(vocab_bytes(lm.tokenizer).token_bytes[:size])
        self.eos = sorted(i for i in lm.eos_token_ids if i < size)
        self.dist = cache(self._dist)

    def _dist(self, path: tuple[int, ...]) -> torch.Tensor:
        with torch.no_grad():
            logits = self.lm.model(torch.tensor([self.context + list(path)]), use_cache=False).logits[0, -1]
        return torch.log_softmax(logits.double(), -1)

    def _encode(self, data: bytes) -> tuple[int, ...]:
        return tuple(self.lm.tokenizer(data.decode("utf-8"), add_special_tokens=False)["input_ids"])

    def _spelled(self, path: tuple[int, ...]) -> bytes:
        return b"".join(self.token_bytes[t] for t in path)

    def _allowed_prefix(self, path: tuple[int, ...], text: bytes) -> bool:
        """The rule: `path` starts the tokenizer's tokenization of the text it spells, alone or followed by
        a lookahead probe; for a cut inside a character, of the text through the end of that character."""
        if not self.canonical_prefixes:
            return True
        end = len(self._spelled(path))
        suffixes = [b""] + [probe.encode() for probe in LOOKAHEAD_PROBES]
        if end < len(text) and 0x80 <= text[end] < 0xC0:  # a continuation byte: the character goes on
            suffixes = [b""]
            while end < len(text) and 0x80 <= text[end] < 0xC0:
                end += 1
        try:
            return any(self._encode(text[:end] + suffix)[: len(path)] == path for suffix in suffixes)
        except UnicodeDecodeError:  # the text itself ends inside the character
            return False

    def _walk(self, text: bytes, path: tuple[int, ...], pos: int, logp: float, covers: list, complete: list) -> None:
        """Covers of text[pos:] after `path` go to `covers`, full tokenizations to `complete` (with log-probs)."""
        rest = text[pos:]
        dist = self.dist(path)
        for token, data in enumerate(self.token_bytes):
            if not data:
                continue
            token_logp = logp + float(dist[token])
            if data.startswith(rest):  # a cover's last token: it reaches the end of the text or runs past it
                covers.append((path + (token,), token_logp))
            if rest.startswith(data) and self._allowed_prefix(path + (token,), text):
                if len(data) < len(rest):
                    self._walk(text, path + (token,), pos + len(data), token_logp, covers, complete)
                else:
                    complete.append((path + (token,), token_logp))

    def cover_logprob(self, text: bytes) -> float:
        """log of the sum of P(cover) over the covers of `text` that the rule admits."""
        covers, complete = [], []
        self._walk(text, (), 0, 0.0, covers, complete)
        return _logsumexp([logp for _, logp in covers])

    def end_logprob(self, text: bytes) -> float:
        """log P(text, then an end-of-sequence token)."""
        covers, complete = [], []
        self._walk(text, (), 0, 0.0, covers, complete)
        return _logsumexp([logp + _logsumexp([float(self.dist(path)[e]) for e in self.eos]) for path, logp in complete])

    def next_tokens(self, text: bytes) -> dict[tuple[int, ...], float]:
        """log P of every token sequence that can start a continuation of `text`: a cover whose last token
        runs past the end, or a full tokenization followed by one more token (an end-of-sequence one included)."""
        covers, complete = [], []
        self._walk(text, (), 0, 0.0, covers, complete)
        entries = {path: logp for path, logp in covers if len(self._spelled(path)) > len(text)}
        for path, logp in complete:
            dist = self.dist(path)
            for token, data in enumerate(self.token_bytes):
                if data or token in self.eos:
                    entries[path + (token,)] = logp + float(dist[token])
        return entries

    def next_byte_logprobs(self, text: bytes, allowed: torch.Tensor) -> torch.Tensor:
        """Normalized log P(next byte | text) over 256 bytes + end, restricted to `allowed` (257 entries)."""
        scores = torch.full((257,), -math.inf, dtype=torch.float64)
        for byte in range(256):
            if allowed[byte]:
                scores[byte] = self.cover_logprob(text + bytes([byte]))
        if allowed[256]:
            scores[256] = self.end_logprob(text)
        return scores - torch.logsumexp(scores, 0)


def _logsumexp(values: list[float]) -> float:
    return float(torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0)) if values else -math.inf


class CanonicalOnly(torch.nn.Module):
    """A model that gives no probability to a next token that makes the sequence non-canonical.

    The lemma's assumption made true: under it, the sum over *all* tokenizations equals the sum
    over the valid covers. Tracks the token history through the KV cache length, so it works
    with cached decoding, crops included. For ASCII texts (non-ASCII byte tokens are never valid).
    """

    def __init__(self, lm: LoadedModel) -> None:
        super().__init__()
        self.inner = lm.model
        self.config = lm.model.config
        self.generation_config = lm.model.generation_config
        self.tokenizer = lm.tokenizer
        size = lm.model.get_output_embeddings().weight.shape[0]
        self.token_bytes = list(vocab_bytes(lm.tokenizer).token_bytes[:size])
        self.eos = [i for i in LoadedModel.eos_token_ids.fget(lm) if i < size]
        self.history: list[int] = []
        self.valid_next = cache(self._valid_next)

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def _valid_next(self, path: tuple[int, ...]) -> torch.Tensor:
        mask = torch.zeros(len(self.token_bytes), dtype=torch.bool)
        mask[self.eos] = True
        prefix = b"".join(self.token_bytes[t] or b"" for t in path).decode()
        candidates = [token for token, data in enumerate(self.token_bytes) if data and data.isascii()]
        for suffix in ("",) + LOOKAHEAD_PROBES:  # canonical: it starts the tokenization of some text
            texts = [prefix + self.token_bytes[token].decode() + suffix for token in candidates]
            for token, ids in zip(candidates, self.tokenizer(texts, add_special_tokens=False)["input_ids"]):
                mask[token] |= tuple(ids[: len(path) + 1]) == path + (token,)
        return mask

    def forward(self, input_ids, past_key_values=None, logits_to_keep=0, **kwargs):
        offset = past_key_values.get_seq_length() if past_key_values is not None else 0
        self.history = self.history[:offset] + input_ids[0].tolist()
        output = self.inner(input_ids=input_ids, past_key_values=past_key_values, logits_to_keep=logits_to_keep, **kwargs)
        logits = output.logits.clone()
        rows = logits.shape[1]
        for row in range(rows):
            position = len(self.history) - rows + row
            path = tuple(self.history[1 : position + 1])
            logits[0, row, ~self.valid_next(path)] = -math.inf
        output.logits = logits
        return output
