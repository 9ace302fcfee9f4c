"""tokeff transplant --heal on the tiny models: only new rows move, the loss falls, the manifest's
held-out bits per byte are what the written model scores, bad input writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file
from tiny_models import corpus, untied_copy
from transformers import AutoTokenizer

from tokeff.core.errors import TokeffError
from tokeff.surgery.transplant import heal
from tokeff.surgery.transplant.pipeline import TransplantOptions, transplant
from tokeff.surgery.transplant.vocab import match_vocabularies


@pytest.fixture(scope="module")
def heal_text(tmp_path_factory):
    """Five chunks: four to heal on (one batch, the same every step) and one held out."""
    path = tmp_path_factory.mktemp("heal") / "heal.txt"
    text = corpus(2300)[:2300]
    path.write_text(text)
    assert len(heal._chunks(text)) == 5
    return path


@pytest.fixture(scope="module")
def untied_llama_dir(tmp_path_factory, tiny_llama_dir):
    return untied_copy(tiny_llama_dir, tmp_path_factory.mktemp("untied") / "model")


def _options(**heal_options) -> TransplantOptions:
    return TransplantOptions(method="subword", new_scale=1.0, **heal_options)


@pytest.mark.parametrize("tied", [True, False])
def test_heal_changes_only_new_rows(tmp_path, tiny_llama_dir, untied_llama_dir, tiny_gemma_dir, heal_text, tied):
    base = tiny_llama_dir if tied else untied_llama_dir
    transplant(str(base), str(tiny_gemma_dir), tmp_path / "plain", _options())
    result = transplant(str(base), str(tiny_gemma_dir), tmp_path / "healed", _options(heal=True, heal_steps=8, heal_text=str(heal_text)))
    plain, healed = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("plain", "healed"))
    assert plain.keys() == healed.keys() and ("lm_head.weight" in healed) == (not tied)
    match = match_vocabularies(AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(tiny_gemma_dir))
    new = torch.from_numpy(match.estimated_ids)
    assert result["heal"]["rows"] == len(new) > 0
    for name, tensor in healed.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            untouched = torch.ones(len(tensor), dtype=torch.bool)
            untouched[new] = False
            assert torch.equal(tensor[untouched], plain[name][untouched]), name  # shared, special and padding rows
            assert (tensor[new] != plain[name][new]).any(dim=1).float().mean() > 0.5, name
        else:
            assert torch.equal(tensor, plain[name]), name  # the body is frozen


def test_heal_loss_falls_and_manifest_bpb_is_what_the_model_scores(tmp_path, tiny_gemma_dir, tiny_llama_dir, heal_text):
    out = tmp_path / "out"
    payload = json.loads(run_cli("transplant", tiny_gemma_dir, "--donor", tiny_llama_dir, "-o", out, "--method", "subword",
                                 "--heal", "--heal-steps", 12, "--heal-text", heal_text, "--json", check=0).stdout)
    report = payload["heal"]
    assert report["steps"] == len(report["loss"]) == 12 and report["chunks"] == 4
    assert report["loss"][-1] < min(report["loss"][:3])  # the same batch every step
    held = report["held_out"]
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(heal_text.read_text()[held["from_char"]:])
    assert held["bytes"] == len(held_out.read_bytes())

    def bpb(model) -> dict:
        return json.loads(run_cli("eval", "bpb", "-m", model, held_out, "--context", held["context"], "--json", check=0).stdout)

    assert bpb(out)["bpb"] == pytest.approx(held["after_bpb"], rel=1e-6)
    assert bpb(tiny_gemma_dir)["bpb"] == pytest.approx(held["base_bpb"], rel=1e-6)
    plain = tmp_path / "plain"
    transplant(str(tiny_gemma_dir), str(tiny_llama_dir), plain, TransplantOptions(method="subword"))
    assert bpb(plain)["bpb"] == pytest.approx(held["before_bpb"], rel=1e-6)
    assert held["after_bpb"] != held["before_bpb"]
    manifest = json.loads((out / "tokeff.json").read_text())
    assert manifest["metrics"]["heal"]["loss"] == report["loss"] and report["plot"] in manifest["files"]
    assert (out / report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli("verify", out, check=0).stdout.strip().endswith("ok")


def test_heal_bad_input_writes_nothing(tmp_path, tiny_llama_dir, tiny_gemma_dir, heal_text, monkeypatch):
    out = tmp_path / "out"

    def fails(match: str, **options) -> None:
        with pytest.raises(TokeffError, match=match):
            transplant(str(tiny_llama_dir), str(tiny_gemma_dir), out, _options(**options))
        assert not out.exists() and not list(tmp_path.glob(".out*"))

    fails("--heal-steps must be at least 1", heal=True, heal_steps=0)
    fails("only serve --heal", heal_steps=5)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 400)
    fails("not valid UTF-8", heal=True, heal_text=str(latin1))
    short = tmp_path / "short.txt"
    short.write_text("First Citizen: before we proceed any further, hear me speak.")
    fails("not more than one chunk", heal=True, heal_text=str(short))
    monkeypatch.setattr(heal, "_available_bytes", lambda device: 2**20)
    fails(r"--heal needs up to about \d+\.\d GiB .* and 0\.0 GiB are available", heal=True, heal_text=str(heal_text))
    result = run_cli("transplant", tiny_llama_dir, "--donor", tiny_gemma_dir, "-o", out, "--heal", "--heal-steps", 0)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_heal_default_budget_stops_at_steps_or_seconds(tmp_path, tiny_llama_dir, tiny_gemma_dir, heal_text, monkeypatch):
    monkeypatch.setattr(heal, "DEFAULT_STEPS", 3)
    result = transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "a", _options(heal=True, heal_text=str(heal_text)))
    assert result["heal"]["steps"] == len(result["heal"]["loss"]) == 3
    monkeypatch.setattr(heal, "DEFAULT_FIT_SECONDS", 0.0)
    result = transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "b", _options(heal=True, heal_text=str(heal_text)))
    assert result["heal"]["steps"] == 1  # one step always runs; the next would start past the budget
