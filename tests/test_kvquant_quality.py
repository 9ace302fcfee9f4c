"""KV-cache quality against the full model: KL, top-1 agreement, Δ bits/byte and their bootstrap intervals."""

import json

import pytest
import torch

from helpers import run_cli
from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import bits_per_byte
from tokeff.core.models import load_model
from tokeff.core.scoring import DecodeOrder, compare_tokens, prefix_token_id, score_tokens
from tokeff.kvquant.quality import bootstrap, kv_quality
from tokeff.kvquant.spec import kv_cache_factory

import tiny_models

TEXT = tiny_models.corpus(3000)


@pytest.fixture
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


def test_comparison_scores_what_both_scorers_score(lm):
    """The cache's and the reference's NLLs are exactly those of decode-order and one-pass scoring, over many windows."""
    ids = lm.encode_plain(TEXT)[:300]
    order = DecodeOrder(kv_cache_factory("uniform:2", lm, residual=0, sinks=1), chunk=8)
    compared = compare_tokens(lm, ids, 64, 24, order, label=None)
    torch.testing.assert_close(compared.nll, score_tokens(lm, ids, 64, 24, decode_order=order, label=None).token_nll)
    torch.testing.assert_close(compared.reference_nll, score_tokens(lm, ids, 64, 24, label=None).token_nll)
    assert (compared.kl >= -1e-6).all() and compared.kl.mean() > 1e-6  # 2 bits with no window does change things


def test_kl_and_agreement_match_a_brute_force_pass(lm):
    """One window: the prompt fed 8 tokens at a time through a fresh cache, softmaxes compared by hand."""
    ids = lm.encode_plain(TEXT)[:50]
    make = kv_cache_factory("uniform:2", lm, residual=0, sinks=1)
    compared = compare_tokens(lm, ids, 64, None, DecodeOrder(make, chunk=8), label=None)
    window = torch.tensor([[prefix_token_id(lm)] + ids])
    with torch.no_grad():
        full = torch.log_softmax(lm.model(window).logits[0, :-1].double(), -1)
        cache, pieces = make(), []
        for at in range(0, len(ids), 8):
            pieces.append(lm.model(window[:, at : min(at + 8, len(ids))], past_key_values=cache, use_cache=True).logits[0])
        quant = torch.log_softmax(torch.cat(pieces).double(), -1)
    torch.testing.assert_close(compared.kl, (full.exp() * (full - quant)).sum(-1), rtol=1e-3, atol=1e-6)
    assert compared.agree.tolist() == (full.argmax(-1) == quant.argmax(-1)).tolist()


def test_a_cache_that_changes_nothing_has_zero_kl_and_plain_bpb(lm):
    text = TEXT[:800]  # several windows of 64 tokens
    quality = kv_quality(lm, text, kv_cache_factory("uniform:4", lm, residual=100_000), context=64, stride=24, chunk=8,
                         segment=16, resamples=200)
    assert quality.kl.high < 1e-6 and quality.top1.low == 1.0 and abs(quality.delta_bpb.value) < 1e-6
    assert quality.bpb == pytest.approx(bits_per_byte(lm, text, context=64, stride=24).bpb, abs=1e-6)
    assert quality.kv_bytes_per_token > 0


def test_bootstrap_interval():
    values = torch.arange(100, dtype=torch.float64)
    whole = bootstrap(values, segment=100, resamples=50)  # one segment: every resample is the whole sample
    assert whole.low == whole.high == whole.value == pytest.approx(49.5)
    spread = bootstrap(values, segment=10, resamples=2000, seed=1)
    assert spread.low < 49.5 < spread.high and spread.high - spread.low < 40
    # segment means are what is resampled: the interval brackets the mean of segment means
    assert bootstrap(torch.ones(37), segment=5, resamples=100).low == 1.0
    with pytest.raises(TokeffError, match="--segment"):
        bootstrap(values, segment=0, resamples=10)


def test_kvquant_eval_cli(tiny_llama_dir, tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text(TEXT)
    args = ("kvquant", "eval", text, "--model", str(tiny_llama_dir), "--context", 64, "--chunk", 8, "--max-bytes", 1500,
            "--resamples", 100, "--json")
    out = json.loads(run_cli(*args, "--kv-quant", "uniform:2", "--kv-quant", "uniform:4", "--kv-residual", 0, check=0).stdout)
    two, four = out["caches"]
    assert (two["kv_quant"], four["kv_quant"]) == ("uniform:2", "uniform:4")
    assert two["kv_bytes_per_token"] < four["kv_bytes_per_token"]
    for row in out["caches"]:
        assert row["kl"]["low"] <= row["kl"]["value"] <= row["kl"]["high"]
        assert row["reference_bpb"] == pytest.approx(two["reference_bpb"])
    bad = run_cli(*args, "--kv-quant", "uniform:7", check=1)
    assert "--bits must be one of" in bad.stderr
