"""The `exp` scheme: exponential-minimum sampling driven by a cyclic key, and its edit-robust test.

Generation: step i of a text uses key position (offset + i) mod n, whose uniforms u_v over the
vocabulary pick the token argmax_v u_v^(1/p_v). Over a random key this is an exact sample from p
(the exponential race -log(u_v) / p_v), so the watermark leaves the text distribution unchanged
(`tokeff/kernels/exp_sampling.py`).
The offset is drawn per text, so one key yields n different continuations of the same prompt.

Detection: the alignment statistic (`tokeff/kernels/exp_alignment.py`) against the key, turned
into a p-value by a Monte Carlo test against random keys evaluated on the same tokens (exact under
"the text does not depend on the key", whatever its repeated tokens). It stops early once
`stop_after` null runs reach the observed statistic (Besag & Clifford's sequential p-value, which
makes unwatermarked texts cheap), and otherwise runs `runs` keys, so p >= 1 / (runs + 1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.kernels.exp_alignment import TokenBatch, alignment_scores, null_alignment_scores

FIRST_CHUNK = 32  # null runs per text in the first round; each later round doubles


def key_positions(key: WatermarkKey, offset: int, step: int | np.ndarray) -> np.ndarray:
    return (offset + np.asarray(step)) % key["key_length"]


@dataclass
class ExpScore:
    statistic: float
    p_value: float
    runs: int  # null runs made (fewer than the key's `runs` when the sequential test stopped early)


def score_texts(key: WatermarkKey, texts: list[np.ndarray]) -> list[ExpScore]:
    """Statistic and Monte Carlo p-value of each token sequence, batched over texts and null keys."""
    batch = TokenBatch.from_texts(texts)
    n, gap, runs, stop_after = key["key_length"], key["gap"], key["runs"], key["stop_after"]
    observed = alignment_scores(batch, key.words, gap)
    seeds = np.array([_null_seed(key, tokens) for tokens in batch.texts], dtype=np.uint64)
    exceed = np.zeros(len(batch), dtype=np.int64)
    made = np.zeros(len(batch), dtype=np.int64)
    active = np.ones(len(batch), dtype=bool)
    start, chunk = 0, FIRST_CHUNK
    while start < runs and active.any():
        count = min(chunk, runs - start)
        rows = np.flatnonzero(active)
        null = null_alignment_scores(batch.select(rows), seeds[rows], start, count, n, gap)
        reached = exceed[rows, None] + np.cumsum(null >= observed[rows, None], axis=1)
        stopped = reached[:, -1] >= stop_after
        made[rows] = start + np.where(stopped, np.argmax(reached >= stop_after, axis=1) + 1, count)
        exceed[rows] = np.minimum(reached[:, -1], stop_after)
        active[rows[stopped]] = False
        start += count
        chunk *= 2
    p_values = np.where(exceed >= stop_after, stop_after / np.maximum(made, 1), (exceed + 1) / (runs + 1))
    return [ExpScore(float(s), float(p), int(r)) for s, p, r in zip(observed, p_values, made)]


def _null_seed(key: WatermarkKey, tokens: np.ndarray) -> int:
    """Null keys depend on the key and the text, so a text always gets the same p-value."""
    digest = hashlib.sha256(key.words.tobytes() + np.asarray(tokens, dtype=np.int64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little")
