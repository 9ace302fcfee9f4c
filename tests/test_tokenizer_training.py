"""`tokeff tokenizer train|stats`: plain and supertoken byte-level BPE, checked against a plain BPE reference."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from tokenizers import Tokenizer, models

import tiny_models
from helpers import run_cli
from tokeff.core.errors import TokeffError
from tokeff.tokenizers_tools.training import chunk_pre_tokenizer, train_bpe

TEXT = tiny_models.corpus(120_000)
PROBE = "First Citizen:\nBefore we proceed any further, hear me speak 12345 times.\n\n  Don't\tstop caf\u00e9 \u4e2d!"


@pytest.fixture(scope="module")
def supertoken():
    return train_bpe([TEXT], 1200, supertokens=True, stage1_merges=600)


def _model(tokenizer: Tokenizer) -> dict:
    return json.loads(tokenizer.to_str())["model"]


def test_plain_bpe_has_the_asked_size_and_no_multiword_tokens():
    trained = train_bpe([TEXT], 700)
    tokenizer = trained.tokenizer
    assert trained.vocab_size == 700 and trained.stage1_vocab is None
    assert tokenizer.decode(tokenizer.encode(PROBE).ids) == PROBE
    assert not [piece for piece in _model(tokenizer)["vocab"] if "Ġ" in piece.lstrip("Ġ")]


def test_supertokens_resume_from_stage1_and_span_words(supertoken):
    tokenizer = supertoken.tokenizer
    assert supertoken.vocab_size == 1200 and supertoken.stage1_vocab == 1 + 256 + 600
    stage1 = train_bpe([TEXT], supertoken.stage1_vocab)
    merges, stage1_merges = _model(tokenizer)["merges"], _model(stage1.tokenizer)["merges"]
    assert merges[: len(stage1_merges)] == stage1_merges  # stage 2 resumes, it does not retrain
    multiword = [piece for piece in _model(tokenizer)["vocab"] if "Ġ" in piece.lstrip("Ġ")]
    assert len(multiword) > 50
    assert tokenizer.decode(tokenizer.encode(PROBE).ids) == PROBE
    assert len(tokenizer.encode(TEXT).ids) < len(stage1.tokenizer.encode(TEXT).ids)


def test_supertokens_never_cross_digits_punctuation_or_newlines(supertoken):
    splitter = chunk_pre_tokenizer(within_words=False)
    specials = {token.content for token in supertoken.tokenizer.get_added_tokens_decoder().values()}
    for piece in set(_model(supertoken.tokenizer)["vocab"]) - specials:
        text = supertoken.tokenizer.decoder.decode([piece])
        assert len(splitter.pre_tokenize_str(text)) <= 1, piece


def test_stage2_follows_the_bpe_reference(supertoken):
    """Each stage-2 merge is a most frequent adjacent pair of the stage-1-encoded chunks (plain recount)."""
    model = _model(supertoken.tokenizer)
    n1 = supertoken.stage1_vocab
    vocab = {piece: token_id for piece, token_id in model["vocab"].items() if token_id < n1}
    stage1_merges = [tuple(pair) for pair in model["merges"][: len(model["merges"]) - (1200 - n1)]]
    stage1 = Tokenizer(models.BPE(vocab=vocab, merges=stage1_merges))
    stage1.pre_tokenizer = chunk_pre_tokenizer(within_words=False)
    chunks = []
    for line in TEXT.split("\n\n"):
        encoding = stage1.encode(line + "\n\n")
        by_word: dict[int, list[str]] = {}
        for token, word in zip(encoding.tokens, encoding.word_ids):
            by_word.setdefault(word, []).append(token)
        chunks.extend(by_word.values())
    for left, right in model["merges"][len(stage1_merges) : len(stage1_merges) + 25]:
        counts = Counter(pair for chunk in chunks for pair in zip(chunk, chunk[1:]))
        assert counts[(left, right)] == max(counts.values()), (left, right)
        chunks = [_merge(chunk, left, right) for chunk in chunks]


def _merge(chunk: list[str], left: str, right: str) -> list[str]:
    out, i = [], 0
    while i < len(chunk):
        if i + 1 < len(chunk) and chunk[i] == left and chunk[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(chunk[i])
            i += 1
    return out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=200), "byte alphabet"),
        (dict(vocab_size=100_000), "corpus too small"),
        (dict(vocab_size=100_000, supertokens=True, stage1_merges=500), "corpus too small"),
        (dict(vocab_size=1000, supertokens=True, stage1_merges=900), "--stage1 must be in"),
        (dict(vocab_size=1000, stage1_merges=500), "only with --supertokens"),
    ],
)
def test_bad_requests(kwargs, message):
    with pytest.raises(TokeffError, match=message):
        train_bpe([TEXT[:30_000]], **kwargs)


def test_cli_train_verify_load_and_stats(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    train = tmp_path / "train.txt"
    train.write_text(TEXT)
    out = tmp_path / "super"
    result = run_cli("tokenizer", "train", "--text", train, "--vocab", 900, "--supertokens", "-o", out, "--json", check=0)
    payload = json.loads(result.stdout)
    # --stage1 defaults to 3/4 of the 900 - 257 merges
    assert payload["vocab_size"] == 900 and payload["stage1_vocab_size"] == 257 + 482
    assert run_cli("verify", out, check=0).stdout.strip().endswith("ok")
    hf = AutoTokenizer.from_pretrained(out)
    assert len(hf) == 900 and hf.decode(hf(PROBE)["input_ids"]) == PROBE
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == 900
    assert "already exists" in run_cli("tokenizer", "train", "--text", train, "--vocab", 900, "-o", out, check=1).stderr

    probe = tmp_path / "probe.txt"
    probe.write_text(PROBE * 20)
    stats = json.loads(run_cli("tokenizer", "stats", probe, "-t", out, "-t", tiny_llama_dir, "--json", check=0).stdout)
    rows = {row["tokenizer"]: row for row in stats["tokenizers"]}
    ours = rows[str(out)]
    assert ours["lossless"] and ours["bytes"] == len(probe.read_bytes()) and ours["words"] == len((PROBE * 20).split())
    assert ours["multiword_tokens"] > 0 and rows[str(tiny_llama_dir)]["multiword_tokens"] == 0
    assert ours["bytes_per_token"] == pytest.approx(ours["bytes"] / ours["tokens"])

    # a parameter that changes no file (min_frequency) edited in tokeff.json: verify and loading refuse it
    manifest = json.loads((out / "tokeff.json").read_text())
    manifest["parameters"]["min_frequency"] = 1
    (out / "tokeff.json").write_text(json.dumps(manifest))
    failed = run_cli("verify", out, check=1).stderr
    assert "tokeff.json was edited" in failed and failed.count("\n") == 1
    assert "tokeff.json was edited" in run_cli("tokenizer", "stats", probe, "-t", out, check=1).stderr
    manifest["parameters"]["min_frequency"] = 2
    (out / "tokeff.json").write_text(json.dumps(manifest))
    assert run_cli("verify", out, check=0).stdout.strip().endswith("ok")

    (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text().replace('"Ġthe"', '"Ġthe_"', 1))
    assert "tokenizer.json" in run_cli("verify", out, check=1).stderr
    assert "failed verification" in run_cli("tokenizer", "stats", probe, "-t", out, check=1).stderr


def test_kind_check_catches_a_wrong_vocabulary_or_a_lossy_tokenizer(tmp_path, supertoken):
    from tokeff.core.artifacts import read_manifest
    from tokeff.tokenizers_tools.artifact import check_tokenizer_artifact, write_tokenizer

    out = tmp_path / "tok"
    write_tokenizer(supertoken, out, force=False, texts=[], parameters={"vocab_size": 1200}, metrics={})
    manifest = read_manifest(out)
    assert check_tokenizer_artifact(out, manifest) == []
    manifest.parameters["vocab_size"] = 1300
    assert "manifest says 1300" in check_tokenizer_artifact(out, manifest)[0]
    data = json.loads((out / "tokenizer.json").read_text())
    data["decoder"] = None  # byte-level pieces come back as "Ġ" and friends
    (out / "tokenizer.json").write_text(json.dumps(data))
    assert any("losslessly" in problem for problem in check_tokenizer_artifact(out, read_manifest(out)))


def test_cli_rejects_bad_text(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 latin-1 " * 100)
    result = run_cli("tokenizer", "train", "--text", bad, "--vocab", 500, "-o", tmp_path / "out", check=1)
    assert "not valid UTF-8" in result.stderr and result.stderr.count("\n") == 1
    small = tmp_path / "small.txt"
    small.write_text("a tiny corpus " * 10)
    result = run_cli("tokenizer", "train", "--text", small, "--vocab", 5000, "-o", tmp_path / "out", check=1)
    assert "corpus too small" in result.stderr
    assert not (tmp_path / "out").exists()
