"""Dynamic tokenization of a batch: BPE merges of the batch's most frequent adjacent token pairs.

Following "Retrofitting (Large) Language Models with Dynamic Tokenization", merges stay within
words by default: a pair may merge unless the right token starts with whitespace or the left one
ends with it (read from canonical token bytes, so byte-level BPE and SentencePiece behave alike);
`across_words` lifts that, as supertokens do. Special tokens never merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokeff.kernels.pair_merges import SEPARATOR, batch_bpe
from tokeff.tokenizers_tools.canonical import VocabBytes

_WHITESPACE = b" \t\n\r\x0b\x0c"


@dataclass
class DynamicVocab:
    """New tokens appended after `base_size` base ids: id base_size + k is made of `pieces[k]`."""

    base_size: int
    merges: list[tuple[int, int]]  # (left, right) ids of each new token, in merge order
    pieces: list[tuple[int, ...]]  # base-token pieces of each new token

    def __len__(self) -> int:
        return len(self.merges)

    def expand(self, ids: list[int]) -> list[int]:
        """Base ids of a sequence that may hold new tokens."""
        out: list[int] = []
        for token in ids:
            out.extend(self.pieces[token - self.base_size] if token >= self.base_size else (token,))
        return out


def mergeability(vocab: VocabBytes, size: int, across_words: bool) -> tuple[np.ndarray, np.ndarray]:
    """(can_left, can_right) flags for ids [0, size): which tokens may be a pair's left or right piece."""
    can_left = np.zeros(size, dtype=bool)
    can_right = np.zeros(size, dtype=bool)
    for token_id, data in enumerate(vocab.token_bytes[:size]):
        if not data or token_id in vocab.special_ids:
            continue
        can_left[token_id] = across_words or data[-1] not in _WHITESPACE
        can_right[token_id] = across_words or data[0] not in _WHITESPACE
    return can_left, can_right


def merge_batch(
    sequences: list[list[int]],
    vocab: VocabBytes,
    base_size: int,
    max_merges: int,
    *,
    across_words: bool = False,
    min_count: int = 2,
) -> tuple[DynamicVocab, list[list[int]]]:
    """Up to `max_merges` merges learned on the batch (each pair seen at least `min_count` times) and the
    batch rewritten with them. `base_size` is the model's embedding rows (new ids start there)."""
    flat = np.fromiter(_joined(sequences), dtype=np.int64)
    can_left, can_right = mergeability(vocab, base_size + max_merges, across_words)
    merges_array, merged = batch_bpe(flat, can_left, can_right, base_size, max_merges, min_count)
    merges = [(int(left), int(right)) for left, right in merges_array]
    pieces: list[tuple[int, ...]] = []
    for left, right in merges:
        pieces.append(_pieces(left, base_size, pieces) + _pieces(right, base_size, pieces))
    return DynamicVocab(base_size, merges, pieces), _split(merged.tolist())


def _pieces(token: int, base_size: int, pieces: list[tuple[int, ...]]) -> tuple[int, ...]:
    return pieces[token - base_size] if token >= base_size else (token,)


def _joined(sequences: list[list[int]]):
    for index, sequence in enumerate(sequences):
        if index:
            yield SEPARATOR
        yield from sequence


def _split(flat: list[int]) -> list[list[int]]:
    sequences: list[list[int]] = [[]]
    for token in flat:
        if token == SEPARATOR:
            sequences.append([])
        else:
            sequences[-1].append(token)
    return sequences
