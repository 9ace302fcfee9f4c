"""`tokeff ensemble`, `tokeff eval bpb` with several models, `tokeff decode --method byte|heal` as users see them."""

import json
import math

import pytest
from helpers import run_cli

from tokeff.core.models import load_model
from tokeff.decoding.bytelevel import ByteLevelModel, generate_by_tokens
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig

PROMPT = "def fib(n):\n    ret"


def test_ensemble_json_and_stream(tiny_llama_dir, tiny_gemma_dir):
    args = ["ensemble", "-m", tiny_llama_dir, "-m", tiny_gemma_dir, "--prompt", PROMPT, "--max-new-bytes", 8]
    args += ["--ignore-eos", "--weight", 1, "--weight", 3, "--stop", "\\n"]
    payload = json.loads(run_cli(*args, "--json", check=0).stdout)
    assert 1 <= payload["bytes"] <= 8 and payload["weights"] == [0.25, 0.75] and payload["mode"] == "mix"
    assert "\n" not in payload["text"][:-1]  # generation stops right after a newline
    assert set(payload["model_calls"]) == {str(tiny_llama_dir), str(tiny_gemma_dir)}
    baseline = json.loads(run_cli(*args, "--greedy-baseline", "--json", check=0).stdout)
    assert baseline["text"] == payload["text"] and set(baseline["greedy"]) == set(payload["model_calls"])
    assert all(rates["model_calls_per_byte"] > 0 and rates["seconds_per_byte"] > 0 for rates in baseline["greedy"].values())
    auto = json.loads(run_cli(*args[:-6], "--weight", "auto", "--json", check=0).stdout)
    assert auto["auto"] and sum(auto["weights"]) == pytest.approx(1.0)
    streamed = run_cli(*args, check=0)
    assert streamed.stdout.rstrip("\n") == payload["text"].rstrip("\n")
    assert "bytes/s" in streamed.stderr and "bytes/s" not in streamed.stdout


def test_eval_bpb_with_several_models(tiny_llama_dir, tiny_gemma_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("All the world's a stage,\nand all the men\n")
    args = ["eval", "bpb", "-m", tiny_llama_dir, "-m", tiny_gemma_dir, text, "--segment-bytes", 26]
    payload = json.loads(run_cli(*args, "--json", check=0).stdout)
    assert payload["bytes"] == len(text.read_bytes()) and payload["segments"] == 2 and payload["mode"] == "mix"
    assert len(payload["member_bpb"]) == 2 and payload["bpb"] <= sum(payload["member_bpb"]) / 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weight", "1"], "one --weight per --model"),
        (["--weight", "1", "--weight", "-2"], "must be positive"),
        (["--mode", "sum"], "--mode must be one of"),
    ],
)
def test_ensemble_bad_arguments(tiny_llama_dir, tiny_gemma_dir, args, message):
    for command in (["ensemble", "--prompt", "x"], ["eval", "bpb", "pyproject.toml"]):
        result = run_cli(*command, "-m", tiny_llama_dir, "-m", tiny_gemma_dir, *args)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("method", [["byte"], ["byte", "--byte-greedy"], ["heal"]])
def test_decode_methods_from_the_command_line(tiny_gemma_dir, method):
    args = ["--method", *method, "--prompt", PROMPT, "--max-new-tokens", 6, "--ignore-eos", "--json"]
    payload = json.loads(run_cli("decode", "-m", tiny_gemma_dir, *args, check=0).stdout)
    assert payload["method"] == method[0] and payload["tokens"] == 6 and payload["forward_passes"] >= 1
    if method[1:]:  # greedy over bytes: the same bytes as a one-model byte-level ensemble picks
        ensemble = run_cli("ensemble", "-m", tiny_gemma_dir, "--prompt", PROMPT, "--max-new-bytes", 6, "--ignore-eos", "--json",
                           check=0)
        assert payload["text"] == json.loads(ensemble.stdout)["text"] and payload["steps"] == "bytes"
    elif method == ["byte"]:  # a cover, then whole tokens: the library's greedy over tokens
        model = ByteLevelModel(load_model(str(tiny_gemma_dir), device="cpu"), text=PROMPT)
        data = generate_by_tokens(model, TokenChooser(DecodeConfig()), 6, stop_at_end=False)
        assert payload["text"] == data.decode("utf-8", "replace") and payload["steps"] == "tokens"


def test_heal_first_token_is_the_best_token_extending_the_backed_up_one(tiny_gemma_dir):
    """Brute force over the vocabulary: heal's first token is the argmax, after the prompt minus its
    last token, among the tokens whose text starts with that last token's text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    payload = json.loads(run_cli("decode", "-m", tiny_gemma_dir, "--method", "heal", "--prompt", PROMPT,
                                 "--max-new-tokens", 3, "--ignore-eos", "--json", check=0).stdout)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir).eval()
    ids = tokenizer(PROMPT)["input_ids"]
    last = tokenizer.decode([ids[-1]])
    allowed = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith(last)]
    assert payload["healed_token"] == ids[-1] and len(allowed) > 1
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0, -1]
    assert payload["token_ids"][0] == allowed[int(logits[allowed].argmax())]
    assert (last + payload["text"]).startswith(tokenizer.decode([payload["token_ids"][0]]))


def test_eval_bpb_byte_level_auto_and_one_model(tiny_llama_dir, tiny_gemma_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("All the world's a stage,\nand all the men and women merely players\n")
    args = ["eval", "bpb", "-m", tiny_llama_dir, "-m", tiny_gemma_dir, text, "--segment-bytes", 30, "--context-bytes", 20]
    auto = json.loads(run_cli(*args, "--weight", "auto", "--json", check=0).stdout)
    assert auto["weights"] == "auto" and auto["scoring"] == "batched" and auto["context_bytes"] == 20
    assert auto["bpb"] <= min(auto["member_bpb"]) + math.log2(9) / auto["bytes"] + 1e-9  # log2(pools) bits over the text
    incremental = json.loads(run_cli(*args, "--weight", "auto", "--incremental", "--json", check=0).stdout)
    assert incremental["bpb"] == pytest.approx(auto["bpb"], abs=1e-4) and incremental["scoring"] == "incremental"
    solo = json.loads(run_cli("eval", "bpb", "-m", tiny_gemma_dir, text, "--byte-level", "--segment-bytes", 30,
                              "--context-bytes", 20, "--json", check=0).stdout)
    assert solo["member_bpb"] == [pytest.approx(auto["member_bpb"][1])] and solo["bpb"] == pytest.approx(solo["member_bpb"][0])
    bad = run_cli("eval", "bpb", "-m", tiny_llama_dir, "-m", tiny_gemma_dir, text, "--weight", "auto", "--mode", "median")
    assert bad.returncode == 1 and "--mode must be" in bad.stderr
