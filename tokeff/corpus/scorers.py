"""Per-document scorers: a picklable job spec that each engine builds once per process (or Ray actor).

Both engines run the same scorer on the same documents, so their rows agree document for document.
Scoring calls the library functions (`bits_per_byte_many`, `detect_texts`); nothing here re-implements them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa


_COMMON = [("id", pa.string()), ("source", pa.string()), ("bytes", pa.int64()), ("tokens", pa.int64())]
SCHEMAS = {
    "bpb": pa.schema(_COMMON + [("bits", pa.float64()), ("bpb", pa.float64()), ("error", pa.string())]),
    "watermark": pa.schema(_COMMON + [("p_value", pa.float64()), ("statistic", pa.float64()),
                                      ("verdict", pa.bool_()), ("error", pa.string())]),
}


@dataclass(frozen=True)
class JobSpec:
    """What to compute per document: kind 'bpb' (model, context, stride) or 'watermark' (key, tokenizer, alpha, detection overrides such as runs)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def schema(self) -> pa.Schema:
        return SCHEMAS[self.kind]

    def check(self) -> None:
        """Fail at once on a missing key or an unknown model, without loading model weights."""
        if self.kind == "watermark":
            _load_watermark(self.params)
        else:
            from tokeff.core.resolve import model_folder

            model_folder(self.params["model"])

    def build(self) -> "Scorer":
        return DetectScorer(self.params) if self.kind == "watermark" else BpbScorer(self.params)


class Scorer:
    def __call__(self, documents: list[dict]) -> list[dict]:
        """One result row per document, in order; documents with an error pass through unscored."""
        rows = [_base(doc) for doc in documents]
        good = [index for index, doc in enumerate(documents) if doc["error"] is None]
        for index, result in zip(good, self.score([documents[index]["text"] for index in good])):
            rows[index].update(result)
        return rows

    def score(self, texts: list[str]) -> list[dict]:
        raise NotImplementedError


class BpbScorer(Scorer):
    def __init__(self, params: dict) -> None:
        from tokeff.core.models import load_model

        self.lm = load_model(params["model"], device=params.get("device", "auto"), dtype=params.get("dtype", "auto"),
                             trust_remote_code=params.get("trust_remote_code", False))
        self.context, self.stride = params.get("context", 1024), params.get("stride")

    def score(self, texts: list[str]) -> list[dict]:
        from tokeff.core.evaluation import bits_per_byte_many

        # A batch's texts share model calls (several short documents per forward pass).
        results = bits_per_byte_many(self.lm, texts, context=self.context, stride=self.stride)
        return [{"error": "the text produced no tokens"} if result is None else
                {"tokens": result.tokens, "bits": float(result.token_nll.sum()) / math.log(2), "bpb": result.bpb}
                for result in results]


class DetectScorer(Scorer):
    def __init__(self, params: dict) -> None:
        self.key, self.tokenizer = _load_watermark(params)
        self.alpha = params["alpha"]

    def score(self, texts: list[str]) -> list[dict]:
        from tokeff.decoding.watermark.detection import detect_texts

        return [{"tokens": result.tokens, "p_value": result.p_value, "statistic": result.statistic,
                 "verdict": result.watermarked, "error": result.error}
                for result in detect_texts(self.key, self.tokenizer, texts, alpha=self.alpha)]


def _base(doc: dict) -> dict:
    return {"id": doc["id"], "source": doc["source"], "bytes": doc["bytes"], "error": doc["error"]}


def _load_watermark(params: dict):
    from tokeff.decoding.watermark.keys import key_tokenizer, load_key

    key = load_key(Path(params["key"])).for_detection(params.get("overrides", {}))
    return key, key_tokenizer(key, params.get("tokenizer"), params.get("trust_remote_code", False))
