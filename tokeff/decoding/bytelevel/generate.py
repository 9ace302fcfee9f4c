"""Generating bytes from anything that gives next-byte distributions (one model or an ensemble)."""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from typing import Protocol

import torch

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
