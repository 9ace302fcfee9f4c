"""The command line as users and CI jobs see it: stdout, stderr, exit codes."""

import json
import math
import pytest

from helpers import run_cli


def test_top_level_help_lists_every_command_without_importing_any():
    """`tokeff --help` must stay fast: no command module, so no torch, is imported to list them."""
    import subprocess
    import sys

    probe = (
        "import sys, contextlib, io; from tokeff.cli.app import COMMANDS, main; sys.argv = ['tokeff', '--help']\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit): main()\n"
        "assert all(name in out.getvalue() for name in COMMANDS), out.getvalue()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') or m.startswith('tokeff.cli.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['tokeff.cli.app']"


def test_every_listed_command_builds_and_shows_its_help():
    from tokeff.cli.app import COMMANDS

    for name in COMMANDS:
        assert f"tokeff {name} [OPTIONS]" in " ".join(run_cli(name, "--help", check=0).stdout.split())


def test_help_and_methods():
    assert "decode" in run_cli("--help", check=0).stdout
    listed = run_cli("decode", "--list-methods", "--model", "x", check=0).stdout
    assert "greedy" in listed and "sample" in listed


def test_decode_json_and_streaming(tiny_llama_dir):
    out = run_cli("decode", "-m", tiny_llama_dir, "--prompt", "To be", "--max-new-tokens", 5, "--ignore-eos", "--json", check=0)
    payload = json.loads(out.stdout)
    assert payload["tokens"] == 5 and len(payload["token_ids"]) == 5
    assert {"text", "seconds", "tokens_per_s", "forward_passes", "peak_kv_bytes"} <= set(payload)
    streamed = run_cli("decode", "-m", tiny_llama_dir, "--prompt", "To be", "--max-new-tokens", 5, "--ignore-eos", check=0)
    assert streamed.stdout.strip() == payload["text"].strip()
    assert "tokens/s" in streamed.stderr and "tokens/s" not in streamed.stdout


def test_eval_bpb_json(tiny_gemma_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tmp_path / "t.txt"
    text.write_text("All the world's a stage, and all the men and women merely players.\n" * 4)
    payload = json.loads(run_cli("eval", "bpb", "-m", tiny_gemma_dir, text, "--context", 512, "--json", check=0).stdout)
    assert payload["bytes"] == len(text.read_bytes())
    # brute force: one forward pass over BOS + the text's tokens, NLLs summed in bits, over the bytes
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32).eval()
    ids = tokenizer(text.read_text(), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([[tokenizer.bos_token_id, *ids]])).logits[0, :-1]
    nats = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids), reduction="sum").item()
    assert payload["tokens"] == len(ids)
    assert payload["bpb"] == pytest.approx(nats / math.log(2) / payload["bytes"], rel=1e-4)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["eval", "bpb", "-m", "nope", "pyproject.toml"], 1, "unknown model 'nope'"),
        (["eval", "bpb", "-m", "smollm2-135m", "/no/such.txt"], 1, "no such file"),
        (["decode", "--model", "x", "--bogus"], 2, "No such option"),
        (["decode", "--model", "nope", "--prompt", "x", "--method", "telepathy"], 1, "unknown decode method"),
        (["verify", "/no/such/artifact"], 1, "no such artifact"),
        (["models", "pull", "gpt-9"], 1, "unknown built-in model"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(args, code, message):
    result = run_cli(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if code == 1:
        assert result.stderr.count("\n") == 1


def test_eval_rejects_non_utf8_and_empty(tiny_llama_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 latin-1")
    assert "not valid UTF-8" in run_cli("eval", "bpb", "-m", tiny_llama_dir, bad, check=1).stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in run_cli("eval", "bpb", "-m", tiny_llama_dir, empty, check=1).stderr


def test_corrupt_and_truncated_gguf(tmp_path):
    truncated = tmp_path / "model.gguf"
    truncated.write_bytes(b"GGUF" + bytes(64))
    result = run_cli("models", "info", truncated, check=1)
    assert "corrupt or unsupported GGUF" in result.stderr
    assert not list((tmp_path.parent).glob("**/.*.partial-*"))


def test_inspect_and_verify_artifact(tmp_path):
    import torch

    from tokeff.core.artifacts import ArtifactWriter

    out = tmp_path / "art"
    with ArtifactWriter(out, kind="test", command=["tokeff", "test"]) as writer:
        writer.save_tensors("t.safetensors", {"x": torch.ones(4)})
        writer.metrics["bpb"] = 1.25
    assert run_cli("verify", out, check=0).stdout.strip().endswith("ok")
    manifest = json.loads(run_cli("inspect", out, "--json", check=0).stdout)
    assert manifest["kind"] == "test" and manifest["metrics"] == {"bpb": 1.25}
    assert "bpb" in run_cli("inspect", out, check=0).stdout
    (out / "t.safetensors").write_bytes((out / "t.safetensors").read_bytes()[:-1] + b"\x01")
    assert "modified" in run_cli("verify", out, check=1).stderr
    report = json.loads(run_cli("verify", out, "--json", check=1).stdout)
    assert report["ok"] is False and report["problems"]
