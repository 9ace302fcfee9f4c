import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from tokeff.core.artifacts import ArtifactWriter, load_artifact, read_manifest, verify_artifact
from tokeff.core.errors import TokeffError


def _write(out, force=False, **tensors):
    corpus = out.parent / "corpus.txt"
    corpus.write_text("some text")
    with ArtifactWriter(out, kind="test", force=force, parameters={"k": 3}) as writer:
        writer.add_input("text", "corpus.txt", corpus)
        writer.save_tensors("weights.safetensors", tensors or {"w": torch.arange(12.0).reshape(3, 4)})
        writer.metrics["score"] = 0.5
    return out


def test_writer_produces_verified_artifact_with_manifest(tmp_path):
    out = _write(tmp_path / "art")
    manifest = read_manifest(out)
    assert manifest.kind == "test"
    assert manifest.parameters == {"k": 3} and manifest.metrics == {"score": 0.5}
    assert manifest.input("text")["sha256"] == hashlib.sha256(b"some text").hexdigest()
    assert set(manifest.files) == {"weights.safetensors"}
    assert verify_artifact(out) == []
    assert torch.equal(load_file(out / "weights.safetensors")["w"], torch.arange(12.0).reshape(3, 4))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out, kind="test") as writer:
            writer.save_tensors("a.safetensors", {"x": torch.ones(2)})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_unless_forced(tmp_path):
    out = _write(tmp_path / "art")
    with pytest.raises(TokeffError, match="already exists"):
        _write(out)
    assert verify_artifact(out) == []
    _write(out, force=True, w=torch.zeros(2))
    assert torch.equal(load_file(out / "weights.safetensors")["w"], torch.zeros(2))


def test_verify_catches_a_tampered_tensor(tmp_path):
    out = _write(tmp_path / "art")
    data = bytearray((out / "weights.safetensors").read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last float
    (out / "weights.safetensors").write_bytes(bytes(data))
    problems = verify_artifact(out)
    assert problems == ["weights.safetensors was modified (sha256 mismatch)"]
    with pytest.raises(TokeffError, match="modified"):
        load_artifact(out)


def test_verify_catches_missing_extra_and_truncated_files(tmp_path):
    out = _write(tmp_path / "art")
    (out / "stray.bin").write_bytes(b"x")
    assert any("not listed" in p for p in verify_artifact(out))
    (out / "stray.bin").unlink()
    (out / "weights.safetensors").write_bytes(b"short")
    assert any("bytes" in p for p in verify_artifact(out))
    (out / "weights.safetensors").unlink()
    assert verify_artifact(out) == ["weights.safetensors is missing"]


def test_corrupt_manifest_and_wrong_kind(tmp_path):
    out = _write(tmp_path / "art")
    with pytest.raises(TokeffError, match="expected 'model'"):
        load_artifact(out, kind="model")
    (out / "tokeff.json").write_text("{not json")
    with pytest.raises(TokeffError, match="corrupt manifest"):
        read_manifest(out)
    with pytest.raises(TokeffError, match="not a tokeff artifact"):
        read_manifest(tmp_path)


def test_model_checks_catch_vocab_larger_than_embeddings(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    good = tmp_path / "good"
    with ArtifactWriter(good, kind="model") as writer:
        model.save_pretrained(writer.path)
        tokenizer.save_pretrained(writer.path)
    assert verify_artifact(good) == []

    bad = tmp_path / "bad"
    with ArtifactWriter(bad, kind="model") as writer:
        model.save_pretrained(writer.path)
        tokenizer.save_pretrained(writer.path)
        config = json.loads((writer.path / "config.json").read_text())
        config["vocab_size"] -= 8  # tokenizer ids now index past the declared rows
        (writer.path / "config.json").write_text(json.dumps(config))
    problems = verify_artifact(bad)
    assert any("embed_tokens.weight has shape" in p for p in problems)
    assert any("tokenizer has token id" in p for p in problems)


@pytest.mark.parametrize("edit", [
    lambda m: m["parameters"].update(k=4),
    lambda m: m["inputs"][0].update(sha256="cd" * 32),
    lambda m: m["metrics"].update(score=0.25),
    lambda m: m.pop("digest"),
])
def test_verify_catches_an_edited_manifest(tmp_path, edit):
    out = _write(tmp_path / "art")
    manifest = json.loads((out / "tokeff.json").read_text())
    edit(manifest)
    (out / "tokeff.json").write_text(json.dumps(manifest))
    assert verify_artifact(out) == [
        "tokeff.json was edited (its digest does not match its parameters, inputs, metrics and file hashes)"
    ]
    with pytest.raises(TokeffError, match="failed verification: tokeff.json was edited"):
        load_artifact(out)


def test_version_1_manifests_without_digest_still_verify(tmp_path):
    out = _write(tmp_path / "art")
    manifest = json.loads((out / "tokeff.json").read_text())
    manifest.pop("digest")
    manifest["format_version"] = 1
    (out / "tokeff.json").write_text(json.dumps(manifest))
    assert verify_artifact(out) == []


def test_input_fingerprint_of_a_folder_follows_its_files(tmp_path):
    from tokeff.core.artifacts import input_fingerprint

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    first = input_fingerprint(folder)
    (folder / "a.txt").write_text("b")
    assert input_fingerprint(folder) != first
    art = _write(tmp_path / "art")  # an artifact: from its manifest's file hashes, equal to hashing the files
    listing = "\n".join(f"{name} {entry['sha256']}" for name, entry in read_manifest(art).files.items())
    assert input_fingerprint(art) == hashlib.sha256(listing.encode()).hexdigest()
