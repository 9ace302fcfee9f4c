"""The `synthid` scheme (SynthID-Text, Dathathri et al., Nature 2024) with transformers' hashing and parameters.

g-values are computed exactly as transformers' `SynthIDTextWatermarkLogitsProcessor` does: an
int64 linear-congruential hash of the n-gram (context then token), then of each depth's key,
taken modulo a 0/1 sampling table drawn by `torch.randint` from `sampling_table_seed` (on the
CPU). Generation reweights the warped distribution with one tournament layer per key (the
processor's `update_scores`), skipping a context already seen in the text, as transformers does.

Detection scores the mean (or depth-weighted mean) g-value over the text's n-grams whose context appears for the first
time (a repeated context is one piece of evidence, not many). No detector is trained. The null is a
text independent of the key, that is, a uniformly random key on the text's own n-grams. For the mean
and a power-of-two table (transformers' default of 2**16) its p-value is exact: each depth's sum is a
uniform choice among the table's cyclic shifts, and the depths' key words are independent. Otherwise
(the weighted mean, or another table size) it is a Monte Carlo test against random keys on the same
n-grams, so p >= 1 / (runs + 1).

Where tokeff and transformers could differ, tokeff follows transformers: the tournament reweights
the distribution after temperature/top-k/top-p (transformers appends its watermark processor
last); the context of the first generated tokens is zero-padded, never the prompt; a context seen
among the last `context_history_size` ones is left unwatermarked. Two differences remain:
detection skips every repeated context of the text (transformers' mask forgets contexts older than
`context_history_size`), and the sampling table is always drawn on the CPU (transformers draws it
on the processor's device, and CUDA's generator (Philox) is not the CPU's (Mersenne Twister)). A key from
`keygen --from-transformers` therefore matches text that transformers watermarked on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option
from tokeff.decoding.watermark.scheme import MIN_TOKENS, RUNS, SCHEMES, Score, WatermarkScheme, null_seed

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from tokeff.decoding.sampling import TokenChooser
    from tokeff.decoding.types import DecodeConfig

MULTIPLIER = np.uint64(6364136223846793005)  # transformers' `accumulate_hash` (newlib/musl LCG)


def accumulate(hashes: np.ndarray, data: np.ndarray) -> np.ndarray:
    """transformers' accumulate_hash in wrapping uint64 arithmetic (bit-identical to its int64 torch ops)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    data = np.asarray(data, dtype=np.int64).view(np.uint64)
    for column in range(data.shape[-1]):
        hashes = (hashes + data[..., column]) * MULTIPLIER + np.uint64(1)
    return hashes


def sampling_table(size: int, seed: int) -> np.ndarray:
    import torch  # transformers' table is a torch.randint draw; the rest of detection needs no torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(low=0, high=2, size=(size,), generator=generator).numpy()


def g_values_of_hashes(ngram_hashes: np.ndarray, keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """[..., depth] g-values from each n-gram's hash and the depth keys (uint64 words)."""
    hashed = (ngram_hashes[..., None] + keys) * MULTIPLIER + np.uint64(1)
    return table[np.mod(hashed.view(np.int64), len(table))]


def first_context_ngrams(tokens: np.ndarray, ngram_len: int) -> np.ndarray:
    """The text's n-grams [m, ngram_len] whose context (first ngram_len - 1 tokens) has not occurred before."""
    ngrams = np.lib.stride_tricks.sliding_window_view(np.asarray(tokens, dtype=np.int64), ngram_len)
    _, first = np.unique(ngrams[:, :-1], axis=0, return_index=True)
    return ngrams[np.sort(first)]


def depth_null_pmf(hashes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Distribution of one depth's g-value sum over the n-grams when its key word is uniformly random.

    For a power-of-two table the index of n-gram hash h under key word k is (h*M + k*M + 1) mod size, and
    k*M + 1 is uniform: every n-gram's index moves by the same uniform shift. So the depth's sum takes each
    of the `size` values sum_h table[(h*M + shift) mod size] with equal probability, all computed at once
    as one circular cross-correlation of the n-grams' index counts with the table.
    """
    size = len(table)
    counts = np.bincount((hashes * MULTIPLIER % np.uint64(size)).astype(np.int64), minlength=size)
    sums = np.fft.irfft(np.conj(np.fft.rfft(counts)) * np.fft.rfft(table.astype(float)), n=size)
    return np.bincount(np.rint(sums).astype(np.int64), minlength=len(hashes) + 1) / size


def power_pmf(pmf: np.ndarray, times: int) -> np.ndarray:
    """The distribution of a sum of `times` independent draws from `pmf` (direct convolutions: exact tails)."""
    result = np.ones(1)
    while times:
        if times & 1:
            result = np.convolve(result, pmf)
        times >>= 1
        if times:
            pmf = np.convolve(pmf, pmf)
    return result


@SCHEMES.register
class SynthId(WatermarkScheme):
    name = "synthid"
    summary = "tournament sampling (SynthID-Text), transformers' hashing"
    options = (
        Option("depth", int, 30, "Tournament layers: one secret key each (transformers' `keys`).", min=1, max=128),
        Option("ngram_len", int, 5, "n-gram length: the previous ngram_len - 1 tokens seed the g-values.", min=2, max=64),
        Option("context_history_size", int, 1024, "Recent contexts remembered so a repeated one is not watermarked.", min=1),
        Option("sampling_table_size", int, 2**16, "Size of the 0/1 table g-values are read from.", min=2, max=2**24),
        Option("sampling_table_seed", int, 0, "Seed of the sampling table (torch.randint on the CPU).", min=0),
        Option("skip_first_ngram_calls", bool, False, "Leave the first ngram_len - 1 generated tokens unwatermarked."),
        # SynthID-Text's weighted mean weighs depth d by linspace(10, 1, depth), normalized to mean 1:
        # the first tournament layers move the distribution most
        Option("statistic", str, "mean", "Score: mean g-value (exact p-value for a power-of-two table), or "
               "weighted_mean (early layers weigh more; Monte Carlo p-value over --runs random keys).",
               choices=("mean", "weighted_mean")),
        RUNS,
        MIN_TOKENS,
    )
    detection_options = ("runs", "statistic")
    warps = True

    @classmethod
    def word_count(cls, params: Mapping[str, Any]) -> int:
        return params["depth"]

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        """From `SynthIDTextWatermarkingConfig(...).to_dict()`: its keys become the secret words."""
        fields = {"ngram_len", "context_history_size", "sampling_table_size", "sampling_table_seed",
                  "skip_first_ngram_calls"}
        keys = config.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, int) and -(2**63) <= k < 2**63 for k in keys):
            raise TokeffError("a SynthID config needs 'keys': a non-empty list of 64-bit integers")
        if config.get("debug_mode"):
            raise TokeffError("a SynthID config with debug_mode set does not watermark; unset it")
        unknown = sorted(set(config) - fields - {"keys", "debug_mode", "watermarking_type"})
        if unknown:
            raise TokeffError(f"unknown SynthID config field(s): {', '.join(unknown)}")
        params = cls.parameters({"depth": len(keys), **{name: config[name] for name in fields if name in config}})
        return params, np.array(keys, dtype=np.int64).view(np.uint64)

    def to_transformers(self) -> dict[str, Any]:
        fields = ("ngram_len", "context_history_size", "sampling_table_size", "sampling_table_seed",
                  "skip_first_ngram_calls")
        return {"keys": self.keys.view(np.int64).tolist(), **{name: self.key[name] for name in fields},
                "debug_mode": False}

    @cached_property
    def table(self) -> np.ndarray:
        return sampling_table(self.key["sampling_table_size"], self.key["sampling_table_seed"])

    @property
    def keys(self) -> np.ndarray:
        return self.key.words

    def chooser(self, config: DecodeConfig, offset: int | None = None) -> TokenChooser:
        from tokeff.decoding.watermark.samplers.synthid import SynthIdChooser

        return SynthIdChooser(config, self)

    def logits_processor(self, config: DecodeConfig, offsets: np.ndarray | None, prompt_length: int) -> LogitsProcessor:
        from tokeff.decoding.watermark.samplers.synthid import SynthIdLogitsProcessor

        return SynthIdLogitsProcessor(self, config, prompt_length)

    def fresh_ngram_hashes(self, tokens: np.ndarray) -> np.ndarray:
        """Hashes of the text's n-grams whose context is new: what detection scores."""
        ngrams = first_context_ngrams(tokens, self.key["ngram_len"])
        return accumulate(np.ones(len(ngrams), dtype=np.uint64), ngrams)

    def g_values(self, tokens: np.ndarray) -> np.ndarray:
        """[fresh n-grams, depth] 0/1 g-values of a text (the Bayesian detector's input)."""
        return g_values_of_hashes(self.fresh_ngram_hashes(tokens), self.keys, self.table)

    def score(self, texts: Sequence[np.ndarray]) -> list[Score]:
        size = len(self.table)
        exact = self.key["statistic"] == "mean" and size & (size - 1) == 0
        return [self._exact(tokens) if exact else self._monte_carlo(tokens) for tokens in texts]

    def _exact(self, tokens: np.ndarray) -> Score:
        hashes = self.fresh_ngram_hashes(tokens)
        g = g_values_of_hashes(hashes, self.keys, self.table)
        pmf = power_pmf(depth_null_pmf(hashes, self.table), len(self.keys))
        # summed from the far end (smallest terms first); a tail below float's range is its smallest value
        tiny = np.finfo(float).tiny
        p_value = min(1.0, max(float(pmf[int(g.sum()):][::-1].sum()), tiny))
        return Score(float(g.mean()), p_value, max(float(pmf[-1]), tiny), {"scored_ngrams": len(hashes)})

    def _monte_carlo(self, tokens: np.ndarray) -> Score:
        runs = self.key["runs"]
        weights = np.ones(len(self.keys))
        if self.key["statistic"] == "weighted_mean":
            weights = np.linspace(10, 1, len(self.keys))
            weights *= len(weights) / weights.sum()
        hashes = self.fresh_ngram_hashes(tokens)
        observed = (g_values_of_hashes(hashes, self.keys, self.table) * weights).mean()
        rng = np.random.default_rng(null_seed(self.key, tokens))
        null_keys = rng.integers(0, 2**64, size=(runs, 1, len(self.keys)), dtype=np.uint64)
        null = (g_values_of_hashes(hashes[None, :], null_keys, self.table) * weights).mean(axis=(1, 2))
        exceed = int((null >= observed).sum())
        return Score(float(observed), (exceed + 1) / (runs + 1), 1.0 / (runs + 1), {"scored_ngrams": len(hashes)})
