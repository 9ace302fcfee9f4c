"""Bits per byte of byte-level models and their ensembles: every byte scored under the next-byte distribution.

A long text is cut into segments (after a newline where possible), each scored from a fresh
context like the token-level scorer's windows. The members' own byte-level bits per byte come
from the same run, so an ensemble and its members are compared on identical conditions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.decoding.bytelevel.ensemble import ByteEnsemble
from tokeff.decoding.bytelevel.model import ByteLevelModel
from tokeff.decoding.bytelevel.utf8 import partial_start


@dataclass
class ByteBpbResult:
    bpb: float
    member_bpb: list[float]
    bytes: int
    segments: int
    seconds: float
    model_calls: list[int]

    def to_json(self) -> dict:
        return {
            "bpb": self.bpb,
            "member_bpb": self.member_bpb,
            "bytes": self.bytes,
            "segments": self.segments,
            "seconds": self.seconds,
            "model_calls": self.model_calls,
            "model_calls_per_byte": [calls / self.bytes for calls in self.model_calls],
        }


def segments(data: bytes, segment_bytes: int) -> list[bytes]:
    """Pieces of at most `segment_bytes`, cut after the last newline inside the limit, else at a character boundary."""
    if segment_bytes < 16:
        raise TokeffError(f"--segment-bytes must be at least 16, got {segment_bytes}")
    pieces, start = [], 0
    while start < len(data):
        end = min(start + segment_bytes, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start, end)
            end = newline + 1 if newline > start else start + partial_start(data[start:end])
        pieces.append(data[start:end])
        start = end
    return pieces


def byte_bits_per_byte(
    lms: list[LoadedModel], text: str, weights: list[float] | None = None, mode: str = "mix", segment_bytes: int = 2048
) -> ByteBpbResult:
    """Bits per byte of the byte-level ensemble of `lms` (and of each member alone) on `text`."""
    data = text.encode("utf-8")
    if not data:
        raise TokeffError("the text is empty")
    started = time.perf_counter()
    nll = 0.0
    member_nll = [0.0] * len(lms)
    calls = [0] * len(lms)
    pieces = segments(data, segment_bytes)
    with console.progress() as bar:
        task = bar.add_task("scoring bytes", total=len(data))
        for piece in pieces:
            ensemble = ByteEnsemble([ByteLevelModel(lm) for lm in lms], weights, mode)
            for byte in piece:
                nll -= float(ensemble.next_byte_logprobs()[byte])
                for index, logprobs in enumerate(ensemble.member_logprobs):
                    member_nll[index] -= float(logprobs[byte])
                ensemble.append(byte)
                bar.advance(task)
            calls = [total + new for total, new in zip(calls, ensemble.model_calls)]
    scale = 1.0 / (math.log(2) * len(data))
    return ByteBpbResult(
        bpb=nll * scale,
        member_bpb=[value * scale for value in member_nll],
        bytes=len(data),
        segments=len(pieces),
        seconds=time.perf_counter() - started,
        model_calls=calls,
    )
