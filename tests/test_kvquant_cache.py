"""The quantized KV cache on tiny Llama and Gemma 3 models: bookkeeping, RoPE, sliding windows, bytes."""

import json

import pytest
import torch
from transformers import DynamicCache

from helpers import run_cli
from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import bits_per_byte
from tokeff.core.models import load_model
from tokeff.core.rope import RotaryTables
from tokeff.core.scoring import DecodeOrder
from tokeff.decoding import get_method
from tokeff.decoding.types import DecodeConfig, Prompt, cache_nbytes
from tokeff.kvquant.calibrate import calibrate
from tokeff.kvquant.collect import collect
from tokeff.kvquant.quantizer import TensorQuantizer, nearest_level, uniform_codebook
from tokeff.kvquant.spec import kv_cache_factory

import tiny_models

TEXT = tiny_models.corpus(6000)


@pytest.fixture
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def calibrated(tiny_llama_dir, tiny_gemma_dir):
    """4-bit calibrations per tiny family (no sensitivity: fast), each restricted to one key scheme: fixed
    ranges (no outliers: with 16 channels one would cost more bytes than uniform:4), and ranges per group
    of 32 tokens before RoPE (smaller groups would too)."""
    results = {}
    for folder in (tiny_llama_dir, tiny_gemma_dir):
        model = load_model(str(folder), device="cpu")
        results[str(folder)] = calibrate(model, TEXT, bits=4, samples=4, context=64, sensitivity=False,
                                         schemes=["fixed", "per-token-kmeans"],
                                         settings={"fixed": {"outliers": 0.0}}).calibration
        results[f"{folder}:grouped"] = calibrate(
            model, TEXT, bits=4, samples=4, context=64, sensitivity=False, schemes=["pre-rope-kmeans", "per-token-kmeans"]).calibration
    return results


def _feed(lm, cache, ids, chunk):
    with torch.no_grad():
        for start in range(0, len(ids), chunk):
            lm.model(torch.tensor([ids[start : start + chunk]]), past_key_values=cache, use_cache=True)


def test_rope_tables_invert_the_models_rotation(lm):
    rope = RotaryTables(lm.model)
    x = torch.randn(1, 2, 40, lm.model.config.head_dim)
    for layer in range(lm.model.config.num_hidden_layers):
        torch.testing.assert_close(rope.unrotate(rope.rotate(x, layer, 7), layer, 7), x, rtol=1e-5, atol=1e-5)


def test_collected_keys_are_the_pre_rope_projections(lm):
    """What calibration records equals the key projection (after Gemma's k_norm), before RoPE."""
    seen = {}
    attn = lm.model.model.layers[1].self_attn
    module = getattr(attn, "k_norm", None) or attn.k_proj

    def grab(mod, inputs, output):
        seen["keys"] = output

    handle = module.register_forward_hook(grab)
    ids = lm.encode(TEXT[:300])[:40]
    acts = collect(lm, [ids], sensitivity=True)
    handle.remove()
    keys = seen["keys"]
    if keys.dim() == 3:  # Llama: [batch, tokens, heads * dim]
        keys = keys.view(1, len(ids), -1, attn.head_dim).transpose(1, 2)
    torch.testing.assert_close(acts.keys[1][0], keys[0, :, 1:].detach(), rtol=1e-4, atol=1e-4)
    assert acts.key_weights[1][0].shape == acts.keys[1][0].shape and acts.key_weights[1][0].sum() > 0


def test_quantizer_error_bounds_and_exact_outliers():
    x = torch.randn(2, 3, 32, 16) * torch.linspace(0.1, 5, 16)
    uniform = TensorQuantizer(4, uniform_codebook(4), per_token=True)
    step = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 15
    assert ((uniform.roundtrip(x) - x).abs() <= step / 2 + 1e-2 * step + 1e-3).all()
    sparse = TensorQuantizer(2, uniform_codebook(2), per_token=True, outliers=2)
    idx = (x - x.mean(-1, keepdim=True)).abs().topk(2, -1).indices
    torch.testing.assert_close(sparse.roundtrip(x).gather(3, idx), x.gather(3, idx).half().float())
    grouped = TensorQuantizer(3, uniform_codebook(3), per_token=False, group=8)
    assert grouped.quantize(x).center.shape == (2, 3, 4, 16)


def test_nearest_level_per_head_matches_brute_force():
    book = torch.sort(torch.rand(3, 8) * 2 - 1).values
    x = torch.rand(2, 3, 5, 7) * 2.4 - 1.2
    brute = (x.unsqueeze(-1) - book[None, :, None, None, :]).abs().argmin(-1)
    assert torch.equal(nearest_level(x, book), brute)
    assert torch.equal(nearest_level(x, book[:1]), (x.unsqueeze(-1) - book[0]).abs().argmin(-1))


@pytest.mark.parametrize("spec", ["uniform:2", "calibrated", "grouped"])
def test_a_residual_window_longer_than_the_text_changes_nothing(lm, calibrated, tmp_path, spec):
    factory = _factory(lm, calibrated, tmp_path, spec, residual=10_000, sinks=1)
    plain = bits_per_byte(lm, TEXT[:600], context=64, decode_order=DecodeOrder(lambda: DynamicCache(config=lm.model.config), chunk=7))
    quant = bits_per_byte(lm, TEXT[:600], context=64, decode_order=DecodeOrder(factory, chunk=7))
    assert quant.tokens > 3 * 64 and quant.stride == 32  # many sliding windows
    assert torch.equal(quant.token_nll, plain.token_nll)
    one_pass = bits_per_byte(lm, TEXT[:600], context=64)  # the same windows, each in one causal pass
    assert quant.bpb == pytest.approx(one_pass.bpb, abs=1e-4) and one_pass.chunk is None


def test_eval_bpb_through_a_cache_that_quantizes_nothing_equals_plain_scoring(tiny_gemma_dir, tmp_path):
    """The CLI's decode-order scoring slides the same windows as plain scoring and says so in its JSON."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:1500])
    args = ["eval", "bpb", "-m", tiny_gemma_dir, text, "--context", 96, "--stride", 40, "--json"]
    plain = json.loads(run_cli(*args, check=0).stdout)
    quant = json.loads(run_cli(*args, "--kv-quant", "uniform:4", "--kv-residual", 100_000, "--chunk", 8, check=0).stdout)
    assert plain["tokens"] > 5 * 96 and plain["stride"] == quant["stride"] == 40
    assert (plain["scoring"], quant["scoring"], quant["chunk"]) == ("windows", "windows in decode order", 8)
    assert quant["bpb"] == pytest.approx(plain["bpb"], abs=1e-4)


@pytest.mark.parametrize(
    "family, spec", [("llama", "uniform:4"), ("llama", "uniform:2"), ("llama", "calibrated"), ("gemma", "calibrated"),
                     ("llama", "grouped")]
)
def test_attention_sees_sinks_exact_body_quantized_and_window_exact(
    family, spec, tiny_llama_dir, tiny_gemma_dir, calibrated, tmp_path
):
    """Layer 0's keys do not depend on attention, so they can be checked token by token
    (Gemma's layer 0 is a sliding-window layer that has already dropped its oldest tokens and sinks)."""
    lm = load_model(str(tiny_llama_dir if family == "llama" else tiny_gemma_dir), device="cpu")
    factory = _factory(lm, calibrated, tmp_path, spec, residual=8, sinks=2)
    ids = lm.encode(TEXT)[:70]
    cache, plain = factory(), DynamicCache(config=lm.model.config)
    _feed(lm, cache, ids, chunk=3)
    _feed(lm, plain, ids, chunk=3)
    layer, exact = cache.layers[0], plain.layers[0].keys
    keys, _ = layer._assemble(exact[:, :, :0], plain.layers[0].values[:, :, :0])
    sinks, body = layer.sink_keys.shape[2], layer.packed_tokens - layer.skip
    assert keys.shape == exact.shape and sinks == (2 if family == "llama" else 0) and layer.keys.shape[2] >= 8
    assert torch.equal(keys[:, :, :sinks], exact[:, :, :sinks])
    assert torch.equal(keys[:, :, sinks + body :], exact[:, :, sinks + body :])
    original = exact[:, :, sinks : sinks + body]
    quantizer = layer.quantizer
    if quantizer.pre_rope:
        first = layer.cumulative_length - layer.keys.shape[2] - body
        expected = layer.rope.rotate(quantizer.keys.roundtrip(layer.rope.unrotate(original, 0, first)), 0, first)
    else:
        expected = quantizer.keys.roundtrip(original)
    torch.testing.assert_close(keys[:, :, sinks : sinks + body], expected, rtol=1e-4, atol=1e-4)
    assert body > 0 and not torch.equal(keys[:, :, sinks : sinks + body], original)  # it really is quantized
    relative = (keys - exact).square().sum() / exact.square().sum()
    assert relative < {"uniform:4": 0.01, "calibrated": 0.02, "grouped": 0.01, "uniform:2": 0.2}[spec]


@pytest.mark.parametrize("family, spec", [("llama", "uniform:3"), ("llama", "calibrated"), ("gemma", "calibrated"),
                                          ("gemma", "grouped")])
def test_fused_attention_equals_attention_over_the_dequantized_buffer(family, spec, tiny_llama_dir, tiny_gemma_dir, calibrated, tmp_path):
    """Attending the packed codes directly (and merging in the full-precision tokens) must give what
    SDPA gives over the dequantized buffer: one token per call (no mask) and 7 per call (causal mask,
    and for Gemma sliding-window masks over the packed body)."""
    lm = load_model(str(tiny_llama_dir if family == "llama" else tiny_gemma_dir), device="cpu")
    ids = lm.encode(TEXT)[:100]
    for chunk in (1, 7):
        fused = _factory(lm, calibrated, tmp_path, spec, residual=5, sinks=1)()
        buffered = _factory(lm, calibrated, tmp_path, spec, residual=5, sinks=1, fused=False)()
        assert lm.model.config._attn_implementation == "tokeff_packed_kv"
        with torch.no_grad():
            for start in range(0, len(ids), chunk):
                piece = torch.tensor([ids[start : start + chunk]])
                a = lm.model(piece, past_key_values=fused, use_cache=True).logits
                b = lm.model(piece, past_key_values=buffered, use_cache=True).logits
                # 1e-3: on this machine's stack the calibrated tiny Llama differs by up to 4.3e-4 (float32
                # summation order of the blockwise softmax); a wrong merge (log-denominator off by 0.5) is far larger.
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        assert fused.layers[1].packed_tokens > 32  # the packed body really was attended


def test_sliding_layers_keep_only_their_window(tiny_gemma_dir):
    lm = load_model(str(tiny_gemma_dir), device="cpu")
    window = lm.model.config.sliding_window
    for residual, sinks in ((4, 1), (40, 0)):
        cache = kv_cache_factory("uniform:3", lm, residual=residual, sinks=sinks)()
        plain = DynamicCache(config=lm.model.config)
        ids = lm.encode(TEXT)[:90]
        for start in range(0, 90, 7):
            piece = ids[start : start + 7]
            for c in (cache, plain):
                assert c.get_mask_sizes(len(piece), 0) == plain.get_mask_sizes(len(piece), 0)
            _feed(lm, cache, piece, 7)
            _feed(lm, plain, piece, 7)
            assert cache.layers[0].stored_tokens == min(start + len(piece), window - 1)
        assert cache.get_seq_length() == 90 and cache.layers[1].stored_tokens == 90


def test_bytes_shrink_with_bits_and_beat_the_full_precision_cache(lm, calibrated, tmp_path):
    ids = lm.encode(TEXT)[:200]
    plain = DynamicCache(config=lm.model.config)
    _feed(lm, plain, ids, 50)
    sizes = {}
    for spec in ("uniform:4", "uniform:3", "uniform:2", "calibrated"):
        cache = _factory(lm, calibrated, tmp_path, spec, residual=16, sinks=1)()
        _feed(lm, cache, ids, 50)
        sizes[spec] = cache_nbytes(cache)
    assert sizes["uniform:2"] < sizes["uniform:3"] < sizes["uniform:4"] < cache_nbytes(plain) / 2
    assert sizes["calibrated"] < cache_nbytes(plain) / 2


def test_crop_rolls_back_like_a_fresh_cache(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir), device="cpu")
    factory = kv_cache_factory("uniform:4", lm, residual=6, sinks=1)
    ids = lm.encode(TEXT)[:60]
    cropped, fresh = factory(), factory()
    _feed(lm, cropped, ids, 6)
    cropped.crop(-4)
    _feed(lm, fresh, ids[:56], 6)
    assert cropped.get_seq_length() == 56
    with torch.no_grad():
        a = lm.model(torch.tensor([ids[56:58]]), past_key_values=cropped, use_cache=True).logits
        b = lm.model(torch.tensor([ids[56:58]]), past_key_values=fresh, use_cache=True).logits
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="cannot cut"):
        cropped.crop(-30)  # into the middle of a 32-token key group


def test_greedy_decoding_through_the_quantized_cache(lm, calibrated, tmp_path):
    prompt = Prompt.from_text(lm, "To be, or not to be")
    plain = get_method("greedy")(lm, DecodeConfig(max_new_tokens=12, stop_at_eos=False)).generate(prompt)
    factory = _factory(lm, calibrated, tmp_path, "calibrated", residual=64, sinks=1)
    config = DecodeConfig(max_new_tokens=12, stop_at_eos=False, cache_factory=lambda _lm: factory())
    quant = get_method("greedy")(lm, config).generate(prompt)
    assert quant.token_ids == plain.token_ids  # nothing left the residual window yet
    tight_factory = _factory(lm, calibrated, tmp_path, "calibrated", residual=0, sinks=0)
    tight = DecodeConfig(max_new_tokens=12, stop_at_eos=False, cache_factory=lambda _lm: tight_factory())
    squeezed = get_method("greedy")(lm, tight).generate(prompt)
    assert 0 < squeezed.stats.peak_kv_bytes < plain.stats.peak_kv_bytes


def test_bad_specs(lm):
    for spec, message in (("uniform:5", "--bits must be one of"), ("uniform:x", "expected uniform:BITS"),
                          ("/no/such/artifact", "no such artifact")):
        with pytest.raises(TokeffError, match=message):
            kv_cache_factory(spec, lm)
    with pytest.raises(TokeffError, match=">= 0"):
        kv_cache_factory("uniform:4", lm, residual=-1)


def _factory(lm, calibrated, tmp_path, spec, residual, sinks, fused=True):
    if spec not in ("calibrated", "grouped"):
        return kv_cache_factory(spec, lm, residual=residual, sinks=sinks, fused=fused)
    from tokeff.kvquant.artifact import write_calibration

    text = tmp_path / "calibration.txt"
    text.write_text(TEXT)
    out = tmp_path / "kv"
    key = str(lm.folder) + (":grouped" if spec == "grouped" else "")
    write_calibration(out, lm, calibrated[key], text, {}, {}, force=True)
    return kv_cache_factory(str(out), lm, residual=residual, sinks=sinks, fused=fused)
