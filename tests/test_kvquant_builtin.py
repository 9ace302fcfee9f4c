"""Calibrated KV-cache quantization on the real built-in models (slow): calibrate on one part of
WikiText-2, score another part in decode order through the quantized cache, check the artifact's
binding to its model. Sizes are small to fit the CI budget; docs/kvquant.md has the full numbers."""

import pytest
import torch
from transformers import DynamicCache

from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import bits_per_byte
from tokeff.core.scoring import DecodeOrder
from tokeff.core.textio import read_text
from tokeff.kvquant.spec import kv_cache_factory
from tokeff.kvquant.artifact import load_calibration, write_calibration
from tokeff.kvquant.calibrate import calibrate

pytestmark = pytest.mark.slow

WIKITEXT = "../shared/data/wikitext2-valid.txt"
CONTEXT, CHUNK, RESIDUAL = 256, 32, 32


@pytest.fixture(scope="module")
def wikitext():
    text = read_text(WIKITEXT)
    return text[:60_000], text[600_000:602_500]  # calibration and evaluation never share bytes


@pytest.fixture(scope="module")
def artifacts(builtin_model, wikitext, tmp_path_factory):
    """A 3-bit calibration per built-in model, written and reloaded through the verified artifact."""
    folder = tmp_path_factory.mktemp("kvquant")
    text_file = folder / "calibration.txt"
    text_file.write_text(wikitext[0])
    made = {}
    for name in ("smollm2-135m", "gemma3-270m"):
        lm = builtin_model(name)
        result = calibrate(lm, wikitext[0], bits=3, samples=2, context=256)
        made[name] = folder / f"{name}-kv3"
        write_calibration(made[name], lm, result.calibration, text_file, {}, result.metrics)
        # Held-out relative squared error of 3-bit keys and values: small, yet not zero (a broken quantizer is near 1).
        assert 0 < result.metrics["key_error"] < 0.05 and 0 < result.metrics["value_error"] < 0.05
    return made


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_decode_order_quality_and_memory(builtin_model, artifacts, wikitext, name):
    lm = builtin_model(name)
    text = wikitext[1]

    def score(make_cache):
        order = DecodeOrder(make_cache, chunk=CHUNK)
        return bits_per_byte(lm, text, context=CONTEXT, stride=CONTEXT, decode_order=order).bpb

    fp = score(lambda: DynamicCache(config=lm.model.config))
    calibrated = kv_cache_factory(str(artifacts[name]), lm, residual=RESIDUAL)
    two_bit = kv_cache_factory("uniform:2", lm, residual=RESIDUAL)
    calibrated_bpb, two_bit_bpb = score(calibrated), score(two_bit)
    # 3 calibrated bits cost little; the cache really is quantized (2 uniform bits cost visibly more).
    assert abs(calibrated_bpb - fp) < 0.05
    assert two_bit_bpb > calibrated_bpb

    ids = lm.encode(text, add_special_tokens=False)[:CONTEXT]
    plain, packed, uniform = DynamicCache(config=lm.model.config), calibrated(), kv_cache_factory("uniform:3", lm, residual=RESIDUAL)()
    with torch.inference_mode():
        for cache in (plain, packed, uniform):
            lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    full = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in plain.layers)
    # calibration chooses within uniform's bytes; 3 bits for all but the last RESIDUAL of CONTEXT tokens
    assert packed.nbytes <= uniform.nbytes < full / 2.5


def test_artifact_for_the_other_model_is_refused(builtin_model, artifacts):
    with pytest.raises(TokeffError, match="calibrated for model smollm2-135m.*not for gemma3-270m"):
        load_calibration(artifacts["smollm2-135m"], builtin_model("gemma3-270m"))
    assert load_calibration(artifacts["gemma3-270m"], builtin_model("gemma3-270m")).bits == 3


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_caches_that_change_nothing_score_as_plain_scoring(builtin_model, wikitext, name):
    """Over many windows: a quantized cache whose residual window holds everything, and sink / h2o
    caches that evict nothing, give plain `eval bpb` to 1e-4 bits per byte (and the KL measure 0)."""
    from tokeff.decoding import get_method
    from tokeff.decoding.bounded import bounded_cache_bpb
    from tokeff.decoding.types import DecodeConfig
    from tokeff.kvquant.quality import kv_quality

    lm = builtin_model(name)
    text = wikitext[1]
    plain = bits_per_byte(lm, text, context=CONTEXT)
    assert plain.tokens > 3 * CONTEXT // 2  # several sliding windows
    quality = kv_quality(lm, text, kv_cache_factory("uniform:4", lm, residual=100_000), context=CONTEXT, chunk=CHUNK,
                         resamples=100)
    assert quality.bpb == pytest.approx(plain.bpb, abs=1e-4) and quality.reference_bpb == pytest.approx(plain.bpb, abs=1e-6)
    assert quality.kl.high < 1e-4 and quality.top1.value > 0.999
    for method, options in (("sink", {"window": 10 * CONTEXT}), ("h2o", {"kv_budget": 10 * CONTEXT})):
        bounded = bounded_cache_bpb(get_method(method)(lm, DecodeConfig(), **options), text, CONTEXT, chunk=CHUNK)
        assert bounded.bounded.bpb == pytest.approx(plain.bpb, abs=1e-4), method
