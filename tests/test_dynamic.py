"""Dynamic tokenization: batch merges, new-token embeddings, the extended head, scoring and `--method dynamic`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import run_cli
from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import bits_per_byte
from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import load_model
from tokeff.decoding import get_method
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.tokenizers_tools.canonical import vocab_bytes
from tokeff.tokenizers_tools.dynamic.merging import merge_batch
from tokeff.tokenizers_tools.dynamic.model import DynamicModel, piece_weights
from tokeff.tokenizers_tools.dynamic.scoring import evaluate_dynamic

TEXT = (
    "Citizens of the citizenry, the citizens consider the consideration considerately. "
    "Considering the considerable citizens, consider them. "
) * 6


@pytest.fixture(scope="module", params=["llama", "gemma"])
def lm(request, tiny_llama_dir, tiny_gemma_dir):
    return load_model(str(tiny_llama_dir if request.param == "llama" else tiny_gemma_dir), device="cpu")


def _merged(lm, merges=24, across_words=False, text=TEXT):
    ids = lm.encode(text, add_special_tokens=True)
    size = lm.model.get_input_embeddings().num_embeddings
    vocab, [merged] = merge_batch([ids], vocab_bytes(lm.tokenizer), size, merges, across_words=across_words)
    return ids, vocab, merged


@pytest.mark.parametrize("across_words", [False, True])
def test_merges_shorten_the_batch_and_expand_back(lm, across_words):
    ids, vocab, merged = _merged(lm, across_words=across_words)
    assert len(vocab) > 5 and len(merged) < len(ids)
    assert vocab.expand(merged) == ids
    assert all(token < vocab.base_size for token in ids)
    pieces = vocab_bytes(lm.tokenizer).token_bytes
    specials = vocab_bytes(lm.tokenizer).special_ids
    for new in vocab.pieces:
        assert not specials & set(new)
        if not across_words:  # no piece after the first starts a word, none before the last ends one
            assert all(not pieces[token][:1].isspace() for token in new[1:])
            assert all(not pieces[token][-1:].isspace() for token in new[:-1])
    if across_words:
        assert any(any(pieces[token][:1] == b" " for token in new[1:]) for new in vocab.pieces)


def test_new_embeddings_are_weighted_sums_of_the_model_embedding_module(lm):
    _, vocab, merged = _merged(lm)
    model = DynamicModel(lm, vocab, "mean")
    embed = lm.model.get_input_embeddings()
    with torch.inference_mode():
        got = model.inputs_embeds(merged)[0]
        for position, token in enumerate(merged):
            pieces = vocab.pieces[token - vocab.base_size] if token >= vocab.base_size else (token,)
            want = embed(torch.tensor(pieces)).mean(0)  # Gemma's scaling included
            torch.testing.assert_close(got[position], want)
    assert piece_weights(3, "linear").tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert piece_weights(3, "last").tolist() == [0, 0, 1]
    with pytest.raises(TokeffError):
        piece_weights(2, "median")


def test_head_is_a_proper_distribution_that_splits_each_first_piece(lm):
    _, vocab, merged = _merged(lm)
    model = DynamicModel(lm, vocab)
    logits = torch.randn(5, vocab.base_size) * 3
    probs = model.head.log_probs(logits, rows=2).exp()
    assert probs.shape == (5, vocab.base_size + len(vocab))
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, dtype=probs.dtype))
    # Base probabilities are only split, not changed: a's mass is shared by a and the new tokens starting with a.
    base = torch.softmax(logits, -1)
    shared = probs[:, : vocab.base_size].clone()
    shared.index_add_(1, model.head.first_piece, probs[:, vocab.base_size :])
    torch.testing.assert_close(shared, base)
    targets = torch.tensor([merged[0], vocab.base_size, vocab.base_size + 1, 3, merged[-1]])
    torch.testing.assert_close(model.head.target_log_probs(logits, targets, rows=2), probs.log().gather(1, targets[:, None])[:, 0])


def test_continuation_probabilities_match_step_by_step_scoring(lm):
    _, vocab, _ = _merged(lm)
    model = DynamicModel(lm, vocab)
    got = model._continuation_probs(batch=3)
    prefix = prefix_token_id(lm)
    for pieces, prob in list(zip(vocab.pieces, got))[:6]:
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(torch.tensor([[prefix, *pieces]])).logits[0].float(), -1)
        want = math.exp(sum(float(logp[i, pieces[i]]) for i in range(1, len(pieces))))
        assert prob == pytest.approx(want, rel=1e-4)


def test_scoring_matches_the_core_evaluator_and_is_exact_without_merges(lm):
    context = 48
    reports = evaluate_dynamic(lm, TEXT, [1, 32], context=context)
    core = bits_per_byte(lm, TEXT, context=context, stride=context)  # non-overlapping windows: the same segments
    for report in reports:
        assert report.base_bpb == pytest.approx(core.bpb, rel=1e-4)
        assert report.bytes == len(TEXT.encode()) and report.base_tokens == core.tokens
    assert 0 < reports[0].length_reduction < reports[1].length_reduction
    assert reports[1].merges > 5 and math.isfinite(reports[1].dynamic_bpb)
    assert reports[1].new_token_bpb_change is not None
    assert reports[1].merge_table_bpb == pytest.approx(
        reports[1].merges * 2 * math.log2(lm.model.get_input_embeddings().num_embeddings + reports[1].merges) / reports[1].bytes
    )
    # No pair repeats 10**6 times: nothing merges, and the inputs_embeds path gives the model's own numbers.
    [unmerged] = evaluate_dynamic(lm, TEXT, [8], context=context, min_count=10**6)
    assert unmerged.merges == 0 and unmerged.dynamic_bpb == pytest.approx(unmerged.base_bpb, rel=1e-5)
    [prefill] = evaluate_dynamic(lm, TEXT, [8], context=context, min_count=10**6, prefill=0.5)
    assert prefill.dynamic_bpb == pytest.approx(prefill.base_bpb, rel=1e-5) and prefill.bytes < len(TEXT.encode())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(merge_counts=[0]), "--merges"),
        (dict(merge_counts=[4], prefill=1.5), "--prefill"),
        (dict(merge_counts=[4], context=2), "--context"),
        (dict(merge_counts=[4], context=10**6), r"--context must be in 3\.\.512 \(the model's positions\), got 1000000"),
        (dict(merge_counts=[4], embedding="median"), "embedding scheme"),
    ],
)
def test_scoring_rejects_bad_settings(tiny_llama_dir, kwargs, message):
    lm = load_model(str(tiny_llama_dir), device="cpu")
    with pytest.raises(TokeffError, match=message):
        evaluate_dynamic(lm, TEXT, **kwargs)


def test_decode_method_dynamic(lm):
    config = DecodeConfig(max_new_tokens=6, stop_at_eos=False)
    prompt = Prompt.from_text(lm, TEXT)
    greedy = get_method("greedy")(lm, config).generate(prompt)
    # Nothing to merge: identical to greedy.
    same = get_method("dynamic")(lm, config, min_count=10**6).generate(prompt)
    assert same.token_ids == greedy.token_ids and same.details["prefill_tokens"] == len(prompt.ids)
    merged = get_method("dynamic")(lm, config, merges=32).generate(prompt)
    assert merged.details["prefill_tokens"] < len(prompt.ids) and merged.details["merges"] > 0
    assert len(merged.token_ids) == 6 and merged.stats.forward_passes == 6


def test_method_flags_are_checked_against_the_method(tiny_llama_dir):
    # A dynamic flag on another method is an error before any model loads, and vice versa.
    assert "--merges does not apply to --method greedy" in run_cli(
        "decode", "-m", tiny_llama_dir, "--prompt", "hi", "--merges", 4, check=1).stderr
    assert "--ngram does not apply to --method dynamic" in run_cli(
        "decode", "-m", tiny_llama_dir, "--prompt", "hi", "--method", "dynamic", "--ngram", 2, check=1).stderr
    # -o KEY=VALUE is parsed and checked by the same specs.
    base = ["decode", "-m", tiny_llama_dir, "--prompt", "hi", "--method", "dynamic"]
    assert "unknown option 'ngram'" in run_cli(*base, "-o", "ngram=2", check=1).stderr
    assert "--merges must be an integer >= 1, got 0" in run_cli(*base, "-o", "merges=0", check=1).stderr
    assert "given both as a flag and with -o" in run_cli(*base, "--merges", 4, "-o", "merges=5", check=1).stderr


def test_cli_dynamic_and_decode_options(tiny_llama_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    payload = json.loads(run_cli("dynamic", "-m", tiny_llama_dir, text, "-k", 4, "-k", 16, "--context", 64, "--json", check=0).stdout)
    assert [row["merges"] for row in payload["results"]] == [4, 16]
    assert payload["results"][1]["length_reduction"] > 0
    out = run_cli("decode", "-m", tiny_llama_dir, "--prompt-file", text, "--method", "dynamic", "--merges", 8,
                 "--max-new-tokens", 3, "--json", check=0)
    assert json.loads(out.stdout)["merges"] == 8
    assert "--merges (an integer >= 1; default 256)" in run_cli("decode", "--list-methods", "--model", "x", check=0).stdout
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe broken")
    assert "not valid UTF-8" in run_cli("dynamic", "-m", tiny_llama_dir, binary, check=1).stderr
