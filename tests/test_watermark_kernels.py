"""The exp alignment statistic: Numba kernels against the NumPy reference and a brute-force definition."""

import itertools

import numpy as np
import pytest

from tokeff.kernels.exp_alignment import (
    TokenBatch,
    alignment_scores,
    alignment_scores_numpy,
    match_scores,
    null_alignment_scores,
    null_keys,
)
from tokeff.kernels.exp_sampling import exp_choice, exp_choice_numpy
from tokeff.kernels.keyed_uniform import keyed_hash_scalar, keyed_hashes, keyed_uniforms, stream_words


def test_keyed_uniforms_numpy_and_numba_agree_and_look_uniform():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**64, size=50, dtype=np.uint64)
    tokens = rng.integers(0, 300_000, size=50).astype(np.uint64)
    assert [int(keyed_hash_scalar(w, t)) for w, t in zip(words, tokens)] == keyed_hashes(words, tokens).tolist()
    u = keyed_uniforms(words[:4, None], np.arange(20_000)[None, :])
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    # different key positions give unrelated vectors
    assert abs(np.corrcoef(u[0], u[1])[0, 1]) < 0.03


def _global_alignment(tokens, key_scores, gap):
    """Classical global alignment of the whole text to a key stretch (score[i][j]: token i at stretch position j)."""
    m, length = len(tokens), len(key_scores)
    table = [[0.0] * (length + 1) for _ in range(m + 1)]
    for i in range(m + 1):
        for j in range(length + 1):
            if i == 0 or j == 0:
                table[i][j] = -gap * (i + j)
                continue
            table[i][j] = max(
                table[i - 1][j - 1] + key_scores[j - 1][i - 1], table[i - 1][j] - gap, table[i][j - 1] - gap
            )
    return table[m][length]


def _brute_force(tokens, words, gap):
    """max over every stretch [a, b) of the cyclic key (read over n + m positions) of the global alignment."""
    n, m = len(words), len(tokens)
    positions = [t % n for t in range(n + m)]
    best = -np.inf
    for a, b in itertools.combinations_with_replacement(range(n + m + 1), 2):
        stretch = [match_scores(words[p], np.array(tokens)).astype(np.float64) for p in positions[a:b]]
        best = max(best, _global_alignment(tokens, stretch, gap))
    return best


@pytest.mark.parametrize("gap", [0.0, 0.4, 1.5])
def test_statistic_matches_its_definition(gap):
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**64, size=6, dtype=np.uint64)
    for m in (1, 3, 5):
        tokens = rng.integers(0, 4, size=m)  # repeats on purpose
        expected = _brute_force(tokens, words, gap)
        assert alignment_scores_numpy(tokens, words[None], gap)[0] == pytest.approx(expected, rel=1e-9)
        assert alignment_scores(TokenBatch.from_texts([tokens]), words, gap)[0] == pytest.approx(expected, rel=1e-9)


def test_numba_kernels_match_numpy_reference_on_a_ragged_batch():
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**64, size=64, dtype=np.uint64)
    texts = [rng.integers(0, 50, size=m) for m in (1, 8, 70, 150)]  # shorter and longer than the key
    batch = TokenBatch.from_texts(texts)
    observed = alignment_scores(batch, words, 0.7)
    seeds = rng.integers(0, 2**64, size=len(texts), dtype=np.uint64)
    null = null_alignment_scores(batch, seeds, 5, 3, 64, 0.7)
    for index, tokens in enumerate(texts):
        assert observed[index] == pytest.approx(alignment_scores_numpy(tokens, words[None], 0.7)[0], rel=1e-9)
        reference = alignment_scores_numpy(tokens, null_keys(int(seeds[index]), 5, 3, 64), 0.7)
        np.testing.assert_allclose(null[index], reference, rtol=1e-9)
    assert null_keys(7, 2, 1, 64)[0].tolist() == stream_words(7, 128, 64).tolist()


def test_selecting_rows_keeps_the_texts():
    texts = [np.array([5, 5, 9]), np.array([1]), np.array([3, 2, 3, 2])]
    batch = TokenBatch.from_texts(texts).select(np.array([2, 0]))
    assert [t.tolist() for t in batch.texts] == [[3, 2, 3, 2], [5, 5, 9]]
    words = np.arange(1, 9, dtype=np.uint64)
    np.testing.assert_allclose(
        alignment_scores(batch, words, 1.0),
        [alignment_scores_numpy(texts[2], words[None], 1.0)[0], alignment_scores_numpy(texts[0], words[None], 1.0)[0]],
    )


def test_exp_choice_kernel_matches_the_numpy_reference():
    """Same token on peaked, flat and truncated (zero-probability) rows; the log-skipping bound changes nothing."""
    rng = np.random.default_rng(3)
    probs = np.concatenate([rng.dirichlet(np.full(5000, alpha), size=20) for alpha in (0.01, 1.0, 100.0)])
    probs[::4, :4000] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    words = rng.integers(0, 2**64, size=len(probs), dtype=np.uint64)
    assert exp_choice(probs, words).tolist() == exp_choice_numpy(probs, words).tolist()
    assert len(set(exp_choice(probs, words).tolist())) > 40  # the rows really differ
