"""Batched byte-level scoring (covering trees under tree attention) against the incremental model, and `--weight auto`'s bound."""

import math

import pytest
import torch

from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.core.weights import AUTO, parse_weights
from tokeff.decoding.bytelevel import ByteEnsemble, ByteLevelModel, byte_bits_per_byte
from tokeff.decoding.bytelevel.batched import batched_byte_logprobs
from tokeff.decoding.bytelevel.ensemble import combine, pool_grid
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


@pytest.mark.parametrize("mode", ["mix", "product"])
@pytest.mark.parametrize("seed, length, segment_bytes, context_bytes", [(0, 150, 64, 0), (1, 90, 40, 30), (2, 60, 200, 0)])
def test_auto_weights_bound_holds_exactly_on_random_text(models, mode, seed, length, segment_bytes, context_bytes):
    """`auto` on random text, where the tiny models are bad: every next-byte distribution sums to one over the
    256 bytes + end, the text's probability is exactly the average of the fixed-weight pools' probabilities of
    it (the oracle: each pool scored alone), so its total bits are at most the best pool's + log2(pools), which
    is at most the best member's + log2(pools), and at least the best pool's."""
    text = _random_text(seed, length)
    data = text.encode()
    result = byte_bits_per_byte([models["llama"], models["gemma"]], text, weights=AUTO, mode=mode,
                                segment_bytes=segment_bytes, context_bytes=context_bytes)
    mixed = ensemble_logprobs(result.member_logprobs, data, AUTO, mode)
    assert mixed.shape == (len(data), 257)
    torch.testing.assert_close(mixed.exp().sum(1), torch.ones(len(data), dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(-mixed[torch.arange(len(data)), list(data)], result.byte_nll[-1], atol=0, rtol=0)
    pools = pool_grid(2)
    targets = torch.arange(len(data)), list(data)
    pool_nats = torch.stack([-combine(result.member_logprobs, weights, mode)[targets].sum() for weights in pools])
    oracle = -torch.logsumexp(-pool_nats - math.log(len(pools)), 0)
    assert float(result.byte_nll[-1].sum()) == pytest.approx(float(oracle), abs=1e-8)
    bits, pool_bits = float(oracle) / math.log(2), pool_nats / math.log(2)
    member_bits = result.byte_nll[:-1].sum(1) / math.log(2)
    assert float(result.bpb) * len(data) == pytest.approx(bits, abs=1e-8)
    assert float(pool_bits.min()) - 1e-9 <= bits <= float(pool_bits.min()) + math.log2(len(pools)) + 1e-9
    assert bits <= float(member_bits.min()) + math.log2(len(pools)) + 1e-9
    torch.testing.assert_close(pool_bits[:2].sort().values, member_bits.sort().values)  # the corners are the members


def _alternating_members(data: bytes) -> torch.Tensor:
    """Two members, each sure of the right byte (p = 0.9) on every other byte and clueless (uniform) on the rest."""
    members = torch.full((2, len(data), 257), math.log(0.1 / 256), dtype=torch.float64)
    for position, byte in enumerate(data):
        members[position % 2, position, byte] = math.log(0.9)
        members[1 - position % 2, position] = -math.log(257)
    return members


def test_auto_beats_its_best_member_where_a_fixed_weighting_does():
    """Where the members are right on different bytes, the equal mix beats both members by far, and `auto`,
    averaging over weightings, gets within log2(pools) bits of the best weighting: below its best member."""
    data = TEXT.encode()
    members = _alternating_members(data)
    targets = torch.arange(len(data)), list(data)
    member_bits = -members[:, targets[0], targets[1]].sum(1) / math.log(2)
    equal_bits = float(ensemble_nll(members, data, None).sum()) / math.log(2)
    auto_bits = float(ensemble_nll(members, data, AUTO).sum()) / math.log(2)
    assert equal_bits < float(member_bits.min()) - len(data)
    assert auto_bits <= equal_bits + math.log2(len(pool_grid(2))) + 1e-9
    assert auto_bits < float(member_bits.min())


def test_auto_leaves_a_bad_member_out():
    """A member sure of the wrong byte every time: the pools that give it weight lose the posterior within a few
    bytes, so `auto` stays within log2(pools) bits of the good member; equal weights pay about a bit per byte."""
    data = TEXT.encode()
    good = _alternating_members(data)[0]
    wrong = torch.zeros(len(data), 257, dtype=torch.float64)
    wrong[torch.arange(len(data)), [(byte + 1) % 256 for byte in data]] = 12.0
    members = torch.stack([good, torch.log_softmax(wrong, dim=1)])
    auto, equal = ensemble_nll(members, data, AUTO), ensemble_nll(members, data, None)
    good_nats = float(-good[torch.arange(len(data)), list(data)].sum())
    assert float(auto.sum()) <= good_nats + math.log(len(pool_grid(2))) + 1e-9
    assert float(auto.sum()) < float(equal.sum()) - 0.5 * len(data) * math.log(2)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8])
def test_pool_grid_covers_the_simplex_with_the_members_first(count):
    pools = pool_grid(count)
    assert len(pools) <= 64 and len(torch.unique(pools, dim=0)) == len(pools)
    torch.testing.assert_close(pools.sum(1), torch.ones(len(pools), dtype=torch.float64))
    assert (pools >= 0).all()
    corners = pools[:count]
    assert (corners.max(1).values == 1).all() and (corners.sum(0) == 1).all()  # each member alone, once
    if count == 2:
        assert sorted(pools[:, 0].tolist()) == [i / 8 for i in range(9)]


def test_auto_weights_in_generation_follow_the_posterior(models):
    llama, gemma = models["llama"], models["gemma"]
    ensemble = ByteEnsemble([ByteLevelModel(llama, text="To"), ByteLevelModel(gemma, text="To")], AUTO)
    pools = pool_grid(2)
    log_posterior = torch.full((len(pools),), -math.log(len(pools)), dtype=torch.float64)
    for byte in b" be":
        mixed = ensemble.next_byte_logprobs()
        members = ensemble.member_logprobs
        pooled = torch.stack([torch.logsumexp(members + weights.log()[:, None], 0) for weights in pools])
        torch.testing.assert_close(mixed, torch.logsumexp(log_posterior[:, None] + pooled, 0))
        torch.testing.assert_close(mixed.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        log_posterior = log_posterior + pooled[:, byte]
        log_posterior -= torch.logsumexp(log_posterior, 0)
        ensemble.append(byte)
    torch.testing.assert_close(ensemble.log_posterior, log_posterior)
    torch.testing.assert_close(ensemble.weights, log_posterior.exp() @ pools)


def test_weight_flags():
    assert parse_weights(["auto"]) == AUTO and parse_weights(["1", "3"]) == [1.0, 3.0] and parse_weights(None) is None
    with pytest.raises(TokeffError, match="stands alone"):
        parse_weights(["auto", "1"])
    with pytest.raises(TokeffError, match="numbers or auto"):
        parse_weights(["heavy"])
    with pytest.raises(TokeffError, match="--mode must be"):
        ensemble_nll(torch.zeros(2, 1, 257), b"a", AUTO, "median")
