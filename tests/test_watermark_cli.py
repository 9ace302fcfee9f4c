"""`tokeff watermark ...` and `tokeff decode --watermark` as users run them: outputs, exit codes, bad input."""

import json

import pytest

from helpers import run_cli


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokeff(*args):
    result = run_cli(*args)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def keys(tmp_path_factory, tiny_llama_dir):
    folder = tmp_path_factory.mktemp("keys")  # seeded keys: a random one made the kgw decode test flaky
    for scheme in ("exp", "kgw"):
        run_cli("watermark", "keygen", "--scheme", scheme, "-m", tiny_llama_dir, "-o", folder / scheme,
                "--min-tokens", "6", "--seed", "3", check=0)
    return folder


def test_generate_then_detect_jsonl_and_files(keys, tiny_llama_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be, or not\n\nAll the world's a stage\n")
    out = tmp_path / "marked.jsonl"
    code, stdout, _ = tokeff("watermark", "generate", "--key", keys / "exp", "-m", tiny_llama_dir,
                             "--prompt-file", prompts, "-o", out, "--max-new-tokens", 40, "--ignore-eos", "--seed", 1)
    assert code == 0 and "2 texts" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["To be, or not", "All the world's a stage"]
    assert all(r["tokens"] == 40 and 0 <= r["offset"] < 256 for r in records)
    plain = tmp_path / "plain.txt"
    plain.write_text("Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune.")
    code, stdout, _ = tokeff("watermark", "detect", "--key", keys / "exp", out, plain)
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 3
    # (the random model's tokens re-tokenize differently, so the text keeps only part of the watermark)
    assert lines[0].startswith(f"{out}:1\twatermarked\tp") and lines[1].startswith(f"{out}:2\twatermarked\tp")
    assert lines[2].startswith(f"{plain}\tnot watermarked\tp=")
    code, stdout, _ = tokeff("watermark", "detect", "--key", keys / "exp", out, "--json", "--runs", 99)
    payload = json.loads(stdout)
    assert [r["source"] for r in payload] == [f"{out}:1", f"{out}:2"]
    assert all(r["p_floor"] == pytest.approx(0.01) and r["watermarked"] and r["scheme"] == "exp" for r in payload)
    # the other key does not see this watermark
    code, stdout, _ = tokeff("watermark", "detect", "--key", keys / "kgw", out)
    assert code == 0 and stdout.count("not watermarked") == 2


def test_decode_with_a_watermark(keys, tiny_llama_dir, tmp_path):
    code, stdout, _ = tokeff("decode", "-m", tiny_llama_dir, "--method", "sample", "--watermark",
                             keys / "kgw", "--prompt", "To be", "--max-new-tokens", 40, "--ignore-eos", "--seed", 2, "--json")
    assert code == 0
    text = tmp_path / "out.txt"
    text.write_text(json.loads(stdout)["text"])
    code, stdout, _ = tokeff("watermark", "detect", "--key", keys / "kgw", text, "--json")
    assert code == 0 and json.loads(stdout)[0]["p_value"] < 0.05
    code, _, err = tokeff("decode", "-m", tiny_llama_dir, "--watermark", keys / "exp",
                          "--prompt", "To be")
    assert code == 1 and "exp watermark samples" in err


def test_bad_input(keys, tiny_llama_dir, tiny_gemma_dir, tmp_path):
    empty, short, listed = tmp_path / "empty.txt", tmp_path / "short.txt", tmp_path / "texts.jsonl"
    empty.write_text("  \n")
    short.write_text("To be")
    listed.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": "To be, or not to be, that is the question"}) + "\n")
    code, _, err = tokeff("watermark", "detect", "--key", keys / "exp", empty)
    assert code == 1 and "file is empty" in err
    code, stdout, _ = tokeff("watermark", "detect", "--key", keys / "exp", short, listed)
    assert code == 1  # every text still gets its line; the exit code says some had no verdict
    lines = stdout.strip().splitlines()
    assert "no verdict\ttoo short:" in lines[0] and "the key needs at least 6" in lines[0]
    assert lines[1] == f"{listed}:1\tno verdict\tempty text" and "watermarked" in lines[2]
    # a key that is corrupt, not a key, or for another vocabulary
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("key.safetensors", "tokeff.json"):
        (broken / name).write_bytes((keys / "exp" / name).read_bytes())
    (broken / "key.safetensors").write_bytes(b"\0" * 16)
    code, _, err = tokeff("watermark", "detect", "--key", broken, short)
    assert code == 1 and "failed verification" in err
    code, _, err = tokeff("watermark", "detect", "--key", tiny_llama_dir, short)
    assert code == 1 and "not a tokeff artifact" in err
    code, _, err = tokeff("watermark", "detect", "--key", keys / "exp", short,
                          "--tokenizer", tiny_gemma_dir)
    assert code == 1 and "vocabulary hash differs" in err
    code, _, err = tokeff("watermark", "detect", "--key", keys / "kgw", short, "--runs", 5)
    assert code == 1 and "--runs applies to exp, synthid keys" in err
    code, _, err = tokeff("watermark", "keygen", "-m", tiny_llama_dir, "-o", tmp_path / "k",
                          "--scheme", "kgw", "--length", 64)
    assert code == 1 and "--key-length does not apply to the kgw scheme" in err
    code, _, err = tokeff("watermark", "keygen", "-m", tiny_llama_dir, "-o", keys / "exp")
    assert code == 1 and "already exists" in err


def test_eval_writes_tables_json_and_plots(keys, tiny_llama_dir, tmp_path):
    import tiny_models

    prompts, human = tmp_path / "prompts.txt", tmp_path / "human.txt"
    prompts.write_text("\n".join(f"Scene {index}: to be, or not" for index in range(6)))
    human.write_text(tiny_models.corpus(20_000))
    out = tmp_path / "eval"
    args = ["watermark", "eval", "--key", keys / "exp", "-m", tiny_llama_dir, "--prompts", prompts, "--human", human,
            "--texts", 3, "--null-texts", 3, "--human-texts", 5, "--max-new-tokens", 24, "--lengths", "8,24",
            "--edit-rates", "0,0.2", "--edit-length", 24, "-o", out]
    code, stdout, _ = tokeff(*args)
    assert code == 0 and "90% at" in stdout and "false positives" in stdout
    report = json.loads((out / "eval.json").read_text())
    assert {row["length"] for row in report["power_vs_length"]} == {8, 24}
    assert report["false_positives"]["model"]["texts"] == 3 and report["false_positives"]["human"]["texts"] == 5
    assert report["false_positives"]["all"]["texts"] == 8
    assert (out / "power_vs_length.png").stat().st_size > 1000 and (out / "power_vs_edits.png").is_file()
    code, _, err = tokeff(*args[:-2], "--lengths", "8,99")
    assert code == 1 and "--lengths must be in 1..24" in err


def test_detection_lines_show_the_p_value_floor():
    from tokeff.cli.watermark import _detection_line
    from tokeff.decoding.watermark.detection import Detection

    at_floor = Detection(tokens=50, p_value=1 / 1000, statistic=151.2, p_floor=1 / 1000, watermarked=True)
    assert _detection_line("a.txt", at_floor) == "a.txt\twatermarked\tp<=0.001\tstatistic=151.20\ttokens=50"
    above = Detection(tokens=50, p_value=0.4213, statistic=60.0, p_floor=1 / 1000, watermarked=False)
    assert _detection_line("b.txt", above) == "b.txt\tnot watermarked\tp=0.421\tstatistic=60.00\ttokens=50"


def test_an_edited_key_parameter_fails_verify_and_loading(keys, tiny_llama_dir, tmp_path):
    """`gap` changes no tensor shape; the manifest's digest still catches the edit."""
    import shutil

    from tokeff.core.errors import TokeffError
    from tokeff.decoding.watermark.keys import load_key

    edited = tmp_path / "key"
    shutil.copytree(keys / "exp", edited)
    manifest = json.loads((edited / "tokeff.json").read_text())
    manifest["parameters"]["gap"] += 1.0
    (edited / "tokeff.json").write_text(json.dumps(manifest))
    result = run_cli("verify", edited, check=1)
    assert "tokeff.json was edited" in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(TokeffError, match="tokeff.json was edited"):
        load_key(edited)
