"""A vocabulary indexed by bytes: which tokens start with a byte string, and what byte each has next.

Token ids sorted by their canonical bytes put every set "tokens that start with s" in one
contiguous range, and within it the tokens are grouped by their next byte, so the byte-level
model reads a next-byte distribution off a range of a next-token distribution.
"""

from __future__ import annotations

import bisect
import codecs
import weakref

import numpy as np
import torch

from tokeff.core.models import LoadedModel
from tokeff.tokenizers_tools.canonical import vocab_bytes

END = 256  # the end-of-text outcome (an end-of-sequence token)
TRASH = 257  # what continues no byte: special tokens, tokens that end exactly at the cut
N_BINS = 258

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ByteVocab:
    """Canonical bytes of every token id of a model, with the byte-sorted index the byte-level model needs."""

    def __init__(self, token_bytes: list[bytes | None], eos_ids: set[int]) -> None:
        self.token_bytes = token_bytes
        self.eos_ids = sorted(eos_ids)
        text_ids = [i for i, data in enumerate(token_bytes) if data]
        text_ids.sort(key=lambda i: token_bytes[i])
        self.order = np.asarray(text_ids, dtype=np.int64)
        self.sorted_bytes = [token_bytes[i] for i in text_ids]
        self.max_len = max(len(data) for data in self.sorted_bytes)
        # byte_table[j, k]: byte k of the j-th token in byte order, TRASH past its end. Column-major,
        # because a lookup reads one column (one offset) over a range of tokens.
        table = np.full((len(text_ids), self.max_len + 1), TRASH, dtype=np.int16)
        for row, data in enumerate(self.sorted_bytes):
            table[row, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.byte_table = np.asfortranarray(table)
        first = np.full(len(token_bytes), TRASH, dtype=np.int64)
        first[self.order] = table[:, 0]
        first[self.eos_ids] = END
        self.first_bin = torch.from_numpy(first)
        # Byte pairs that occur inside some token. A position between two bytes that never occur
        # together in a token is a boundary of every tokenization of the text (see `is_hard_boundary`).
        pairs = np.zeros((256, 256), dtype=bool)
        for data in self.sorted_bytes:
            codes = np.frombuffer(data, dtype=np.uint8)
            pairs[codes[:-1], codes[1:]] = True
        self.pair_in_token = pairs
        self._utf8: dict[bytes, torch.Tensor] = {}
        self._single: dict[int, int] = {}
        for token_id, data in enumerate(token_bytes):
            if data and len(data) == 1:
                self._single.setdefault(data[0], token_id)

    @classmethod
    def for_model(cls, lm: LoadedModel) -> ByteVocab:
        """The model's byte vocabulary (built once per tokenizer; the output layer sets the id range)."""
        vocab = _CACHE.get(lm.tokenizer)
        size = lm.model.get_output_embeddings().weight.shape[0]
        if vocab is None or len(vocab.token_bytes) != size:
            token_bytes = list(vocab_bytes(lm.tokenizer).token_bytes[:size])
            token_bytes += [None] * (size - len(token_bytes))
            vocab = cls(token_bytes, {i for i in lm.eos_token_ids if i < size})
            _CACHE[lm.tokenizer] = vocab
        return vocab

    def __len__(self) -> int:
        return len(self.token_bytes)

    def prefix_range(self, prefix: bytes) -> tuple[int, int]:
        """[lo, hi) in byte order of the tokens whose bytes start with `prefix` (the prefix itself first)."""
        lo = bisect.bisect_left(self.sorted_bytes, prefix)
        upper = prefix.rstrip(b"\xff")
        if not upper:
            return lo, len(self.sorted_bytes)
        upper = upper[:-1] + bytes([upper[-1] + 1])
        return lo, bisect.bisect_left(self.sorted_bytes, upper, lo)

    def has_longer(self, prefix: bytes) -> bool:
        """Whether some token starts with `prefix` and goes on past it."""
        lo, hi = self.prefix_range(prefix)
        # Within the range, a longer token sorts after the prefix itself, so the last one is longer if any is.
        return hi > lo and len(self.sorted_bytes[hi - 1]) > len(prefix)

    def extending(self, prefix: bytes) -> torch.Tensor:
        """Ids of the tokens whose bytes start with `prefix`."""
        lo, hi = self.prefix_range(prefix)
        return torch.from_numpy(self.order[lo:hi])

    def next_bins(self, prefix: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, bins): the tokens that start with `prefix` and the bin of the byte each has after it."""
        lo, hi = self.prefix_range(prefix)
        bins = self.byte_table[lo:hi, len(prefix)].astype(np.int64)
        return torch.from_numpy(self.order[lo:hi]), torch.from_numpy(bins)

    def is_hard_boundary(self, left: int, right: int) -> bool:
        """No token contains the byte `left` followed by `right`: every tokenization splits between them."""
        return not self.pair_in_token[left, right]

    def single_byte_token(self, byte: int) -> int | None:
        """The token spelling exactly this one byte (a byte-fallback token for bytes >= 0x80), if any."""
        return self._single.get(byte)

    def keeps_utf8(self, partial: bytes) -> torch.Tensor:
        """Boolean mask over token ids: the tokens whose bytes, after `partial` (the start of a character,
        or nothing), leave valid UTF-8 (possibly ending inside a character). Tokens without bytes are False."""
        mask = self._utf8.get(partial)
        if mask is None:
            valid = [bool(data) and _utf8_prefix(partial + data) for data in self.token_bytes]
            mask = self._utf8[partial] = torch.tensor(valid, dtype=torch.bool)
        return mask


def _utf8_prefix(data: bytes) -> bool:
    """Valid UTF-8, possibly ending inside a character."""
    try:
        data.decode("utf-8")  # the common case, fast
        return True
    except UnicodeDecodeError:
        pass
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data)  # strict about all but an unfinished last character
        return True
    except UnicodeDecodeError:
        return False
