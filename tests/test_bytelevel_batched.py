"""Batched byte-level scoring (covering trees under tree attention) against the incremental model, and the Bayesian mixture's bound."""

import math

import pytest
import torch

from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.core.weights import AUTO, parse_weights
from tokeff.decoding.bytelevel import ByteEnsemble, ByteLevelModel, byte_bits_per_byte
from tokeff.decoding.bytelevel.batched import batched_byte_logprobs
from tokeff.decoding.bytelevel.scoring import ensemble_logprobs, ensemble_nll, incremental_byte_logprobs, windows
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


def _random_text(seed: int, length: int) -> str:
    """Printable ASCII with some multi-byte characters, drawn at random: text the tiny models know nothing about."""
    generator = torch.Generator().manual_seed(seed)
    alphabet = [chr(code) for code in range(32, 127)] + ["\n", "\u00e9", "\u4e2d", "\U0001f600"]
    return "".join(alphabet[i] for i in torch.randint(0, len(alphabet), (length,), generator=generator).tolist())


@pytest.mark.parametrize("seed, length, segment_bytes, context_bytes", [(0, 150, 64, 0), (1, 90, 40, 30), (2, 60, 200, 0)])
def test_auto_weights_bound_holds_exactly_on_random_text(models, seed, length, segment_bytes, context_bytes):
    """Bayesian mixture on random text, where the tiny models are bad: every next-byte distribution sums to one
    over the 256 bytes + end, the text's probability is exactly the prior-weighted sum of the members' (the
    oracle), so its total bits are at most the best member's + log2(members) and at least the best member's."""
    text = _random_text(seed, length)
    data = text.encode()
    result = byte_bits_per_byte([models["llama"], models["gemma"]], text, weights=AUTO,
                                segment_bytes=segment_bytes, context_bytes=context_bytes)
    mixed = ensemble_logprobs(result.member_logprobs, data, AUTO)
    assert mixed.shape == (len(data), 257)
    torch.testing.assert_close(mixed.exp().sum(1), torch.ones(len(data), dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(-mixed[torch.arange(len(data)), list(data)], result.byte_nll[-1], atol=0, rtol=0)
    member_nats = result.byte_nll[:-1].sum(1)
    oracle = -torch.logsumexp(-member_nats + math.log(0.5), 0)
    assert float(result.byte_nll[-1].sum()) == pytest.approx(float(oracle), abs=1e-8)
    bits, member_bits = float(oracle) / math.log(2), member_nats / math.log(2)
    assert float(result.bpb) * len(data) == pytest.approx(bits, abs=1e-8)
    assert bits <= float(member_bits.min()) + math.log2(2) + 1e-9
    assert bits >= float(member_bits.min()) - 1e-9  # a mixture: not better than its best member's whole-text probability


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
