import math

import pytest
import torch
import torch.nn.functional as F

import tiny_models
from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import bits_per_byte, bits_per_byte_many
from tokeff.core.scoring import DecodeOrder, prefix_token_id, window_plan
from tokeff.core.models import load_model

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 3


@pytest.mark.parametrize("n, context, stride", [(1, 8, 4), (10, 4, 4), (37, 8, 3), (100, 16, 16), (5, 16, 1)])
def test_window_plan_scores_each_token_once_with_context(n, context, stride):
    plan = window_plan(n, context, stride)
    scored = [i for start, end, first in plan for i in range(first, end)]
    assert scored == list(range(n))
    for start, end, first in plan:
        assert end - start <= context and start <= first < end
        assert first - start >= min(first, context - stride)  # at least context - stride tokens of history


def test_window_plan_rejects_bad_stride():
    with pytest.raises(TokeffError, match="stride"):
        window_plan(10, 4, 5)


def _brute_force_bits(lm, text):
    ids = [prefix_token_id(lm)] + lm.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0, :-1]
    return F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item() / math.log(2)


def test_bpb_matches_one_full_forward_pass(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    result = bits_per_byte(lm, TEXT, context=512)
    assert result.bytes == len(TEXT.encode())
    assert result.tokens == len(lm.encode(TEXT, add_special_tokens=False))
    assert result.bpb == pytest.approx(_brute_force_bits(lm, TEXT) / result.bytes, rel=1e-5)


def test_sliding_windows_stay_close_to_full_context(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    full = bits_per_byte(lm, TEXT, context=512).bpb
    windowed = bits_per_byte(lm, TEXT, context=32, stride=8)
    assert windowed.stride == 8
    # A random model barely uses context, so windowing changes little.
    assert windowed.bpb == pytest.approx(full, rel=0.05)
    # Brute force: every token scored by its own forward pass over the boundary token and exactly
    # the history its window gives it (the prefix takes one of the 32 positions).
    ids = lm.encode(TEXT, add_special_tokens=False)
    expected = torch.empty(len(ids), dtype=torch.float64)
    with torch.no_grad():
        for start, end, first in window_plan(len(ids), 31, 8):
            for i in range(first, end):
                window = torch.tensor([[prefix_token_id(lm), *ids[start : i + 1]]])
                expected[i] = F.cross_entropy(lm.model(window).logits[0, -2:-1], window[0, -1:]).item()
    assert torch.allclose(windowed.token_nll, expected, rtol=1e-4, atol=1e-5)
    assert windowed.bpb == pytest.approx(expected.sum().item() / math.log(2) / windowed.bytes, rel=1e-6)


def test_bpb_bad_arguments(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir), device="cpu")
    with pytest.raises(TokeffError, match=r"--context must be in 2\.\.512 \(the model's positions\), got 100000"):
        bits_per_byte(lm, TEXT, context=100_000)
    with pytest.raises(TokeffError, match=r"--context must be in 2\.\.512 \(the model's positions\), got 1$"):
        bits_per_byte(lm, TEXT, context=1)


@pytest.mark.parametrize("chunk", [1, 5])
def test_decode_order_with_a_plain_cache_matches_windows(tiny_model_dir, chunk):
    """A full-precision cache changes nothing, so decode-order scoring must equal the window scorer."""
    from transformers import DynamicCache

    lm = load_model(str(tiny_model_dir), device="cpu")
    windows = bits_per_byte(lm, TEXT, context=64, stride=64)
    ordered = bits_per_byte(lm, TEXT, context=64, stride=64, decode_order=DecodeOrder(lambda: DynamicCache(config=lm.model.config), chunk=chunk))
    assert torch.allclose(ordered.token_nll, windows.token_nll, atol=1e-4)


def test_special_token_strings_in_scored_text_are_text(tiny_gemma_dir):
    """WikiText spells `<unk>` literally; scoring must read it as text, not as Gemma's unknown-token id."""
    lm = load_model(tiny_gemma_dir)
    text = "a <unk> b"
    assert lm.tokenizer.unk_token_id in lm.encode(text, add_special_tokens=False)  # what a prompt gets
    plain = lm.encode_plain(text)
    assert lm.tokenizer.unk_token_id not in plain
    assert lm.tokenizer.decode(plain) == text
    assert bits_per_byte(lm, text, context=16).token_ids == plain


def test_batched_documents_score_as_one_at_a_time(tiny_model_dir):
    """Several documents per model call (right-padded, some longer than the context so they slide
    windows) give each document's one-at-a-time numbers to 1e-6, in input order; no tokens -> None."""
    lm = load_model(str(tiny_model_dir), device="cpu")
    text = (tiny_models.SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    texts = [text[at : at + size] for at, size in zip(range(0, 20_000, 997), [3, 40, 400, 90, 600, 7, 250, 160] * 2)]
    texts.insert(5, "")
    batched = bits_per_byte_many(lm, texts, context=64, stride=24, max_tokens=300)
    assert batched[5] is None
    assert any(result.tokens > 63 for result in batched if result)  # some documents slide windows
    for text, result in zip(texts, batched):
        if not text:
            continue
        single = bits_per_byte(lm, text, context=64, stride=24)
        assert result.token_ids == single.token_ids
        assert torch.allclose(result.token_nll, single.token_nll, rtol=0, atol=1e-6)
        assert result.bpb == pytest.approx(single.bpb, rel=1e-6, abs=0)
