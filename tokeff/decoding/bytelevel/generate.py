"""Generating bytes: byte by byte from anything that gives next-byte distributions (one model or an
ensemble), or from one model at token speed (a cover of the prompt, then whole tokens).

Why token steps are exact: the probability that the model's text goes on with y after x is the sum,
over the covers c of x, of P(c) times the probability that the tokens after c spell the rest of y.
So drawing a cover with probability P(c) / P(x) (`ByteLevelModel.next_covers`) and then sampling
plain tokens after it draws y from the byte-level distribution, the same one byte steps draw from:
byte steps only decide the cover more slowly (once the covering tree has collapsed to one live
tokenization past the cut, a byte step is a slice of a token step). It holds exactly for a model that
puts no probability on tokenizations the tokenizer never makes (the lemma's assumption; tests check
it on such a model); a real model's small mass on those is renormalized away byte by byte by the
byte-level model, and kept by token steps, as any token-level sampler keeps it. A byte budget or a
stop string cuts the last token's bytes, which is exact too: the cut is a function of the continuation.

Greedy is another matter: the argmax over bytes, byte after byte, is not the most probable cover
followed by the argmax tokens (the byte argmax sums over the tokens that share a byte). Both are here.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from typing import Protocol

import torch

from tokeff.decoding.bytelevel.model import ByteLevelModel
from tokeff.decoding.bytelevel.utf8 import partial_start
from tokeff.decoding.bytelevel.vocab import END
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import TextCallback


class ByteSource(Protocol):
    def next_byte_logprobs(self) -> torch.Tensor: ...

    def append(self, data: bytes | int) -> None: ...


def generate_bytes(
    source: ByteSource,
    chooser: TokenChooser,
    max_bytes: int,
    stop_at_end: bool = True,
    stop: Sequence[bytes] = (),
    on_text: TextCallback | None = None,
) -> bytes:
    """Choose bytes one at a time (argmax or a sample over 256 bytes + end) until the end, a stop string or `max_bytes`.

    The chooser sees the 257 log-probabilities as logits, so temperature, top-k and top-p apply to bytes.
    Streamed text holds back a split UTF-8 character until it is complete.
    """
    generated = bytearray()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while len(generated) < max_bytes:
        logprobs = source.next_byte_logprobs().float()
        if not stop_at_end:
            logprobs = logprobs.clone()
            logprobs[END] = -math.inf
        choice = chooser.choose(logprobs, list(generated))
        if choice == END:
            break
        generated.append(choice)
        source.append(choice)
        if on_text is not None and (text := decoder.decode(bytes([choice]))):
            on_text(text)
        if any(generated.endswith(marker) for marker in stop if marker):
            break
    if on_text is not None and (text := decoder.decode(b"", final=True)):
        on_text(text)
    return bytes(generated)


def generate_by_tokens(
    model: ByteLevelModel,
    chooser: TokenChooser,
    max_bytes: int,
    stop_at_end: bool = True,
    stop: Sequence[bytes] = (),
    on_text: TextCallback | None = None,
    cover_chooser: TokenChooser | None = None,
) -> bytes:
    """Choose a cover of the model's text (`cover_chooser`, default `chooser`, over `next_covers`), then
    whole tokens after it (`chooser` over next-token logits) until an end-of-sequence token, a stop string
    or `max_bytes`; the last token's bytes are cut there. One model call per token after the covers'.

    The model is spent: its text is not extended. As at the byte level, no token is chosen that has no
    bytes (a special token) or breaks UTF-8, and the end only between characters (never with `stop_at_end` False).
    """
    if max_bytes < 1:
        return b""
    vocab = model.vocab
    covers = model.next_covers(allow_end=stop_at_end)
    path, token, inside = covers.entry((cover_chooser or chooser).choose(covers.logprobs.float(), []))
    allowed: dict[bytes, torch.Tensor] = {}  # per trailing partial character: the tokens that may follow
    generated = bytearray()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens = list(path)
    while token not in vocab.eos_ids:
        tokens.append(token)
        before = len(generated)
        generated += vocab.token_bytes[token][inside:]
        inside = 0
        end = _end_in(generated, before, stop, max_bytes)
        if end is not None:
            del generated[end:]
        if on_text is not None and (text := decoder.decode(bytes(generated[before:]))):
            on_text(text)
        if end is not None:
            break
        partial = bytes(generated[partial_start(generated) :])
        if partial not in allowed:
            keep = vocab.keeps_utf8(partial).clone()
            keep[vocab.eos_ids] = stop_at_end and not partial
            allowed[partial] = keep.to(model.lm.device)
        logits = model.token_logits(tokens).masked_fill(~allowed[partial], -math.inf)
        token = chooser.choose(logits, model.trunk + tokens)
    if on_text is not None and (text := decoder.decode(b"", final=True)):
        on_text(text)
    return bytes(generated)


def _end_in(data: bytearray, start: int, stop: Sequence[bytes], max_bytes: int) -> int | None:
    """Where the output ends if it ends in data[start:]: after the first stop string found there, or at `max_bytes`."""
    ends = [found + len(marker) for marker in stop if marker and (found := data.find(marker, max(0, start - len(marker) + 1))) >= 0]
    if len(data) >= max_bytes:
        ends.append(max_bytes)
    return min(ends) if ends else None
