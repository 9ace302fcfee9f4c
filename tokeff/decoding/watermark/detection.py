"""Detection: text -> the key's tokenizer -> the scheme's test -> p-value and verdict. Never the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tokeff.decoding.watermark.keys import WatermarkKey

if TYPE_CHECKING:
    from tokeff.decoding.watermark.bayesian import TrainedDetector


@dataclass
class Detection:
    tokens: int  # tokens of the text under the key's tokenizer
    p_value: float | None = None  # None when the text could not be tested (see `error`)
    statistic: float | None = None
    p_floor: float | None = None  # the smallest p-value the test can report for this text
    watermarked: bool | None = None  # p_value <= alpha
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def detect_tokens(
    key: WatermarkKey, texts: list[list[int] | np.ndarray], alpha: float = 0.01, detector: TrainedDetector | None = None
) -> list[Detection]:
    """Test token sequences (already in the key's vocabulary); too-short ones get an error, no p-value.

    With a trained `detector` (synthid), each tested text's details also hold its posterior.
    """
    minimum = key["min_tokens"]
    results = [Detection(tokens=len(tokens)) for tokens in texts]
    testable = [index for index, tokens in enumerate(texts) if len(tokens) >= minimum]
    for index, result in enumerate(results):
        if index not in testable:
            result.error = "empty text" if result.tokens == 0 else (
                f"too short: {result.tokens} tokens, the key needs at least {minimum}")
    arrays = [np.asarray(texts[index], dtype=np.int64) for index in testable]
    for index, score in zip(testable, key.rule.score(arrays)):
        result = results[index]
        result.statistic, result.p_value, result.p_floor = score.statistic, score.p_value, score.p_floor
        result.watermarked = score.p_value <= alpha
        result.details = score.details
    if detector is not None and arrays:
        for index, posterior in zip(testable, detector.posteriors(key, arrays)):
            results[index].details["posterior"] = posterior
    return results


def detect_texts(
    key: WatermarkKey, tokenizer, texts: list[str], alpha: float = 0.01, detector: TrainedDetector | None = None
) -> list[Detection]:
    """Re-tokenize each text with the key's tokenizer (no special tokens) and test it."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []  # one batched encode
    return detect_tokens(key, ids, alpha, detector)
