"""Batched byte-level scoring (covering trees under tree attention) against the incremental model, and the Bayesian mixture's bound."""

import math

import pytest
import torch

from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.core.weights import AUTO, parse_weights
from tokeff.decoding.bytelevel import ByteEnsemble, ByteLevelModel, byte_bits_per_byte
from tokeff.decoding.bytelevel.batched import batched_byte_logprobs
from tokeff.decoding.bytelevel.scoring import ensemble_nll, incremental_byte_logprobs, windows
from tokeff.decoding.types import DecodeStats

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n  caf\u00e9 na\u00efve \U0001f600!\n"


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_gemma_dir):
    return {"llama": load_model(str(tiny_llama_dir), device="cpu"), "gemma": load_model(str(tiny_gemma_dir), device="cpu")}


@pytest.mark.parametrize("name", ["llama", "gemma"])
@pytest.mark.parametrize("segment_bytes, context_bytes, batch_tokens", [(40, 0, 7), (48, 30, 256), (200, 0, 16)])
def test_batched_equals_incremental(models, name, segment_bytes, context_bytes, batch_tokens):
    """Every next-byte distribution, not only the scored byte's: fresh and carried-over contexts, small batches
    (trees split over several calls), Gemma's 16-position sliding window exceeded, multi-byte characters."""
    lm = models[name]
    data = TEXT.encode()
    plan = windows(data, segment_bytes, context_bytes)
    batched_stats, incremental_stats = DecodeStats(), DecodeStats()
    batched, fed = batched_byte_logprobs(lm, data, plan, batched_stats, batch_tokens)
    reference = incremental_byte_logprobs(lm, data, plan, incremental_stats)
    assert torch.equal(torch.isfinite(batched), torch.isfinite(reference))
    finite = torch.isfinite(reference)
    torch.testing.assert_close(batched[finite], reference[finite], atol=2e-5, rtol=0)
    assert fed >= len(lm.encode_plain(TEXT))  # every token of the text is a node, and more
    assert batched_stats.forward_passes < incremental_stats.forward_passes / 3


def test_bpb_batched_and_incremental_agree(models):
    lms = [models["llama"], models["gemma"]]
    fast = byte_bits_per_byte(lms, TEXT, segment_bytes=50, context_bytes=40)
    slow = byte_bits_per_byte(lms, TEXT, segment_bytes=50, context_bytes=40, batched=False)
    assert fast.bpb == pytest.approx(slow.bpb, abs=1e-4)
    assert fast.member_bpb == pytest.approx(slow.member_bpb, abs=1e-4)
    assert fast.segments == slow.segments == len(windows(TEXT.encode(), 50, 40))


def test_auto_weights_bound_holds_exactly_on_random_text(models):
    """Bayesian mixture: total bits <= best member's + log2(members), on random bytes, where the tiny models are bad."""
    generator = torch.Generator().manual_seed(0)
    text = bytes(torch.randint(32, 127, (150,), generator=generator).tolist()).decode()
    result = byte_bits_per_byte([models["llama"], models["gemma"]], text, weights=AUTO, segment_bytes=64)
    bits = result.byte_nll.sum(1) / math.log(2)
    assert float(bits[-1]) <= float(bits[:-1].min()) + math.log2(2) + 1e-9
    assert float(bits[-1]) >= float(bits[:-1].min()) - 1e-9  # and it is a mixture, not better than the sum of its parts


def test_auto_beats_equal_weights_when_one_member_is_bad(models):
    """A member sure of the wrong byte every time loses the posterior within a few bytes; equal weights
    keep paying about a bit per byte for it."""
    data = TEXT.encode()
    good, _ = batched_byte_logprobs(models["llama"], data, windows(data, 64), DecodeStats())
    wrong = torch.zeros(len(data), 257, dtype=torch.float64)
    wrong[torch.arange(len(data)), [(byte + 1) % 256 for byte in data]] = 12.0
    bad = torch.log_softmax(wrong, dim=1)
    members = torch.stack([good, bad])
    auto, equal = ensemble_nll(members, data, AUTO), ensemble_nll(members, data, None)
    good_bits, auto_bits = float(-good[torch.arange(len(data)), list(data)].sum()), float(auto.sum())
    assert auto_bits <= good_bits + math.log(2) + 1e-9
    assert auto_bits < float(equal.sum()) - 0.5 * len(data) * math.log(2)


def test_auto_weights_in_generation_follow_the_posterior(models):
    llama, gemma = models["llama"], models["gemma"]
    ensemble = ByteEnsemble([ByteLevelModel(llama, text="To"), ByteLevelModel(gemma, text="To")], AUTO)
    log_weights = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    for byte in b" be":
        mixed = ensemble.next_byte_logprobs()
        members = ensemble.member_logprobs
        expected = torch.logsumexp(members + log_weights[:, None], 0)
        torch.testing.assert_close(mixed, expected)
        log_weights = log_weights + members[:, byte]
        log_weights -= torch.logsumexp(log_weights, 0)
        ensemble.append(byte)
    torch.testing.assert_close(ensemble.weights.log(), log_weights)


def test_weight_flags():
    assert parse_weights(["auto"]) == AUTO and parse_weights(["1", "3"]) == [1.0, 3.0] and parse_weights(None) is None
    with pytest.raises(TokeffError, match="stands alone"):
        parse_weights(["auto", "1"])
    with pytest.raises(TokeffError, match="numbers or auto"):
        parse_weights(["heavy"])
    with pytest.raises(TokeffError, match="--mode mix"):
        ensemble_nll(torch.zeros(2, 1, 257), b"a", AUTO, "product")
