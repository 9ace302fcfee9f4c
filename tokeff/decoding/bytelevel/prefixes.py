"""The tokenizer's own tokenizations of every prefix of a text: the internal nodes of the covering tree.

A prefix is tokenized exactly as the tokenizer would tokenize it (its normalizer, pre-tokenizer,
added tokens, merges and byte fallback all apply), so no tokenizer is re-implemented here: once
as if the text ended there, and once cut just before each lookahead probe (a character of each
class a regex pre-tokenizer tells apart), because what follows can move the last pre-token
boundary. Two cases need more than `encode`, because a prefix may end inside a multi-byte UTF-8
character, which is not a string:

- byte-level BPE (GPT-2 alphabet): the text is pre-tokenized up to the end of that character and
  the piece holding the cut is run through the BPE model up to the cut (the BPE model works on
  bytes). When the character is not complete yet, its pre-token is unknown, so both cases are
  nodes: the partial character joins the last piece, or it starts a new one.
- SentencePiece with byte fallback: a character can only be split by its `<0xNN>` byte tokens,
  which no merge crosses, so the prefix is the text before the character plus those byte tokens.
"""

from __future__ import annotations

import weakref

from tokenizers import Tokenizer

from tokeff.core.models import LoadedModel
from tokeff.decoding.bytelevel.utf8 import partial_start, utf8_length
from tokeff.decoding.bytelevel.vocab import ByteVocab
from tokeff.tokenizers_tools.canonical import TokenizerFamily, gpt2_byte_decoder, tokenizer_family

Path = tuple[int, ...]
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MEMO_LIMIT = 50_000
# One character of each class a regex pre-tokenizer tells apart (letter, digit, symbol, space,
# other whitespace): what follows a prefix can move its last pre-token boundary (GPT-2's
# `\s+(?!\S)` gives the last space of a run to the next word), and the tokenizations of the
# prefix cut before each probe include every such split.
LOOKAHEAD_PROBES = ("a", "0", ".", " ", "\n")


class PrefixTokenizer:
    """Tokenizations of text prefixes (as bytes), memoized: consecutive steps re-ask for the same prefixes."""

    def __init__(self, tokenizer, vocab: ByteVocab) -> None:
        # A private copy that reads special-token strings ("<|endoftext|>") as plain text: the byte
        # level sees text, and special tokens have no bytes.
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.encode_special_tokens = True
        self.family, self.byte_fallback = tokenizer_family(tokenizer)
        self.vocab = vocab
        self._byte_to_char = {byte: char for char, byte in gpt2_byte_decoder().items()}
        self._memo: dict[tuple[bytes, bytes], list[Path]] = {}

    @classmethod
    def for_model(cls, lm: LoadedModel) -> PrefixTokenizer:
        encoder = _CACHE.get(lm.tokenizer)
        if encoder is None:
            encoder = _CACHE[lm.tokenizer] = cls(lm.tokenizer, ByteVocab.for_model(lm))
        return encoder

    def encode(self, text: str) -> Path:
        return tuple(self.backend.encode(text, add_special_tokens=False).ids)

    def tokenizations(self, data: bytes, after: bytes = b"") -> list[Path]:
        """The nodes for prefix `data`: usually one, none when a character is split where no token can split it.

        `after` is the text that follows (only the rest of a split character is used).
        """
        cut = partial_start(data)
        rest = b""
        if cut < len(data):
            rest = after[: utf8_length(data[cut]) - (len(data) - cut)]
            if partial_start(data + rest) < len(data) + len(rest):
                rest = b""  # the character is not complete yet
        key = (data, rest)
        paths = self._memo.get(key)
        if paths is None:
            if len(self._memo) > _MEMO_LIMIT:
                self._memo.clear()
            paths = self._memo[key] = self._tokenize(data, cut, rest)
        return paths

    def _tokenize(self, data: bytes, cut: int, rest: bytes) -> list[Path]:
        if cut == len(data):
            text = data.decode("utf-8")
            paths = [self.encode(text)]
            for probe in LOOKAHEAD_PROBES:  # pre-tokenizer lookahead: the prefix as it is cut before what follows
                path = self._cut(self.encode(text + probe), len(data))
                if path is not None and path not in paths:
                    paths.append(path)
            return paths
        if self.family is TokenizerFamily.BYTE_LEVEL:
            return self._byte_level_split(data, cut, rest)
        if self.byte_fallback:
            return self._byte_fallback_split(data, cut, rest)
        return []  # no token ends inside a character

    def _bpe(self, piece: str) -> Path:
        return tuple(token.id for token in self.backend.model.tokenize(piece)) if piece else ()

    def _pieces(self, text: str) -> list[str]:
        pre = self.backend.pre_tokenizer
        return [piece for piece, _ in pre.pre_tokenize_str(text)] if pre else [text]

    def _byte_level_split(self, data: bytes, cut: int, rest: bytes) -> list[Path]:
        if rest:  # the character is known: pre-tokenize through it, BPE the piece up to the cut
            tokens: Path = ()
            position = 0
            for piece in self._pieces((data + rest).decode("utf-8")):
                if position + len(piece) > len(data):
                    return [tokens + self._bpe(piece[: len(data) - position])]
                tokens += self._bpe(piece)
                position += len(piece)
            return [tokens]
        pieces = self._pieces(data[:cut].decode("utf-8"))
        head = tuple(token for piece in pieces[:-1] for token in self._bpe(piece))
        last = pieces[-1] if pieces else ""
        partial = "".join(self._byte_to_char[byte] for byte in data[cut:])
        joined = head + self._bpe(last + partial)
        separate = head + self._bpe(last) + self._bpe(partial)
        return [joined] if joined == separate else [joined, separate]

    def _byte_fallback_split(self, data: bytes, cut: int, rest: bytes) -> list[Path]:
        if rest:  # keep the complete tokenization's cut at this byte, if it has one
            path = self._cut(self.encode((data + rest).decode("utf-8")), len(data))
            return [] if path is None else [path]
        fallback = [self.vocab.single_byte_token(byte) for byte in data[cut:]]
        if None in fallback:
            return []
        return [self.encode(data[:cut].decode("utf-8")) + tuple(fallback)]

    def boundary_tokens(self, data: bytes, boundary: int) -> Path | None:
        """The tokens of `data` (its complete characters) that end at byte `boundary`, if one ends there."""
        return self._cut(self.encode(data[: partial_start(data)].decode("utf-8")), boundary)

    def _cut(self, tokens: Path, boundary: int) -> Path | None:
        """The first tokens, spelling exactly `boundary` bytes; None if a token straddles that byte."""
        position = 0
        for index, token in enumerate(tokens):
            if position == boundary:
                return tokens[:index]
            position += len(self.vocab.token_bytes[token] or b"")
        return tokens if position == boundary else None
