"""The edit-robust alignment statistic of the `exp` watermark, over every shift of the key.

A text y_1..y_m is aligned to the cyclic key xi_0..xi_{n-1} (key position p gives token v the
uniform u(p, v)). Matching y_i to key position p scores -log(1 - u(p, y_i)), which is Exp(1) when
the text does not depend on the key and large when exponential-minimum sampling picked y_i with
that key position. Skipping a text token (an insertion) or a key position inside the alignment (a
deletion) costs `gap`. The statistic is the best score over alignments of the whole text to any
contiguous stretch of the key read cyclically (start and end free): one semi-global dynamic
program over m x (n + m) cells covers every shift at once, where "one Levenshtein distance per
shift" would take n x m x m.

Two implementations of the same numbers: `*_numpy` (vectorized over keys, a Python loop over text
tokens: the reference tests compare against and the baseline the benchmark measures) and the
Numba kernels, parallel over texts x keys. Null keys (for the Monte Carlo p-value) are derived
inside the kernel from a per-text seed, so no key matrix is materialized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from tokeff.kernels.keyed_uniform import GOLDEN, keyed_hashes, keyed_hash_scalar, mix64_scalar, stream_words

# The match score -log(1 - u) read from a table indexed by the top SCORE_BITS bits of u's hash (the
# midpoint of u's bin): a 256 KiB lookup instead of a logarithm per cell, the hot part of the null
# runs. The permutation test stays exact because observed and null statistics use the same scores;
# the top bin scores 11.8 (u above 1 - 2^-16), which bounds a single token's weight.
SCORE_BITS = 16
SCORE_TABLE = (-np.log1p(-(np.arange(1 << SCORE_BITS) + 0.5) / (1 << SCORE_BITS))).astype(np.float32)
_SHIFT = np.uint64(64 - SCORE_BITS)


def match_scores(words: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """-log(1 - u(word, token)) as the kernels compute it (table lookup), for broadcast arrays."""
    return SCORE_TABLE[keyed_hashes(words, tokens) >> _SHIFT]


@dataclass
class TokenBatch:
    """Texts as flat arrays: each text's tokens as indices into its own sorted unique token ids."""

    texts: list[np.ndarray]  # int64 token ids of each text
    uid: np.ndarray  # int64 [total tokens]
    token_offsets: np.ndarray  # int64 [texts + 1]
    unique: np.ndarray  # uint64 [total unique tokens]
    unique_offsets: np.ndarray  # int64 [texts + 1]

    @classmethod
    def from_texts(cls, texts: list[np.ndarray]) -> TokenBatch:
        uids, uniques = [], []
        for tokens in texts:
            unique, uid = np.unique(np.asarray(tokens, dtype=np.int64), return_inverse=True)
            uids.append(uid.astype(np.int64))
            uniques.append(unique.astype(np.uint64))
        return cls(
            texts=[np.asarray(tokens, dtype=np.int64) for tokens in texts],
            uid=np.concatenate(uids) if uids else np.zeros(0, np.int64),
            token_offsets=np.concatenate([[0], np.cumsum([len(u) for u in uids])]).astype(np.int64),
            unique=np.concatenate(uniques) if uniques else np.zeros(0, np.uint64),
            unique_offsets=np.concatenate([[0], np.cumsum([len(u) for u in uniques])]).astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.token_offsets) - 1

    def select(self, rows: np.ndarray) -> TokenBatch:
        return TokenBatch.from_texts([self.texts[b] for b in rows])


# ---------------------------------------------------------------- NumPy reference / baseline


def alignment_scores_numpy(tokens: np.ndarray, keys: np.ndarray, gap: float) -> np.ndarray:
    """The statistic of one text under each of R keys (`keys`: uint64 [R, n]) -> float64 [R]."""
    tokens = np.asarray(tokens, dtype=np.int64)
    keys = np.atleast_2d(np.asarray(keys, dtype=np.uint64))
    runs, n = keys.shape
    m = len(tokens)
    columns = n + m
    # score[r, i, t]: y_i matched to the key position read at column t (key position t mod n)
    positions = np.arange(columns) % n
    score = match_scores(keys[:, None, positions], tokens[None, :, None]).astype(np.float64)
    ramp = gap * np.arange(columns + 1)
    best = np.zeros((runs, columns + 1))  # row i = 0: the alignment may start at any key position
    for i in range(m):
        candidates = np.empty_like(best)
        candidates[:, 0] = best[:, 0] - gap
        candidates[:, 1:] = np.maximum(best[:, :-1] + score[:, i, :], best[:, 1:] - gap)
        # skipping key positions within the row: cur[t] = max over t' <= t of cand[t'] - gap (t - t')
        best = np.maximum.accumulate(candidates + ramp, axis=1) - ramp
    return best.max(axis=1)


def null_keys(seed: int, run_start: int, runs: int, n: int) -> np.ndarray:
    """The null keys the Monte Carlo test uses for runs [run_start, run_start + runs) of a text."""
    return stream_words(seed, run_start * n, runs * n).reshape(runs, n)


# ---------------------------------------------------------------- Numba kernels


@numba.njit(cache=True)
def _align(uid, unique, words, gap, table, score, best, current) -> float:
    """The statistic of one text (uid into unique) under one key (`words`); score/best/current are scratch.

    Rows are kept in ramped form, row[t] = H[t] + gap * t, so the in-row recurrence (skip a key
    position) becomes a running maximum, which keeps the serial dependency to one `max` per cell.
    """
    n = words.shape[0]
    m = uid.shape[0]
    for u in range(unique.shape[0]):
        token = unique[u]
        for p in range(n):
            score[u, p] = table[keyed_hash_scalar(words[p], token) >> _SHIFT]
    columns = n + m
    for t in range(columns + 1):
        best[t] = gap * t  # row 0: H = 0, the alignment may start at any key position
    for i in range(m):
        row = score[uid[i]]
        running = best[0] - gap
        current[0] = running
        p = 0
        for t in range(1, columns + 1):
            value = best[t - 1] + gap + row[p]
            skip_text = best[t] - gap
            if skip_text > value:
                value = skip_text
            if value > running:
                running = value
            current[t] = running
            p += 1
            if p == n:
                p = 0
        best, current = current, best
    result = best[0]
    for t in range(1, columns + 1):
        if best[t] - gap * t > result:
            result = best[t] - gap * t
    return result


@numba.njit(cache=True)
def _worker(worker, workers, uid, token_offsets, unique, unique_offsets, key_words, seeds, run_start, n, gap, table, out):
    """Jobs worker, worker + workers, ... of the (text, run) grid; run r of text b uses `key_words` if given,
    else null key r of seed b. Scratch is allocated once per worker, not per job (a ~200 KB score
    table per job would cost more than the job on short texts)."""
    texts, runs = out.shape
    max_unique, max_tokens = 1, 1
    for b in range(texts):
        max_unique = max(max_unique, unique_offsets[b + 1] - unique_offsets[b])
        max_tokens = max(max_tokens, token_offsets[b + 1] - token_offsets[b])
    score = np.empty((max_unique, n), dtype=np.float32)
    best = np.empty(n + max_tokens + 1)
    current = np.empty(n + max_tokens + 1)
    words = np.empty(n, dtype=np.uint64)
    for job in range(worker, texts * runs, workers):
        b = job // runs
        if key_words.shape[0] == n:
            words[:] = key_words
        else:  # null_keys(seeds[b], run, 1, n), computed in place
            base = np.uint64(run_start + job % runs) * np.uint64(n)
            for p in range(n):
                words[p] = mix64_scalar(seeds[b] + (base + np.uint64(p + 1)) * GOLDEN)
        out[b, job % runs] = _align(
            uid[token_offsets[b] : token_offsets[b + 1]],
            unique[unique_offsets[b] : unique_offsets[b + 1]],
            words, gap, table, score, best, current,
        )


@numba.njit(parallel=True, cache=True)
def _parallel(workers, uid, token_offsets, unique, unique_offsets, key_words, seeds, run_start, n, gap, table, out):
    for worker in numba.prange(workers):
        _worker(worker, workers, uid, token_offsets, unique, unique_offsets, key_words, seeds, run_start, n, gap,
                table, out)


# Below this many DP cells a call runs on one thread: waking a thread pool costs about a millisecond on
# an idle machine and tens of milliseconds on a busy one.
PARALLEL_CELLS = 2_000_000


def alignment_scores(batch: TokenBatch, words: np.ndarray, gap: float) -> np.ndarray:
    """The statistic of every text of the batch under one key (uint64 [n]) -> float64 [texts]."""
    words = np.asarray(words, np.uint64)
    no_seeds = np.zeros(len(batch), np.uint64)
    return _run(batch, words, no_seeds, 0, 1, len(words), gap)[:, 0]


def null_alignment_scores(
    batch: TokenBatch, seeds: np.ndarray, run_start: int, runs: int, n: int, gap: float
) -> np.ndarray:
    """The statistic of every text under its null keys run_start..run_start+runs-1 -> float64 [texts, runs]."""
    return _run(batch, np.zeros(0, np.uint64), np.asarray(seeds, np.uint64), run_start, runs, n, gap)


def _run(batch: TokenBatch, words, seeds, run_start: int, runs: int, n: int, gap: float) -> np.ndarray:
    out = np.zeros((len(batch), runs))
    if len(batch) == 0 or runs == 0:
        return out
    lengths = np.diff(batch.token_offsets)
    cells = runs * int(np.sum(lengths * (n + lengths) + np.diff(batch.unique_offsets) * n))
    args = (batch.uid, batch.token_offsets, batch.unique, batch.unique_offsets, words, seeds,
            int(run_start), int(n), float(gap), SCORE_TABLE, out)
    if cells < PARALLEL_CELLS or numba.get_num_threads() == 1:
        _worker(0, 1, *args)
    else:
        _parallel(min(len(batch) * runs, 4 * numba.get_num_threads()), *args)
    return out
