"""Calibration (`tokeff kvquant calibrate`), its artifact, and the commands that use it."""

import json

import pytest
import torch

from tokeff.core.artifacts import verify_artifact
from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.decoding import get_method
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.kvquant.quantizer import TensorQuantizer, uniform_codebook
from tokeff.kvquant.calibrate import calibrate, fit_calibration
from tokeff.kvquant.collect import collect
from tokeff.kvquant.fit import fit_codebook, key_ranges, outliers_per_token

import tiny_models
from helpers import run_cli

TEXT = tiny_models.corpus(8000)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "llama-kv3"
    result = run_cli("kvquant", "calibrate", "-m", tiny_llama_dir, "--text", text_file, "-o", out, "--bits", 3,
                    "--samples", 4, "--context", 64, "--group", "head", "--json", check=0)
    return out, json.loads(result.stdout)


def test_calibrate_writes_a_verified_artifact(artifact, tiny_llama_dir):
    out, payload = artifact
    assert payload["bits"] == 3 and payload["calibration_tokens"] == 4 * 63
    assert 0 < payload["key_error"] < 1 and 0 < payload["value_error"] < 1 and payload["heldout_tokens"] == 63
    manifest = json.loads((out / "tokeff.json").read_text())
    assert manifest["kind"] == "kvquant" and manifest["parameters"]["group"] == "head"
    assert {entry["role"] for entry in manifest["inputs"]} == {"model", "text"}
    assert verify_artifact(out) == []
    inspected = run_cli("inspect", out, check=0).stdout
    assert "kvquant" in inspected and "key_error" in inspected


def test_tampered_artifact_is_refused(artifact, tiny_llama_dir, tmp_path, text_file):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(artifact[0], copy)
    tensors = load_file(str(copy / "kvquant.safetensors"))
    tensors["key_half"] = tensors["key_half"] * 2
    save_file(tensors, str(copy / "kvquant.safetensors"))
    assert any("modified" in problem for problem in verify_artifact(copy))
    result = run_cli("eval", "bpb", "-m", tiny_llama_dir, text_file, "--kv-quant", copy, "--max-bytes", 500)
    assert result.returncode == 1 and "failed verification" in result.stderr


def test_eval_and_decode_use_the_quantized_cache(artifact, tiny_llama_dir, text_file):
    from tokeff.core.evaluation import bits_per_byte

    lm = load_model(str(tiny_llama_dir), device="cpu")
    plain = bits_per_byte(lm, text_file.read_text()[:800], context=64)
    ours = json.loads(run_cli("eval", "bpb", "-m", tiny_llama_dir, text_file, "--max-bytes", 800, "--context", 64, "--json",
                             "--kv-quant", artifact[0], "--kv-residual", 0, "--chunk", 4, check=0).stdout)
    assert ours["kv_quant"] == str(artifact[0]) and ours["chunk"] == 4 and ours["kv_residual"] == 0
    assert ours["tokens"] == plain.tokens and ours["bpb"] != plain.bpb and abs(ours["bpb"] - plain.bpb) < 0.1 * plain.bpb
    args = ("decode", "-m", tiny_llama_dir, "--prompt", "To be, or not", "--max-new-tokens", 40, "--ignore-eos", "--json")
    small = json.loads(run_cli(*args, "--kv-quant", artifact[0], "--kv-residual", 4, check=0).stdout)
    prompt = Prompt.from_text(lm, "To be, or not")
    full = get_method("greedy")(lm, DecodeConfig(max_new_tokens=40, stop_at_eos=False)).generate(prompt)
    assert small["tokens"] == 40 and 0 < small["peak_kv_bytes"] < full.stats.peak_kv_bytes / 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", 5], "--bits must be one of 2, 3, 4"),
        (["--samples", 500], "calibration text has"),
        (["--group", "channel"], "--group must be 'layer' or 'head'"),
        (["--outliers", 0.7], "--outliers is a fraction"),
    ],
)
def test_bad_calibration_input(tiny_llama_dir, text_file, tmp_path, extra, message):
    result = run_cli("kvquant", "calibrate", "-m", tiny_llama_dir, "--text", text_file, "-o", tmp_path / "out",
                    "--context", 64, *extra)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_artifact_for_another_model_is_refused(artifact, tiny_gemma_dir, text_file):
    result = run_cli("eval", "bpb", "-m", tiny_gemma_dir, text_file, "--kv-quant", artifact[0], "--max-bytes", 500)
    assert result.returncode == 1
    assert "was calibrated for model" in result.stderr and str(tiny_gemma_dir) in result.stderr
    assert str(artifact[0]) in result.stderr


def test_existing_output_needs_force(artifact, tiny_llama_dir, text_file):
    result = run_cli("kvquant", "calibrate", "-m", tiny_llama_dir, "--text", text_file, "-o", artifact[0])
    assert result.returncode == 1 and "already exists" in result.stderr


def test_fitted_codebooks_beat_uniform_levels_and_follow_sensitivity(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    ids = lm.encode(TEXT)
    acts = collect(lm, [ids[i * 64 : (i + 1) * 64] for i in range(3)], sensitivity=True)
    keys, weights = acts.stacked("keys", 0), acts.stacked("key_weights", 0)
    center, half = key_ranges(keys, 0.02)
    outside = ((keys - center[:, None]).abs() > half[:, None] + 1e-6).float().mean()
    assert 0 < outside <= 0.03  # about the asked-for fraction lies beyond the ranges
    quantizer = TensorQuantizer(3, uniform_codebook(3), per_token=False, center=center, half=half, outliers=0)
    fitted = fit_codebook(quantizer, keys, None, per_head=False, seed=0)
    weighted = fit_codebook(quantizer, keys, weights, per_head=False, seed=0)
    assert fitted.shape == (1, 8) and (fitted.diff() > 0).all() and fitted.abs().max() <= 1
    assert not torch.allclose(fitted, weighted)
    error = {}
    for name, book in (("uniform", uniform_codebook(3)), ("fitted", fitted)):
        trial = TensorQuantizer(3, book, per_token=False, center=center, half=half)
        error[name] = (trial.roundtrip(keys[None]) - keys[None]).square().mean()
    assert error["fitted"] < error["uniform"]
    calibration = fit_calibration(acts, bits=2, outliers=0.05, per_head=True)
    assert calibration.key_codebook.shape == (lm.model.config.num_hidden_layers, keys.shape[0], 4)
    assert calibration.key_outliers == outliers_per_token(0.05, keys.shape[-1]) >= 1
    # ranges per group of 16 tokens: no key outliers, and the fitted levels beat even ones on keys normalized so
    grouped = fit_calibration(acts, bits=2, outliers=0.05, per_head=False, key_group=16)
    assert (grouped.key_group, grouped.key_outliers, grouped.value_outliers) == (16, 0, calibration.value_outliers)
    cut = acts.stacked("keys", 0, group=16)
    assert cut.shape[1] == 3 * 48  # each 63-token sample cut to whole groups
    ours = grouped.quantizers()[0].keys
    even = TensorQuantizer(2, uniform_codebook(2), per_token=False, group=16)
    assert (ours.roundtrip(cut[None]) - cut).square().mean() < (even.roundtrip(cut[None]) - cut).square().mean()
    with pytest.raises(TokeffError, match="--key-group"):
        fit_calibration(acts, bits=2, outliers=0.0, per_head=False, key_group=-1)


def test_library_errors(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir), device="cpu")
    with pytest.raises(TokeffError, match="--context must be in"):
        calibrate(lm, TEXT, bits=4, context=8)
    with pytest.raises(TokeffError, match="--samples must be"):
        calibrate(lm, TEXT, bits=4, samples=0)
