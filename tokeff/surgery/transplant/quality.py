"""What a transplant cost: bits per byte before and after, split by bytes under shared vs new tokens.

Each model's per-token bits are spread evenly over the token's canonical bytes, giving bits per
byte of the text for both models. The transplanted model's tokens then label every byte as
covered by a shared token (the base model knew it) or an estimated one, and both models' bits are
summed over each label, so the report shows where the loss comes from.
"""

from __future__ import annotations

import math

import numpy as np

from tokeff.core.evaluation import BpbResult, bits_per_byte
from tokeff.core.models import LoadedModel
from tokeff.tokenizers_tools.canonical import vocab_bytes


def quality_report(base: LoadedModel, transplanted: LoadedModel, text: str, estimated_ids: np.ndarray, context: int) -> dict:
    before = bits_per_byte(base, text, context=context)
    after = bits_per_byte(transplanted, text, context=context)
    report = {"bytes": before.bytes, "base_bpb": before.bpb, "transplanted_bpb": after.bpb,
              "base_tokens": before.tokens, "transplanted_tokens": after.tokens}
    base_bits = _bits_per_text_byte(before, base)
    new_bits = _bits_per_text_byte(after, transplanted)
    if base_bits is None or new_bits is None:  # a normalizer changed the text: bytes no longer line up
        return report
    lengths = _token_lengths(after, transplanted)
    is_new = np.isin(np.asarray(after.token_ids), estimated_ids)
    on_new = np.repeat(is_new, lengths)
    for label, mask in (("shared", ~on_new), ("new", on_new)):
        count = int(mask.sum())
        report[f"{label}_bytes"] = count
        report[f"{label}_base_bpb"] = float(base_bits[mask].sum() / count) if count else None
        report[f"{label}_transplanted_bpb"] = float(new_bits[mask].sum() / count) if count else None
    return report


def _token_lengths(result: BpbResult, lm: LoadedModel) -> np.ndarray:
    table = vocab_bytes(lm.tokenizer).token_bytes
    return np.array([len(table[i] or b"") for i in result.token_ids], dtype=np.int64)


def _bits_per_text_byte(result: BpbResult, lm: LoadedModel) -> np.ndarray | None:
    lengths = _token_lengths(result, lm)
    if int(lengths.sum()) != result.bytes:
        return None
    bits = (result.token_nll / math.log(2)).numpy()
    spread = np.divide(bits, lengths, out=np.zeros_like(bits), where=lengths > 0)
    return np.repeat(spread, lengths)


def summarize(report: dict) -> str:
    line = f"bpb {report['base_bpb']:.4f} -> {report['transplanted_bpb']:.4f}"
    if "new_bytes" in report:
        share = report["new_bytes"] / max(1, report["bytes"])
        line += f" ({share:.1%} of bytes under new tokens"
        if report["new_bytes"]:
            line += f": {report['new_base_bpb']:.3f} -> {report['new_transplanted_bpb']:.3f}"
        line += ")"
    return line

