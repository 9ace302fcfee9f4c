"""Supertoken training, tokenizer stats and dynamic tokenization on the real built-in models and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokeff.core.evaluation import bits_per_byte
from tokeff.decoding import get_method
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.tokenizers_tools.dynamic.scoring import evaluate_dynamic
from tokeff.tokenizers_tools.stats import tokenizer_stats
from tokeff.tokenizers_tools.training import train_bpe

pytestmark = pytest.mark.slow

WIKITEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2-valid.txt"


@pytest.fixture(scope="module")
def wikitext() -> tuple[str, str]:
    """(train, held out): 400 kB to train on, the next 40 kB to measure, cut at line boundaries."""
    text = WIKITEXT.read_text(encoding="utf-8")
    cut = text.index("\n", 400_000) + 1
    end = text.index("\n", cut + 40_000) + 1
    return text[:cut], text[cut:end]


def test_supertokens_shorten_held_out_text_against_plain_bpe_and_the_own_tokenizers(wikitext, builtin_model):
    from transformers import PreTrainedTokenizerFast

    train, held_out = wikitext
    plain = train_bpe([train], 8192)
    supertoken = train_bpe([train], 8192, supertokens=True, stage1_merges=6000)
    rows = {}
    for name, trained in (("plain", plain), ("supertoken", supertoken)):
        rows[name] = tokenizer_stats(name, PreTrainedTokenizerFast(tokenizer_object=trained.tokenizer), held_out)
    for name in ("smollm2-135m", "gemma3-270m"):
        rows[name] = tokenizer_stats(name, builtin_model(name).tokenizer, held_out)
    assert all(row.lossless and row.bytes == len(held_out.encode()) for row in rows.values())
    assert rows["plain"].multiword_tokens == 0 < rows["supertoken"].multiword_tokens
    assert rows["smollm2-135m"].multiword_tokens == 0
    # Same vocabulary, same training text: stage 2 only adds merges that cut the count.
    assert rows["supertoken"].tokens < rows["plain"].tokens
    # The own tokenizers have 6x and 32x the vocabulary, so they encode more bytes per token than an 8k BPE.
    assert rows["smollm2-135m"].bytes_per_token > rows["plain"].bytes_per_token
    assert rows["gemma3-270m"].bytes_per_token > rows["plain"].bytes_per_token


def test_dynamic_scoring_on_a_real_model(wikitext, builtin_model):
    lm = builtin_model("smollm2-135m")
    text = wikitext[1][:3000]
    context = 256
    [merged] = evaluate_dynamic(lm, text, [128], context=context)
    core = bits_per_byte(lm, text, context=context, stride=context)
    assert merged.base_bpb == pytest.approx(core.bpb, rel=1e-3) and merged.base_tokens == core.tokens
    assert merged.merges > 8 and 0.05 < merged.length_reduction < 0.5
    # The model still reads the merged text: within 1 bit per byte of its own tokenization (broken
    # embeddings or an unnormalized head land several bits away).
    assert 0 < merged.dynamic_bpb < merged.base_bpb + 1.0
    [unmerged] = evaluate_dynamic(lm, text, [8], context=context, min_count=10**6)
    assert unmerged.merges == 0 and unmerged.dynamic_bpb == pytest.approx(unmerged.base_bpb, rel=1e-4)


def test_decode_method_dynamic_on_a_real_model(wikitext, builtin_model):
    lm = builtin_model("smollm2-135m")
    config = DecodeConfig(max_new_tokens=8, stop_at_eos=False)
    prompt = Prompt.from_text(lm, wikitext[1][:1500])
    greedy = get_method("greedy")(lm, config).generate(prompt)
    same = get_method("dynamic")(lm, config, min_count=10**6).generate(prompt)
    assert same.token_ids == greedy.token_ids
    merged = get_method("dynamic")(lm, config, merges=64).generate(prompt)
    assert merged.details["merges"] > 8 and merged.details["prefill_tokens"] < 0.97 * len(prompt.ids)
    assert len(merged.token_ids) == 8 and merged.stats.forward_passes == 8
