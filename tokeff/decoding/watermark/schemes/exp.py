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

import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.scheme import MIN_TOKENS, RUNS, SCHEMES, Score, WatermarkScheme, null_seed
from tokeff.kernels.exp_alignment import TokenBatch, alignment_scores, null_alignment_scores

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from tokeff.decoding.sampling import TokenChooser
    from tokeff.decoding.types import DecodeConfig

FIRST_CHUNK = 32  # null runs per text in the first round; each later round doubles


def key_positions(key: WatermarkKey, offset: int, step: int | np.ndarray) -> np.ndarray:
    return (offset + np.asarray(step)) % key["key_length"]


def score_texts(key: WatermarkKey, texts: Sequence[np.ndarray]) -> list[Score]:
    """Statistic and Monte Carlo p-value of each token sequence, batched over texts and null keys."""
    batch = TokenBatch.from_texts(texts)
    n, gap, runs, stop_after = key["key_length"], key["gap"], key["runs"], key["stop_after"]
    observed = alignment_scores(batch, key.words, gap)
    seeds = np.array([null_seed(key, tokens) for tokens in batch.texts], dtype=np.uint64)
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
    floor = 1.0 / (runs + 1)
    return [Score(float(s), float(p), floor, {"null_runs": int(r)}) for s, p, r in zip(observed, p_values, made)]


def check_sampling(config: DecodeConfig) -> None:
    if config.temperature == 0:
        raise TokeffError("the exp watermark samples: use --method sample (temperature > 0), not greedy decoding")


@SCHEMES.register
class Exp(WatermarkScheme):
    name = "exp"
    summary = "distortion-free, edit-robust (Kuditipudi et al.)"
    options = (
        Option("key_length", int, 256, "Key positions: a text of up to this many tokens never reuses one.",
               min=1, max=1 << 20, aliases=("--length",)),
        # a null match scores 1 on average; 2 came out best of 0.5-3 in a sweep on smollm2-135m text
        # with 0-40% edits (the sweep is not in docs/)
        Option("gap", float, 2.0, "Alignment penalty per inserted or deleted token.", min=0, max=100),
        RUNS,
        Option("stop_after", int, 20, "Sequential test: stop once this many null runs reach the statistic.", min=1),
        MIN_TOKENS,
    )
    detection_options = ("runs",)
    picks_token = True

    @classmethod
    def word_count(cls, params: Mapping[str, Any]) -> int:
        return params["key_length"]  # one word per key position

    def check_sampling(self, config: DecodeConfig) -> None:
        check_sampling(config)

    def offsets(self, count: int, seed: int | None) -> np.ndarray:
        """Each text's starting key position: from `seed` if given, else fresh OS randomness."""
        n = self.key["key_length"]
        if seed is None:
            return np.array([secrets.randbelow(n) for _ in range(count)], dtype=np.int64)
        return np.random.default_rng([seed, 0x5EED]).integers(0, n, size=count)

    def chooser(self, config: DecodeConfig, offset: int | None = None) -> TokenChooser:
        from tokeff.decoding.watermark.samplers.exp import ExpChooser

        start = offset if offset is not None else int(self.offsets(1, config.seed)[0])
        return ExpChooser(config, self.key, start)

    def logits_processor(self, config: DecodeConfig, offsets: np.ndarray | None, prompt_length: int) -> LogitsProcessor:
        from tokeff.decoding.watermark.samplers.exp import ExpLogitsProcessor

        return ExpLogitsProcessor(self.key, config, offsets, prompt_length)

    def score(self, texts: Sequence[np.ndarray]) -> list[Score]:
        return score_texts(self.key, texts)
