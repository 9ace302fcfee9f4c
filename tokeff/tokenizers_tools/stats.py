"""How efficiently tokenizers encode a text: bytes per token, tokens per word, vocabulary use."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PreTrainedTokenizerBase

from tokeff.core.errors import TokeffError
from tokeff.tokenizers_tools.canonical import vocab_bytes

_WHITESPACE = b" \t\n\r\x0b\x0c"


@dataclass
class TokenizerStats:
    tokenizer: str
    vocab_size: int
    bytes: int
    words: int  # whitespace-separated words of the text
    tokens: int
    vocab_used: int  # distinct token ids in the encoding
    multiword_tokens: int  # tokens whose bytes hold whitespace after a non-space (span a word boundary)
    lossless: bool  # decoding the ids gives back the text

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "bytes_per_token": self.bytes_per_token,
            "tokens_per_word": self.tokens_per_word,
            "vocab_used_fraction": self.vocab_used / self.vocab_size,
            "multiword_fraction": self.multiword_tokens / self.tokens,
        }


def tokenizer_stats(name: str, tokenizer: PreTrainedTokenizerBase, text: str) -> TokenizerStats:
    """Encode `text` without special tokens and count (the fast backend, so long texts cost no warnings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokeffError(f"{name}: only fast (tokenizer.json) tokenizers are supported")
    ids = backend.encode(text, add_special_tokens=False).ids
    if not ids:
        raise TokeffError("the text produced no tokens")
    pieces = vocab_bytes(tokenizer).token_bytes
    return TokenizerStats(
        tokenizer=name,
        vocab_size=len(tokenizer),
        bytes=len(text.encode("utf-8")),
        words=len(text.split()),
        tokens=len(ids),
        vocab_used=len(set(ids)),
        multiword_tokens=sum(1 for token in ids if _spans_words(pieces[token])),
        lossless=backend.decode(ids, skip_special_tokens=False) == text,
    )


def _spans_words(data: bytes | None) -> bool:
    if not data:
        return False
    body = data.lstrip(_WHITESPACE)
    return any(byte in _WHITESPACE for byte in body.rstrip(_WHITESPACE))
