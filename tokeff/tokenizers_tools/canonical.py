"""Canonical bytes of every token: what the token contributes to the text, as UTF-8 bytes.

Raw token strings cannot be compared across tokenizer families: byte-level BPE writes a space as
`Ġ` (the GPT-2 byte alphabet), SentencePiece writes it as `▁` and spells unknown bytes as
`<0xNN>`, WordPiece marks word continuations with `##`. Canonical bytes put all of them in one
space, so two vocabularies can be matched token by token and any token can be read byte by byte.

Conventions: a word-initial WordPiece token gets a leading space (it follows a space mid-text,
like `Ġword` or `▁word`); special tokens (bos, eos, pad, chat markers) have no canonical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import cache

from transformers import PreTrainedTokenizerBase

from tokeff.core.errors import TokeffError

SPIECE_SPACE = "▁"


class TokenizerFamily(str, Enum):
    BYTE_LEVEL = "byte-level BPE"
    SENTENCEPIECE = "SentencePiece"
    WORDPIECE = "WordPiece"


@cache
def gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    stand_ins = {byte: byte for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in stand_ins:
            stand_ins[byte] = 256 + extra
            extra += 1
    return {chr(code): byte for byte, code in stand_ins.items()}


@dataclass
class VocabBytes:
    """A byte-level view of a vocabulary: canonical bytes per token id (None: special or unreachable)."""

    family: TokenizerFamily
    token_bytes: list[bytes | None]
    special_ids: frozenset[int]
    byte_fallback: bool = False
    fallback_ids: frozenset[int] = frozenset()  # `<0xNN>` byte-fallback pieces
    _index: dict[bytes, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.token_bytes)

    def id_of(self, data: bytes) -> int | None:
        """The token whose canonical bytes are exactly `data`: the lowest id if several, but a regular
        piece before a `<0xNN>` byte-fallback one (Gemma has both `!` and `<0x21>`; its tokenizer only
        emits the first, so only that row is well trained)."""
        if self._index is None:
            index: dict[bytes, int] = {}
            for token_id, token in enumerate(self.token_bytes):
                if token is not None and token_id not in self.fallback_ids:
                    index.setdefault(token, token_id)
            for token_id in sorted(self.fallback_ids):
                index.setdefault(self.token_bytes[token_id], token_id)
            self._index = index
        return self._index.get(data)

    @property
    def reachable_ids(self) -> list[int]:
        return [token_id for token_id, token in enumerate(self.token_bytes) if token]


def tokenizer_family(tokenizer: PreTrainedTokenizerBase) -> tuple[TokenizerFamily, bool]:
    """(family, byte_fallback) read from the fast tokenizer's model, decoder and pre-tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokeffError("only fast (tokenizer.json) tokenizers are supported")
    model_type = type(backend.model).__name__
    parts = " ".join(
        component.__getstate__().decode("utf-8")
        for component in (backend.decoder, backend.pre_tokenizer, backend.normalizer)
        if component is not None
    )
    if model_type == "WordPiece":
        return TokenizerFamily.WORDPIECE, False
    if '"ByteLevel"' in parts:
        return TokenizerFamily.BYTE_LEVEL, False
    if SPIECE_SPACE in parts or '"Metaspace"' in parts or '"ByteFallback"' in parts:
        return TokenizerFamily.SENTENCEPIECE, bool(getattr(backend.model, "byte_fallback", False))
    raise TokeffError(f"unsupported tokenizer: {model_type} model with components {parts[:120]}")


def vocab_bytes(tokenizer: PreTrainedTokenizerBase) -> VocabBytes:
    """Canonical bytes of every token id of a (fast) tokenizer."""
    family, byte_fallback = tokenizer_family(tokenizer)
    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    added = backend.get_added_tokens_decoder()
    special = frozenset(token_id for token_id, token in added.items() if token.special)
    token_bytes: list[bytes | None] = [None] * size
    fallback: set[int] = set()
    for piece, token_id in vocab.items():
        if token_id in special:
            continue
        if token_id in added:  # added tokens hold literal text, not model-alphabet strings
            token_bytes[token_id] = _literal_bytes(piece, family)
        else:
            token_bytes[token_id] = piece_bytes(piece, family, byte_fallback)
            if family is TokenizerFamily.SENTENCEPIECE and byte_fallback and _byte_piece(piece) is not None:
                fallback.add(token_id)
    return VocabBytes(
        family=family, token_bytes=token_bytes, special_ids=special, byte_fallback=byte_fallback, fallback_ids=frozenset(fallback)
    )


def piece_bytes(piece: str, family: TokenizerFamily, byte_fallback: bool = False) -> bytes | None:
    """Canonical bytes of one vocabulary piece; None if it cannot be produced from text."""
    if family is TokenizerFamily.BYTE_LEVEL:
        decoder = gpt2_byte_decoder()
        try:
            return bytes(decoder[char] for char in piece)
        except KeyError:  # a character outside the byte alphabet: the model can never emit it from text
            return None
    if family is TokenizerFamily.SENTENCEPIECE:
        if byte_fallback and (value := _byte_piece(piece)) is not None:
            return bytes([value])
        return piece.replace(SPIECE_SPACE, " ").encode("utf-8")
    if piece.startswith("##"):
        return piece[2:].encode("utf-8")
    return (" " + piece).encode("utf-8")


def _byte_piece(piece: str) -> int | None:
    """The byte a SentencePiece `<0xNN>` byte-fallback piece stands for, else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _literal_bytes(content: str, family: TokenizerFamily) -> bytes:
    if family is TokenizerFamily.SENTENCEPIECE:
        content = content.replace(SPIECE_SPACE, " ")
    return content.encode("utf-8")


def describe(vocab: VocabBytes) -> dict[str, object]:
    """Counts a user wants to see before trusting a byte-level view."""
    return {
        "family": vocab.family.value,
        "tokens": len(vocab),
        "special": len(vocab.special_ids),
        "unreachable": sum(1 for token_id, token in enumerate(vocab.token_bytes) if token is None and token_id not in vocab.special_ids),
        "byte_fallback": vocab.byte_fallback,
    }
