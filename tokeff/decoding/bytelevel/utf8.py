"""UTF-8 structure at the end of a byte string: where a split character starts, which bytes may follow.

The byte-level model is a distribution over UTF-8 text (tokenizers take strings), so it gives no
probability to a byte that would make the text invalid UTF-8.
"""

from __future__ import annotations

from functools import cache

import torch

from tokeff.decoding.bytelevel.vocab import END, N_BINS


def utf8_length(lead: int) -> int:
    """Bytes of the character that starts with this lead byte."""
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def partial_start(data: bytes) -> int:
    """Where a trailing incomplete UTF-8 character starts (len(data) if the bytes end on a character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:
            return len(data) - back if utf8_length(byte) > back else len(data)
    return len(data)


@cache
def _allowed(partial: bytes) -> torch.Tensor:
    allowed = torch.zeros(N_BINS, dtype=torch.bool)
    if not partial:  # between characters: ASCII, a lead byte, or the end of the text
        allowed[0x00:0x80] = True
        allowed[0xC2:0xF5] = True
        allowed[END] = True
        return allowed
    low, high = 0x80, 0xBF
    if len(partial) == 1:  # the second byte excludes overlong forms, surrogates and code points past U+10FFFF
        low, high = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(
            partial[0], (low, high)
        )
    allowed[low : high + 1] = True
    return allowed


def allowed_next(data: bytes) -> torch.Tensor:
    """Boolean mask over the 258 bins: the bytes (and END) that keep `data` a prefix of valid UTF-8."""
    return _allowed(bytes(data[partial_start(data) :]))
