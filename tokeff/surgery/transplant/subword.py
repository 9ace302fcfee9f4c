"""Spelling a donor token with base tokens: the pieces the base tokenizer cuts its bytes into.

A token's bytes need not be one word or even valid UTF-8 (byte-level BPE has half characters;
supertokens span several words), so valid text runs go through the base tokenizer, which knows
how the base model is used to seeing them, and anything it cannot spell back exactly (stray
bytes, normalizers, an added prefix space) is covered by greedy longest match on canonical bytes.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from tokeff.tokenizers_tools.canonical import VocabBytes

_STRAY_BYTES = re.compile("([\udc80-\udcff]+)")


def decompose(datas: list[bytes], tokenizer: PreTrainedTokenizerBase, vocab: VocabBytes) -> list[list[int]]:
    """For each byte string, base token ids whose canonical bytes concatenate to it (best effort:
    a byte the base vocabulary cannot spell at all is skipped)."""
    segments = [_segments(data) for data in datas]
    texts = sorted({part for parts in segments for part in parts if isinstance(part, str)})
    backend = tokenizer.backend_tokenizer
    encoded = {text: enc.ids for text, enc in zip(texts, backend.encode_batch(texts, add_special_tokens=False))}
    greedy = _GreedySpeller(vocab)
    pieces: list[list[int]] = []
    for parts in segments:
        ids: list[int] = []
        for part in parts:
            if isinstance(part, bytes):
                ids += greedy.spell(part)
                continue
            candidate = encoded[part]
            if b"".join(vocab.token_bytes[i] or b"\xff\xfe" for i in candidate) == part.encode("utf-8"):
                ids += candidate
            else:
                ids += greedy.spell(part.encode("utf-8"))
        pieces.append(ids)
    return pieces


def _segments(data: bytes) -> list[str | bytes]:
    """Valid UTF-8 runs as str, invalid byte runs as bytes."""
    text = data.decode("utf-8", errors="surrogateescape")
    parts: list[str | bytes] = []
    for index, part in enumerate(_STRAY_BYTES.split(text)):
        if not part:
            continue
        parts.append(part.encode("utf-8", errors="surrogateescape") if index % 2 else part)
    return parts


class _GreedySpeller:
    """Longest-prefix match over the base vocabulary's canonical bytes."""

    def __init__(self, vocab: VocabBytes) -> None:
        self.vocab = vocab
        self.max_len = max((len(data) for data in vocab.token_bytes if data), default=1)

    def spell(self, data: bytes) -> list[int]:
        ids, pos = [], 0
        while pos < len(data):
            for length in range(min(self.max_len, len(data) - pos), 0, -1):
                token_id = self.vocab.id_of(data[pos : pos + length])
                if token_id is not None:
                    ids.append(token_id)
                    pos += length
                    break
            else:
                pos += 1  # no base token holds this byte
        return ids
