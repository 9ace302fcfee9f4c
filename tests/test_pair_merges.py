"""The Numba batch-BPE kernel against the plain reference."""

import numpy as np
import pytest

from tokeff.kernels.pair_merges import SEPARATOR, batch_bpe, batch_bpe_reference


def _random_batch(rng, vocab, n_sequences, length):
    parts = []
    for _ in range(n_sequences):
        parts.extend(rng.integers(0, vocab, size=rng.integers(1, length)).tolist())
        parts.append(SEPARATOR)
    return np.array(parts[:-1], dtype=np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_kernel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    vocab, merges = 6 + seed, 40
    ids = _random_batch(rng, vocab, 12, 60)
    can_left = rng.random(vocab + merges) > 0.2
    can_right = rng.random(vocab + merges) > 0.2
    got = batch_bpe(ids, can_left, can_right, vocab, merges)
    want = batch_bpe_reference(ids, can_left, can_right, vocab, merges)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert len(got[0]) > 5


def test_runs_of_one_token_merge_left_to_right():
    ids = np.array([0, 0, 0, 0, 0, SEPARATOR, 0, 0], dtype=np.int64)
    flags = np.ones(10, dtype=bool)
    merges, merged = batch_bpe(ids, flags, flags, 1, 1)
    assert merges.tolist() == [[0, 0]]
    assert merged.tolist() == [1, 1, 0, SEPARATOR, 1]


def test_no_pair_crosses_a_separator_or_a_forbidden_boundary():
    ids = np.array([0, 1, SEPARATOR, 0, 1, 2, 3, 2, 3], dtype=np.int64)
    can_left = np.array([True, True, False, True] + [True] * 4)
    can_right = np.ones(8, dtype=bool)
    merges, merged = batch_bpe(ids, can_left, can_right, 4, 4, min_count=1)
    # (2, 3) never merges (2 cannot be a left piece), nor does anything ending in 2: 5 = (3, 2), 6 = (4, 2).
    assert merges.tolist() == [[0, 1], [3, 2], [4, 2]]
    assert merged.tolist() == [4, SEPARATOR, 6, 5, 3]


def test_stops_below_min_count_and_validates_ids():
    ids = np.array([0, 1, 2, 3], dtype=np.int64)
    flags = np.ones(8, dtype=bool)
    assert len(batch_bpe(ids, flags, flags, 4, 4)[0]) == 0
    assert len(batch_bpe(ids, flags, flags, 4, 4, min_count=1)[0]) == 3
    with pytest.raises(ValueError):
        batch_bpe(np.array([7]), flags, flags, 4, 4)
