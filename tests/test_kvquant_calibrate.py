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
from tokeff.kvquant.fit import fit_codebook, key_ranges

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
                    "--samples", 4, "--context", 64, "--group", "head", "--kv-residual", 8, "--json", check=0)
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
    args = ("decode", "-m", tiny_llama_dir, "--prompt", "To be, or not", "--max-new-tokens", 120, "--ignore-eos", "--json")
    small = json.loads(run_cli(*args, "--kv-quant", artifact[0], "--kv-residual", 4, check=0).stdout)
    prompt = Prompt.from_text(lm, "To be, or not")
    full = get_method("greedy")(lm, DecodeConfig(max_new_tokens=120, stop_at_eos=False)).generate(prompt)
    # 120 tokens: most fall in whole 32-token groups (the group schemes flush a group at a time)
    assert small["tokens"] == 120 and 0 < small["peak_kv_bytes"] < full.stats.peak_kv_bytes / 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", 5], "--bits must be one of 2, 3, 4"),
        (["--samples", 500], "calibration text has"),
        (["--group", "channel"], "--group must be 'layer' or 'head'"),
        (["--scheme-option", "fixed.outliers=0.7"], "--outliers must be a number in [0, 0.5)"),
        (["--schemes", "kivi,nope"], "unknown KV quantization scheme 'nope'"),
        (["--schemes", "kivi"], "no candidate scheme for values"),
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


def _attention_error(acts, layer, rope, tokens, keys=None, values=None):
    """Brute force: SDPA over sink + body per sample, one of keys/values replaced, relative squared change."""
    import torch.nn.functional as F

    change = norm = 0.0
    for i, query in enumerate(acts.queries[layer]):
        k_pre = torch.cat([acts.sink_keys[layer][i], acts.keys[layer][i][:, :tokens]], 1)[None]
        exact_k = rope.rotate(k_pre, layer, 0)
        exact_v = torch.cat([acts.sink_values[layer][i], acts.values[layer][i][:, :tokens]], 1)[None]
        groups = query.shape[0] // exact_k.shape[1]
        mask = acts.masks[layer][i][:tokens, : tokens + 1]

        def attend(k, v):
            return F.scaled_dot_product_attention(query[None, :, :tokens], k.repeat_interleave(groups, 1),
                                                  v.repeat_interleave(groups, 1), attn_mask=mask,
                                                  scale=acts.scaling[layer])

        reference = attend(exact_k, exact_v)
        k, v = exact_k.clone(), exact_v.clone()
        if keys is not None:
            k[:, :, 1:] = keys(k_pre[:, :, 1:], exact_k[:, :, 1:])
        if values is not None:
            v[:, :, 1:] = values(exact_v[:, :, 1:])
        change += float((attend(k, v) - reference).square().sum())
        norm += float(reference.square().sum())
    return change / norm


def test_each_layer_gets_the_least_error_scheme_within_uniforms_bytes(tiny_model_dir):
    """The choice equals a brute force over every candidate: SDPA attention error, bytes of the packed codes."""
    from tokeff.kvquant.schemes import SCHEMES, FitContext
    from tokeff.kvquant.spec import uniform_quantizers

    lm = load_model(str(tiny_model_dir), device="cpu")
    ids = lm.encode(TEXT)
    acts = collect(lm, [ids[i * 96 : (i + 1) * 96] for i in range(3)], sensitivity=True)
    rope, bits = lm.rotary, 3
    # value outliers cost more bytes than uniform's per-token ranges: never a choice, however accurate
    settings = {"per-token-kmeans": {"outliers": 0.1}}
    calibration, record = fit_calibration(acts, rope, bits, settings=settings)
    tokens = 95 // 32 * 32
    head_dim = acts.keys[0][0].shape[-1]
    uniform = uniform_quantizers(1, bits, head_dim)[0]
    budget = {"keys": uniform.keys.quantize(acts.keys[0][0][None, :, :tokens]).nbytes / tokens,
              "values": uniform.values.quantize(acts.values[0][0][None, :, :tokens]).nbytes / tokens}
    seen = set()
    for layer in range(len(acts.keys)):
        for tensor in ("keys", "values"):
            errors = {}
            for name in SCHEMES.names():
                scheme = SCHEMES.get(name)
                if scheme.tensor != tensor:
                    continue
                options = scheme.settings(settings.get(name))
                fitted = scheme.fit(FitContext(acts, layer, bits, False, layer), options)
                q = scheme.quantizer(bits, fitted, options, head_dim)
                x = (acts.keys if tensor == "keys" else acts.values)[layer][0][None, :, :tokens]
                if q.quantize(x).nbytes / tokens > budget[tensor]:
                    continue
                if tensor == "values":
                    errors[name] = _attention_error(acts, layer, rope, tokens, values=q.roundtrip)
                elif scheme.pre_rope:
                    errors[name] = _attention_error(acts, layer, rope, tokens,
                                                    keys=lambda pre, post: rope.rotate(q.roundtrip(pre), layer, 1))
                else:
                    errors[name] = _attention_error(acts, layer, rope, tokens, keys=lambda pre, post: q.roundtrip(post))
            row = record[f"{tensor[:-1]}_selection"][layer]
            chosen = getattr(calibration, f"{tensor[:-1]}_schemes")[layer]
            assert row["chosen"] == chosen == min(errors, key=errors.get)
            for name, error in errors.items():
                assert row[name]["error"] == pytest.approx(error, rel=1e-3)
            assert row[chosen]["error"] <= row[{"keys": "kivi", "values": "per-token"}[tensor]]["error"]
            if tensor == "values":
                assert "per-token-kmeans" not in errors and row["per-token-kmeans"]["bytes_per_token"] > budget[tensor]
            seen.add(chosen)
    assert seen - {"kivi", "per-token"}  # the calibrated schemes do get chosen somewhere


def test_a_calibration_that_chose_uniform_everywhere_is_uniform(tiny_model_dir, tmp_path):
    """Its cache gives bit-identical logits to `--kv-quant uniform:B`."""
    from tokeff.kvquant.artifact import write_calibration
    from tokeff.kvquant.spec import kv_cache_factory

    lm = load_model(str(tiny_model_dir), device="cpu")
    result = calibrate(lm, TEXT, bits=3, samples=3, context=64, sensitivity=False, schemes=["kivi", "per-token"])
    assert set(result.calibration.key_schemes) == {"kivi"} and set(result.calibration.value_schemes) == {"per-token"}
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT)
    write_calibration(tmp_path / "kv", lm, result.calibration, text, {}, result.metrics)
    ids = lm.encode(TEXT[-3000:])[:150]
    logits = []
    for spec in (str(tmp_path / "kv"), "uniform:3"):
        cache = kv_cache_factory(spec, lm, residual=8, sinks=1)()
        with torch.no_grad():
            logits.append(torch.cat([lm.model(torch.tensor([ids[i : i + 5]]), past_key_values=cache,
                                              use_cache=True).logits for i in range(0, len(ids), 5)], 1))
        assert max(layer.packed_tokens for layer in cache.layers) >= 96  # most of the text was quantized
    assert torch.equal(*logits)


def test_the_manifest_records_the_choice_and_tampering_with_it_is_caught(artifact, tiny_llama_dir, text_file, tmp_path):
    import shutil

    out, payload = artifact
    manifest = json.loads((out / "tokeff.json").read_text())
    params, metrics = manifest["parameters"], manifest["metrics"]
    layers = load_model(str(tiny_llama_dir), device="cpu").model.config.num_hidden_layers
    assert params["key_schemes"] == [row["chosen"] for row in metrics["key_selection"]] and len(params["key_schemes"]) == layers
    assert params["value_schemes"] == [row["chosen"] for row in metrics["value_selection"]]
    assert set(params["scheme_settings"]) == set(params["key_schemes"]) | set(params["value_schemes"])
    assert payload["key_schemes_chosen"] == {name: params["key_schemes"].count(name) for name in set(params["key_schemes"])}
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    edited = json.loads((copy / "tokeff.json").read_text())
    flipped = "kivi" if params["key_schemes"][0] != "kivi" else "fixed"
    edited["parameters"]["key_schemes"][0] = flipped
    (copy / "tokeff.json").write_text(json.dumps(edited))
    assert verify_artifact(copy)
    result = run_cli("eval", "bpb", "-m", tiny_llama_dir, text_file, "--kv-quant", copy, "--max-bytes", 500)
    assert result.returncode == 1 and "failed verification" in result.stderr


def test_library_errors(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir), device="cpu")
    with pytest.raises(TokeffError, match="--context must be in"):
        calibrate(lm, TEXT, bits=4, context=8)
    with pytest.raises(TokeffError, match="--samples must be"):
        calibrate(lm, TEXT, bits=4, samples=0)


def test_the_residual_window_is_left_exact_when_errors_are_measured(tiny_llama_dir):
    """Against a per-query brute force: query i sees body tokens j > i - residual exact, older ones quantized."""
    import torch.nn.functional as F

    from tokeff.kvquant.select import LayerAttention
    from tokeff.kvquant.spec import uniform_quantizers

    lm = load_model(str(tiny_llama_dir), device="cpu")
    ids = lm.encode(TEXT)
    acts = collect(lm, [ids[:65], ids[65:130]], sensitivity=False)
    rope, layer, residual, n = lm.rotary, 1, 8, 64
    quantizer = uniform_quantizers(1, 2, acts.keys[0][0].shape[-1])[0]
    attention = LayerAttention(acts, layer, rope, n, residual)
    change = norm = 0.0
    for i, query in enumerate(acts.queries[layer]):
        exact_k = rope.rotate(torch.cat([acts.sink_keys[layer][i], acts.keys[layer][i][:, :n]], 1)[None], layer, 0)
        exact_v = torch.cat([acts.sink_values[layer][i], acts.values[layer][i][:, :n]], 1)[None]
        quant_k, quant_v = exact_k.clone(), exact_v.clone()
        quant_k[:, :, 1:] = quantizer.keys.roundtrip(exact_k[:, :, 1:])
        quant_v[:, :, 1:] = quantizer.values.roundtrip(exact_v[:, :, 1:])
        groups = query.shape[0] // exact_k.shape[1]
        for t in range(n):
            old = torch.arange(n + 1) - 1 <= t - residual
            old[0] = False  # the sink
            k = torch.where(old[:, None], quant_k, exact_k)[:, :, : t + 2].repeat_interleave(groups, 1)
            v = torch.where(old[:, None], quant_v, exact_v)[:, :, : t + 2].repeat_interleave(groups, 1)
            q = query[None, :, t : t + 1]
            ref = F.scaled_dot_product_attention(q, exact_k[:, :, : t + 2].repeat_interleave(groups, 1),
                                                 exact_v[:, :, : t + 2].repeat_interleave(groups, 1),
                                                 scale=acts.scaling[layer])
            out = F.scaled_dot_product_attention(q, k, v, scale=acts.scaling[layer])
            change += float((out - ref).square().sum())
            norm += float(ref.square().sum())
    both = attention._error([attention._attend(i, quantizer.keys.roundtrip(k), quantizer.values.roundtrip(v))
                             for i, (k, v) in enumerate(zip(attention.post_keys, attention.values))])
    assert both == pytest.approx(change / norm, rel=1e-4) and both > 0
    assert LayerAttention(acts, layer, rope, n, residual=n + 1).key_error(quantizer.keys, False) == 0
