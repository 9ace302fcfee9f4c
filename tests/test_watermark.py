"""Watermark keys, generation and detection on tiny models: distortion-free sampling, valid p-values, power."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import binom, chisquare, kstest

from tokeff.core.artifacts import verify_artifact
from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.decoding import get_method
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.decoding.watermark import evaluation
from tokeff.decoding.watermark.detection import detect_texts, detect_tokens
from tokeff.decoding.watermark.generation import chooser_factory, generate_texts
from tokeff.decoding.watermark.schemes import kgw
from tokeff.decoding.watermark.samplers.exp import ExpChooser
from tokeff.decoding.watermark.keys import check_vocabulary, load_key, make_key, save_key
from tokeff.kernels.exp_sampling import exp_choice
from tokeff.kernels.keyed_uniform import keyed_uniforms


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), device="cpu")


def _key(lm, scheme, seed=1, **params):
    return make_key(scheme, lm.tokenizer, lm.spec, seed=seed, **params)


# ---------------------------------------------------------------- keys


def test_key_round_trip_records_every_parameter(lm, tmp_path):
    key = _key(lm, "exp", key_length=64, gap=0.5)
    save_key(key, tmp_path / "k")
    loaded = load_key(tmp_path / "k")
    assert loaded.scheme == "exp" and loaded.words.tolist() == key.words.tolist()
    assert loaded.params == {"key_length": 64, "gap": 0.5, "runs": 999, "stop_after": 20, "min_tokens": 8}
    assert loaded.vocab_sha256 == key.vocab_sha256 and loaded.model == lm.spec
    kgw_key = _key(lm, "kgw", bias=3.0)
    assert kgw_key.params == {"green_fraction": 0.25, "bias": 3.0, "context_width": 1, "hashing": "tokeff",
                              "vocab_rows": 0, "min_tokens": 8}
    assert len(kgw_key.words) == 1
    assert _key(lm, "exp", seed=None).words.tolist() != _key(lm, "exp", seed=None).words.tolist()


def test_bad_keys_are_refused(lm, tmp_path):
    with pytest.raises(TokeffError, match="--bias does not apply to the exp scheme"):
        _key(lm, "exp", bias=2.0)
    with pytest.raises(TokeffError, match="green_fraction' must be a number in"):
        _key(lm, "kgw", green_fraction=1.5)
    with pytest.raises(TokeffError, match="unknown watermark scheme"):
        _key(lm, "rot13")
    save_key(_key(lm, "kgw"), tmp_path / "k")
    data = bytearray((tmp_path / "k" / "key.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "k" / "key.safetensors").write_bytes(bytes(data))
    with pytest.raises(TokeffError, match="modified"):
        load_key(tmp_path / "k")
    # a manifest edited to claim another scheme is caught by the manifest's digest before the key checks
    save_key(_key(lm, "kgw"), tmp_path / "k2")
    manifest = json.loads((tmp_path / "k2" / "tokeff.json").read_text())
    manifest["parameters"]["scheme"] = "exp"
    (tmp_path / "k2" / "tokeff.json").write_text(json.dumps(manifest))
    assert verify_artifact(tmp_path / "k2")[0].startswith("tokeff.json was edited")
    with pytest.raises(TokeffError, match="failed verification"):
        load_key(tmp_path / "k2")


def test_another_vocabulary_is_an_error(lm, tiny_gemma_dir):
    other = load_model(str(tiny_gemma_dir), device="cpu")
    with pytest.raises(TokeffError, match="vocabulary hash differs"):
        check_vocabulary(_key(lm, "exp"), other.tokenizer, str(tiny_gemma_dir))


# ---------------------------------------------------------------- exp: distortion-free generation


def _joint_counts(lm, choose_pair, keys: int):
    """Counts of (first, second) token over `keys` draws, and the model's exact probabilities of each pair."""
    config = DecodeConfig(temperature=1.0, top_k=3)
    warp = TokenChooser(config)
    prompt = Prompt.from_text(lm, "To be, or not").ids
    with torch.no_grad():
        first = warp.distribution(lm.model(torch.tensor([prompt])).logits[0, -1]).numpy().astype(np.float64)
        candidates = np.flatnonzero(first > 0)
        second = {int(t): warp.distribution(lm.model(torch.tensor([prompt + [int(t)]])).logits[0, -1]).numpy().astype(np.float64)
                  for t in candidates}
    cells = [(a, b) for a in second for b in np.flatnonzero(second[a] > 0)]
    expected = np.array([first[a] * second[a][b] for a, b in cells])
    counts = dict.fromkeys(cells, 0)
    for index in range(keys):
        pair = choose_pair(index, prompt, first, second)
        counts[pair] += 1
    return np.array([counts[cell] for cell in cells]), expected / expected.sum() * keys


def test_exp_sampling_leaves_the_model_distribution_unchanged(lm):
    """Two-token continuations over many keys follow the model's (top-k warped) distribution exactly."""
    keys = np.random.default_rng(0).integers(0, 2**64, size=(3000, 2), dtype=np.uint64)

    def exp_pair(index, prompt, first, second):
        words = keys[index]
        a = int(exp_choice(first[None], words[[0]])[0])
        return a, int(exp_choice(second[a][None], words[[1]])[0])

    observed, expected = _joint_counts(lm, exp_pair, 3000)
    assert chisquare(observed, expected).pvalue > 1e-3

    # The test has power: one kgw key shifts the distribution towards its green lists.
    key = _key(lm, "kgw", seed=5, bias=3.0)

    def kgw_pair(index, prompt, first, second):
        rng = np.random.default_rng(index)
        picks = []
        for context in (prompt[-1], None):
            probs = first if context is not None else second[picks[0]]
            green = kgw.green_mask(key, np.array([[context if context is not None else picks[0]]]), len(probs))[0]
            biased = probs * np.exp(key["bias"] * green)
            picks.append(int(rng.choice(len(probs), p=biased / biased.sum())))
        return tuple(picks)

    observed, expected = _joint_counts(lm, kgw_pair, 1500)
    assert chisquare(observed, expected).pvalue < 1e-6


def test_chooser_and_batched_generation_pick_the_exp_token(lm):
    """`tokeff decode --watermark` and batched `generate` take exactly exp_choice of the warped probabilities."""
    key = _key(lm, "exp", key_length=32)
    config = DecodeConfig(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=3, stop_at_eos=False)
    batch = generate_texts(lm, ["To be, or not", "All the world", "Now is the winter"], key, config, batch_size=3)
    for item in batch:
        chosen = DecodeConfig(**{**config.__dict__, "chooser_factory": chooser_factory(key, offset=item.offset)})
        single = get_method("sample")(lm, chosen).generate(Prompt.from_text(lm, item.prompt))
        assert single.token_ids == item.token_ids
        ids = Prompt.from_text(lm, item.prompt).ids
        warp = TokenChooser(config)
        for step, token in enumerate(item.token_ids):
            with torch.no_grad():
                probs = warp.distribution(lm.model(torch.tensor([ids])).logits[0, -1]).numpy()
            position = (item.offset + step) % 32
            assert token == exp_choice(probs[None], key.words[[position]])[0]
            ids.append(token)


def test_exp_refuses_greedy_and_methods_without_history(lm):
    key = _key(lm, "exp")
    with pytest.raises(TokeffError, match="samples"):
        ExpChooser(DecodeConfig(temperature=0.0), key, 0)
    chooser = ExpChooser(DecodeConfig(temperature=1.0), key, 0)
    with pytest.raises(TokeffError, match="cannot carry a watermark"):
        chooser.sample(torch.ones(4) / 4)


# ---------------------------------------------------------------- detection


@pytest.fixture(scope="module")
def generated(lm):
    config = DecodeConfig(max_new_tokens=48, temperature=1.0, seed=7, stop_at_eos=False)
    prompts = ["To be, or not", "All the world", "Now is the winter", "Friends, Romans"]
    keys = {"exp": _key(lm, "exp", key_length=64), "kgw": _key(lm, "kgw")}
    marked = {scheme: generate_texts(lm, prompts, key, config, batch_size=4) for scheme, key in keys.items()}
    plain = generate_texts(lm, prompts, None, config, batch_size=4)
    return keys, marked, plain


def test_watermarked_text_is_detected_and_plain_text_is_not(lm, generated):
    keys, marked, plain = generated
    # The random model's token sequences often re-tokenize differently; exp's alignment absorbs that.
    found = detect_texts(keys["exp"], lm.tokenizer, [item.text for item in marked["exp"]])
    assert all(result.watermarked and result.p_value <= 0.01 for result in found)
    for scheme, key in keys.items():
        found = detect_tokens(key, [item.token_ids for item in marked[scheme]])
        assert all(result.watermarked and result.p_value <= 0.01 for result in found), scheme
        assert all(not result.watermarked for result in detect_tokens(key, [item.token_ids for item in plain]))
    exp_results = detect_tokens(keys["exp"], [item.token_ids for item in marked["exp"]])
    assert all(r.p_value == pytest.approx(1 / 1000) and r.p_floor == pytest.approx(1 / 1000) for r in exp_results)
    assert all(r.details["null_runs"] == 999 for r in exp_results)


def test_exp_detection_survives_edits(lm, generated):
    keys, marked, _ = generated
    rng = np.random.default_rng(0)
    ids = np.arange(len(lm.tokenizer))
    for kind in evaluation.EDIT_KINDS:
        edited = [evaluation.apply_edits(item.token_ids, 0.2, kind, rng, ids) for item in marked["exp"]]
        assert all(r.watermarked for r in detect_tokens(keys["exp"], edited)), kind


def test_exp_p_values_are_valid_on_text_that_never_saw_the_key(lm):
    """Random texts (half with heavily repeated tokens), each with its own key: P(p <= alpha) <= alpha at every
    alpha, and uniform p-values when the test never stops early. (One key for all texts would make their
    p-values dependent, since texts that share tokens share the key's scores.)"""
    rng = np.random.default_rng(3)
    texts = [rng.integers(0, 12 if index % 2 else 400, size=rng.integers(8, 40)) for index in range(300)]
    words = rng.integers(0, 2**64, size=(len(texts), 64), dtype=np.uint64)
    full_key = _key(lm, "exp", key_length=64, runs=199, stop_after=1000)
    sequential_key = _key(lm, "exp", key_length=64, runs=199)

    def p_values(key):
        results = [detect_tokens(replace(key, words=row), [text])[0] for row, text in zip(words, texts)]
        return np.array([r.p_value for r in results]), np.array([r.details["null_runs"] for r in results])

    full, _ = p_values(full_key)
    sequential, runs = p_values(sequential_key)
    assert kstest(full, "uniform").pvalue > 1e-3
    bound = lambda alpha: alpha + 3 * np.sqrt(alpha * (1 - alpha) / len(texts))  # noqa: E731
    for alpha in (0.05, 0.1, 0.25, 0.5):
        assert (full <= alpha).mean() <= bound(alpha) and (sequential <= alpha).mean() <= bound(alpha)
    assert runs.mean() < 100  # the sequential test stops early on unwatermarked text
    batched = detect_tokens(replace(sequential_key, words=words[0]), [texts[0], texts[2], texts[0]])
    assert batched[0].p_value == batched[2].p_value == sequential[0]  # same text and key, same p-value


def test_kgw_p_value_is_the_exact_binomial_tail_over_distinct_pairs(lm):
    key = _key(lm, "kgw", context_width=2)
    tokens = np.array([5, 6, 7, 5, 6, 7, 5, 6, 7, 9, 10, 11, 12])
    # brute force: green per distinct (two previous tokens, token) pair
    pairs = {(tuple(tokens[i - 2 : i]), tokens[i]) for i in range(2, len(tokens))}
    green = sum(bool(kgw.green_mask(key, np.array([ctx]), 20)[0, tok]) for ctx, tok in pairs)
    score = kgw.score_tokens(key, tokens)
    assert (score.details["scored_pairs"], score.details["green"]) == (len(pairs), green)
    assert score.p_value == pytest.approx(binom.sf(green - 1, len(pairs), 0.25))
    # green lists hold about the green fraction of the vocabulary
    mask = kgw.green_mask(key, np.array([[1, 2], [3, 4]]), 50_000)
    assert abs(mask.mean() - 0.25) < 0.01 and (mask[0] != mask[1]).any()


def test_short_and_empty_texts_get_a_message_not_a_p_value(lm):
    key = _key(lm, "exp", min_tokens=8)
    results = detect_tokens(key, [[], [1, 2, 3], list(range(10))])
    assert results[0].error == "empty text" and results[0].p_value is None
    assert results[1].error == "too short: 3 tokens, the key needs at least 8" and results[1].p_value is None
    assert results[2].error is None and results[2].p_value is not None


def test_evaluation_reports_power_and_false_positives(lm, generated):
    keys, marked, plain = generated
    result = evaluation.evaluate_detection(
        keys["exp"], lm.tokenizer, [item.token_ids for item in marked["exp"]],
        {"model": [item.token_ids for item in plain]}, lengths=[8, 40], edit_rates=[0.0, 0.3], edit_length=40,
    )
    rows = {(row["edit_rate"], row["length"]): row for row in result.power_vs_length}
    assert rows[(0.0, 40)]["rate"] == 1.0 and rows[(0.0, 40)]["texts"] == 4
    assert rows[(0.0, 8)]["texts"] == 16  # 48-token texts give up to 4 windows of 8 tokens each
    assert result.min_length(0.0) in (8, 40)
    assert {row["kind"] for row in result.power_vs_edits} == set(evaluation.EDIT_KINDS)
    assert result.false_positives["model"]["hits"] == 0 and result.false_positives["model"]["texts"] == 4
    low, high = result.false_positives["model"]["ci95"]
    assert low == 0 and 0.5 < high < 0.7  # Clopper-Pearson for 0 of 4


def test_edits_change_the_requested_number_of_tokens():
    rng = np.random.default_rng(0)
    tokens = list(range(100))
    assert len(evaluation.apply_edits(tokens, 0.2, "deletion", rng, np.array([999]))) == 80
    inserted = evaluation.apply_edits(tokens, 0.2, "insertion", rng, np.array([999]))
    assert len(inserted) == 120 and inserted.count(999) == 20
    substituted = evaluation.apply_edits(tokens, 0.2, "substitution", rng, np.array([999]))
    assert len(substituted) == 100 and 15 <= substituted.count(999) <= 20  # a position may be hit twice
    assert evaluation.apply_edits(tokens, 0.0, "mixed", rng, np.array([999])) == tokens


def test_keyed_uniforms_drive_exp_choice():
    """argmax u^(1/p): with p uniform it is the argmax of u; zero-probability tokens are never chosen."""
    words = np.array([123, 456], dtype=np.uint64)
    probs = np.full((2, 10), 0.1)
    expected = keyed_uniforms(words[:, None], np.arange(10)[None, :]).argmax(axis=1)
    assert exp_choice(probs, words).tolist() == expected.tolist()
    probs = np.zeros((2, 10))
    probs[:, 3] = 1.0
    assert exp_choice(probs, words).tolist() == [3, 3]
