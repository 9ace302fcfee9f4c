"""The synthid scheme: g-values, context masks and the generation rule equal transformers' own; detection works."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import kstest
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor

from tokeff.core.models import load_model
from tokeff.decoding import get_method
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.decoding.watermark.detection import detect_tokens
from tokeff.decoding.watermark.generation import chooser_factory, generate_texts
from tokeff.decoding.watermark.keys import make_key
from tokeff.decoding.watermark.samplers.synthid import tournament
from tokeff.decoding.watermark.schemes import synthid

from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), device="cpu")


def _transformers(key):
    return SynthIDTextWatermarkLogitsProcessor(
        ngram_len=key["ngram_len"], keys=key.words.view(np.int64).tolist(),
        sampling_table_size=key["sampling_table_size"], sampling_table_seed=key["sampling_table_seed"],
        context_history_size=key["context_history_size"], device=torch.device("cpu"),
        skip_first_ngram_calls=key["skip_first_ngram_calls"],
    )


@pytest.mark.parametrize("ngram_len, table_size, seed", [(5, 2**16, 0), (3, 1000, 7), (2, 2**20, 123)])
def test_g_values_and_context_mask_equal_transformers(lm, ngram_len, table_size, seed):
    key = make_key("synthid", lm.tokenizer, lm.spec, seed=seed, ngram_len=ngram_len, sampling_table_size=table_size,
                   sampling_table_seed=seed, depth=12)
    processor = _transformers(key)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 3, size=(3, 120))  # three distinct tokens: many repeated contexts
    theirs = processor.compute_g_values(torch.from_numpy(tokens)).numpy()
    ngrams = np.lib.stride_tricks.sliding_window_view(tokens, ngram_len, axis=1)
    ours = synthid.g_values_of_hashes(synthid.accumulate(np.ones(ngrams.shape[:2], dtype=np.uint64), ngrams),
                                      key.words, key.rule.table)
    assert ours.shape == theirs.shape and (ours == theirs).all()
    assert 0.4 < ours.mean() < 0.6
    fresh = processor.compute_context_repetition_mask(torch.from_numpy(tokens)).numpy().astype(bool)
    for row in range(len(tokens)):
        assert (synthid.first_context_ngrams(tokens[row], ngram_len) == ngrams[row][fresh[row]]).all()
        assert fresh[row].sum() < len(fresh[row])  # the test covers repeated contexts


def test_generation_rule_equals_transformers_processor(lm):
    key = make_key("synthid", lm.tokenizer, lm.spec, seed=3, ngram_len=3, depth=8)
    theirs = _transformers(key)
    ours = key.rule.logits_processor(DecodeConfig(temperature=1.0), None, prompt_length=4)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 50, size=(2, 4)))
    for _ in range(10):  # includes a repeated context: the last token repeats, so contexts recur
        scores = torch.from_numpy(rng.normal(size=(2, len(lm.tokenizer)))).float()
        expected = torch.softmax(theirs(ids, scores.clone()), dim=-1)
        got = torch.softmax(ours(ids, scores.clone()), dim=-1)
        assert torch.allclose(got, expected, atol=1e-5)
        ids = torch.cat([ids, torch.full((2, 1), 7)], dim=1)


def test_synthid_round_trip_and_valid_null(lm):
    key = make_key("synthid", lm.tokenizer, lm.spec, seed=5, runs=199)
    config = DecodeConfig(max_new_tokens=48, temperature=1.0, seed=2, stop_at_eos=False)
    prompts = ["To be, or not", "All the world", "Now is the winter"]
    marked = generate_texts(lm, prompts, key, config, batch_size=3)
    plain = generate_texts(lm, prompts, None, config, batch_size=3)
    assert all(r.p_value <= 0.01 for r in detect_tokens(key, [item.token_ids for item in marked]))
    assert not any(r.watermarked for r in detect_tokens(key, [item.token_ids for item in plain]))
    # `tokeff decode --watermark`: a decode method with the scheme's chooser
    chosen = DecodeConfig(**{**config.__dict__, "chooser_factory": chooser_factory(key)})
    single = get_method("sample")(lm, chosen).generate(Prompt.from_text(lm, prompts[0]))
    assert detect_tokens(key, [single.token_ids])[0].p_value <= 0.01
    weighted = key.for_detection({"statistic": "weighted_mean"})
    scores = [(a.statistic, b.statistic) for a, b in zip(detect_tokens(key, [marked[0].token_ids]),
                                                          detect_tokens(weighted, [marked[0].token_ids]))]
    assert scores[0][0] != scores[0][1] and detect_tokens(weighted, [marked[0].token_ids])[0].p_value <= 0.01
    rng = np.random.default_rng(1)
    texts = [rng.integers(0, 300, size=40) for _ in range(200)]
    p_values = np.array([r.p_value for r in detect_tokens(key, texts)])
    assert kstest(p_values, "uniform").pvalue > 1e-3 and (p_values <= 0.05).mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)


def test_text_watermarked_by_transformers_is_detected_with_a_key_from_its_config(lm, tmp_path):
    import json

    from transformers import GenerationConfig, SynthIDTextWatermarkingConfig

    from tokeff.decoding.watermark.keys import load_key

    config = SynthIDTextWatermarkingConfig(keys=[654, 400, 836, 123, 340, 443, 597, 160, 57, 29], ngram_len=4)
    path = tmp_path / "synthid.json"
    path.write_text(json.dumps(config.to_dict()))
    run_cli("watermark", "keygen", "-m", lm.spec, "-o", tmp_path / "k", "--scheme", "synthid",
            "--from-transformers", path, check=0)
    key = load_key(tmp_path / "k")
    assert key.words.view(np.int64).tolist() == config.keys and key["ngram_len"] == 4 and key["depth"] == 10
    torch.manual_seed(0)
    prompt = torch.tensor([lm.tokenizer("To be, or not")["input_ids"]] * 3)
    settings = dict(do_sample=True, max_new_tokens=48, min_new_tokens=48, pad_token_id=0)
    marked = lm.model.generate(prompt, generation_config=GenerationConfig(watermarking_config=config, **settings))
    plain = lm.model.generate(prompt, generation_config=GenerationConfig(**settings))
    width = prompt.shape[1]
    assert all(r.p_value <= 0.01 for r in detect_tokens(key, marked[:, width:].tolist()))
    assert not any(r.watermarked for r in detect_tokens(key, plain[:, width:].tolist()))


def test_a_key_written_before_a_detection_option_existed_still_verifies_and_detects(lm, tmp_path):
    """Old synthid keys have no `statistic`: it only sets the test, so it takes its default."""
    from dataclasses import replace

    from tokeff.decoding.watermark.keys import load_key, save_key

    key = make_key("synthid", lm.tokenizer, lm.spec, seed=4, runs=99)
    old = replace(key, params={name: value for name, value in key.params.items() if name not in ("statistic", "runs")})
    save_key(old, tmp_path / "old")
    assert "statistic" not in json.loads((tmp_path / "old" / "tokeff.json").read_text())["parameters"]
    run_cli("verify", tmp_path / "old", check=0)
    loaded = load_key(tmp_path / "old")
    assert loaded.params == {**key.params, "runs": 999}
    tokens = np.random.default_rng(0).integers(0, 300, size=60)
    assert detect_tokens(loaded, [tokens])[0].p_value == detect_tokens(replace(key, params=loaded.params), [tokens])[0].p_value
    # a missing key parameter (not a detection option) is still an error
    broken = replace(key, params={name: value for name, value in key.params.items() if name != "ngram_len"})
    save_key(broken, tmp_path / "broken")
    assert "key parameter 'ngram_len' is missing" in run_cli("verify", tmp_path / "broken", check=1).stderr


def test_bayesian_detector_trains_saves_verifies_and_separates(lm, tmp_path):
    """Trained on our own texts, its posterior separates held-out watermarked from plain text; tampering is caught."""
    from tokeff.decoding.watermark import bayesian
    from tokeff.decoding.watermark.keys import save_key

    key = make_key("synthid", lm.tokenizer, lm.spec, seed=6, depth=10, runs=99)
    save_key(key, tmp_path / "k")
    config = DecodeConfig(max_new_tokens=40, temperature=1.0, seed=4, stop_at_eos=False)
    prompts = [f"Scene {index}: to be" for index in range(16)]
    marked = generate_texts(lm, prompts, key, config, batch_size=16)
    plain = generate_texts(lm, prompts, None, config, batch_size=16)
    for name, items in (("marked", marked), ("plain", plain)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
    # the CLI trains on texts, re-tokenized; this random model's samples are not canonical tokenizations, so
    # re-tokenizing scrambles their n-grams: the plumbing is checked here, the separation on token ids below
    result = run_cli("watermark", "train-detector", "--key", tmp_path / "k", "--watermarked", tmp_path / "marked.jsonl",
                     "--unwatermarked", tmp_path / "plain.jsonl", "-o", tmp_path / "det", "--json", check=0)
    assert json.loads(result.stdout)["held_out_texts"] == 8
    run_cli("verify", tmp_path / "det", check=0)
    ids = [np.array(item.token_ids) for item in marked + plain]
    trained = bayesian.train_detector(key, ids[:12], ids[16:28])  # 4 of each kind never seen in training
    assert trained.metrics["held_out_accuracy"] == 1.0
    posteriors = trained.posteriors(key, ids[12:16] + ids[28:])
    assert min(posteriors[:4]) > 0.99 and max(posteriors[4:]) < 0.01
    bayesian.save_detector(trained, key, tmp_path / "det", force=True)
    detector = bayesian.load_detector(tmp_path / "det")
    assert np.allclose(detector.posteriors(key, ids[12:16] + ids[28:]), posteriors)
    result = run_cli("watermark", "detect", "--key", tmp_path / "k", "--detector", tmp_path / "det",
                     tmp_path / "marked.jsonl", "--json", check=0)
    assert all(0 <= row["details"]["posterior"] <= 1 for row in json.loads(result.stdout))
    # bound to its key: another key's texts are refused, not scored
    other = make_key("synthid", lm.tokenizer, lm.spec, seed=7, depth=10)
    with pytest.raises(Exception, match="trained for another key"):
        detector.posteriors(other, [np.array(ids[0])])
    # its weights are hash-checked
    data = bytearray((tmp_path / "det" / bayesian.WEIGHTS).read_bytes())
    data[-1] ^= 1
    (tmp_path / "det" / bayesian.WEIGHTS).write_bytes(bytes(data))
    assert "modified" in run_cli("verify", tmp_path / "det", check=1).stderr


def test_eval_trains_the_bayesian_detector_when_asked(lm, tmp_path):
    import tiny_models

    from tokeff.decoding.watermark.bayesian import load_detector
    from tokeff.decoding.watermark.keys import save_key

    save_key(make_key("synthid", lm.tokenizer, lm.spec, seed=9, depth=6, runs=99), tmp_path / "k")
    save_key(make_key("exp", lm.tokenizer, lm.spec, seed=9), tmp_path / "exp")
    prompts, human = tmp_path / "prompts.txt", tmp_path / "human.txt"
    prompts.write_text("\n".join(f"Scene {index}: to be, or not" for index in range(8)))
    human.write_text(tiny_models.corpus(20_000))
    args = ["watermark", "eval", "-m", lm.spec, "--prompts", prompts, "--human", human, "--texts", 4,
            "--null-texts", 4, "--human-texts", 4, "--max-new-tokens", 24, "--lengths", "24", "--edit-rates", "0",
            "--edit-length", 0, "--train-detector", tmp_path / "det"]
    run_cli(*args, "--key", tmp_path / "k", check=0)
    run_cli("verify", tmp_path / "det", check=0)
    assert load_detector(tmp_path / "det").metrics["unwatermarked_texts"] == 8
    result = run_cli(*args, "--key", tmp_path / "exp", "--force", check=1)  # refused before generating
    assert "a synthid key, not exp" in result.stderr


def test_tournament_never_returns_negative_probabilities():
    """Mass on g=1 tokens rounding above 1 made g=0 tokens negative (smollm2 generation then failed)."""
    probs = torch.tensor([[0.7, 0.3000001, 1e-9]], dtype=torch.float64)
    g = torch.tensor([[[1.0], [1.0], [0.0]]], dtype=torch.float64)
    assert (probs * (1 + g[..., 0] - (g[..., 0] * probs).sum())).min() < 0  # what the layer alone gives
    out = tournament(probs, g)
    assert (out >= 0).all() and out[0, 2] == 0 and torch.allclose(out[0, :2], torch.tensor([0.7, 0.3], dtype=out.dtype))


def test_exact_null_equals_brute_force_over_every_table_shift_and_key_word():
    """Each depth's sum over every shift of a small table, then every combination of the depths' shifts."""
    import itertools

    table = np.random.default_rng(0).integers(0, 2, size=16)
    hashes = np.array([3, 19, 5, 3, 40, 7], dtype=np.uint64)  # 3 twice, 19 = 3 + 16: one class under this table
    single = synthid.depth_null_pmf(hashes, table)
    by_shift = np.zeros(len(hashes) + 1)
    for shift in range(16):
        by_shift[table[(hashes * synthid.MULTIPLIER + np.uint64(shift)) % np.uint64(16)].sum()] += 1 / 16
    assert np.allclose(single, by_shift, atol=1e-12)
    brute = np.zeros(3 * len(hashes) + 1)
    for shifts in itertools.product(range(16), repeat=3):
        total = sum(table[(hashes * synthid.MULTIPLIER + np.uint64(shift)) % np.uint64(16)].sum() for shift in shifts)
        brute[total] += 1 / 16**3
    assert np.allclose(synthid.power_pmf(single, 3), brute, atol=1e-12)


@pytest.mark.parametrize("table_size", [16, 2**16])
def test_exact_p_value_matches_random_keys_even_where_hashes_share_classes(lm, table_size):
    """A 16-entry table puts many n-grams at one index; the exact tail must still be random keys' tail."""
    key = make_key("synthid", lm.tokenizer, lm.spec, seed=11, depth=6, ngram_len=3, sampling_table_size=table_size)
    tokens = np.random.default_rng(2).integers(0, 40, size=60)
    score = key.rule.score([tokens])[0]
    hashes = key.rule.fresh_ngram_hashes(tokens)
    null_keys = np.random.default_rng(3).integers(0, 2**64, size=(40_000, 1, 6), dtype=np.uint64)
    null = synthid.g_values_of_hashes(hashes[None, :], null_keys, key.rule.table).mean(axis=(1, 2))
    tail = (null >= score.statistic - 1e-12).mean()
    assert 0.005 < tail < 0.995 or table_size == 16  # a tail the comparison can resolve
    assert abs(score.p_value - tail) <= 4 * np.sqrt(tail * (1 - tail) / len(null)) + 1e-4
