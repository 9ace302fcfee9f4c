"""Batch-level BPE: repeatedly merge the most frequent adjacent token pair of a batch into a new token.

The batch is one flat int64 array of token ids, its sequences separated by -1 (no pair spans a
separator). A pair (a, b) may merge only if `can_left[a]` and `can_right[b]`; a new token made of
(a, b) inherits `can_right` from a and `can_left` from b, so word-boundary rules carry over.
Ties between equally frequent pairs go to the smallest (a, b); occurrences merge left to right,
without overlap, as BPE does.

`batch_bpe` is the Numba kernel (linked list over positions, pair counts updated incrementally);
`batch_bpe_reference` recounts every pair after each merge in plain Python, for the tests.
No library offers BPE merging over a batch of already-tokenized ids, hence the hand-written loop.
"""

from __future__ import annotations

from collections import Counter

import numba
import numpy as np
from numba import types
from numba.typed import Dict

SEPARATOR = -1


def batch_bpe(
    ids: np.ndarray, can_left: np.ndarray, can_right: np.ndarray, first_new: int, max_merges: int, min_count: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(merges [k, 2], merged flat ids with separators kept); `can_*` must hold first_new + max_merges flags."""
    ids, left, right = _checked(ids, can_left, can_right, first_new, max_merges)
    return _batch_bpe(ids, left, right, first_new, max_merges, max(min_count, 1))


def _checked(ids, can_left, can_right, first_new, max_merges):
    size = first_new + max_merges
    if len(can_left) < size or len(can_right) < size:
        raise ValueError(f"mergeability flags must cover {size} ids")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) and (ids.max() >= first_new or ids.min() < SEPARATOR):
        raise ValueError("token ids must lie in [0, first_new) or be the separator -1")
    # Copies: the kernel writes the flags of the tokens it creates.
    return ids.copy(), np.array(can_left[:size], dtype=np.bool_), np.array(can_right[:size], dtype=np.bool_)


@numba.njit(cache=True)
def _add(counts, key, delta):
    value = counts.get(key, 0) + delta
    if value == 0:
        del counts[key]
    else:
        counts[key] = value


@numba.njit(cache=True)
def _batch_bpe(ids, can_left, can_right, first_new, max_merges, min_count):
    n = len(ids)
    stride = np.int64(first_new + max_merges)
    nxt = np.arange(1, n + 1)
    prv = np.arange(-1, n - 1)
    counts = Dict.empty(key_type=types.int64, value_type=types.int64)
    for i in range(n - 1):
        a, b = ids[i], ids[i + 1]
        if a >= 0 and b >= 0 and can_left[a] and can_right[b]:
            _add(counts, a * stride + b, 1)
    merges = np.empty((max_merges, 2), dtype=np.int64)
    done = 0
    while done < max_merges:
        best, best_count = np.int64(-1), np.int64(0)
        for key, count in counts.items():
            if count > best_count or (count == best_count and key < best):
                best, best_count = key, count
        if best_count < min_count:
            break
        a, b = best // stride, best % stride
        new = first_new + done
        merges[done, 0], merges[done, 1] = a, b
        can_left[new], can_right[new] = can_left[b], can_right[a]
        i = 0
        while i < n:
            j = nxt[i]
            if j >= n or ids[i] != a or ids[j] != b:
                i = j
                continue
            left, after = prv[i], nxt[j]
            _add(counts, best, -1)
            if left >= 0 and ids[left] >= 0 and can_left[ids[left]]:
                if can_right[a]:
                    _add(counts, ids[left] * stride + a, -1)
                if can_right[new]:
                    _add(counts, ids[left] * stride + new, 1)
            if after < n and ids[after] >= 0 and can_right[ids[after]]:
                if can_left[b]:
                    _add(counts, b * stride + ids[after], -1)
                if can_left[new]:
                    _add(counts, new * stride + ids[after], 1)
            ids[i] = new
            nxt[i] = after
            if after < n:
                prv[after] = i
            i = after
        done += 1
    keep = np.zeros(n, dtype=np.bool_)
    i = 0
    while i < n:
        keep[i] = True
        i = nxt[i]
    return merges[:done], ids[keep]


def batch_bpe_reference(
    ids: np.ndarray, can_left: np.ndarray, can_right: np.ndarray, first_new: int, max_merges: int, min_count: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The same result as `batch_bpe`, recounting every pair after each merge (slow; for tests)."""
    ids, left, right = _checked(ids, can_left, can_right, first_new, max_merges)
    sequence = ids.tolist()
    merges: list[tuple[int, int]] = []
    for new in range(first_new, first_new + max_merges):
        counts = Counter(
            (a, b) for a, b in zip(sequence, sequence[1:]) if a >= 0 and b >= 0 and left[a] and right[b]
        )
        if not counts:
            break
        (a, b), count = min(counts.items(), key=lambda item: (-item[1], item[0]))
        if count < max(min_count, 1):
            break
        merges.append((a, b))
        left[new], right[new] = left[b], right[a]
        merged, i = [], 0
        while i < len(sequence):
            if i + 1 < len(sequence) and sequence[i] == a and sequence[i + 1] == b:
                merged.append(new)
                i += 2
            else:
                merged.append(sequence[i])
                i += 1
        sequence = merged
    return np.array(merges, dtype=np.int64).reshape(-1, 2), np.array(sequence, dtype=np.int64)
