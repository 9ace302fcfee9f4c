"""bf16 end to end on a tiny untied, multi-shard bf16 checkpoint: eval bpb, decode, kvquant calibrate
and the transplant's scale search compute in bf16 (no silent float32 copy of the weights)."""

import json

import pytest
import torch
from safetensors import safe_open

import tiny_models
from helpers import run_cli
from tokeff.surgery.transplant import scale

TEXT = (tiny_models.SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3000]


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, byte_level_tokenizer):
    """The tiny Llama with an untied head, saved in bf16 as several shards with an index."""
    torch.manual_seed(0)
    config = tiny_models.LlamaConfig(**tiny_models._tiny_sizes(byte_level_tokenizer), num_key_value_heads=2,
                                     tie_word_embeddings=False)
    model = tiny_models.LlamaForCausalLM(config).eval().to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("tiny-bf16")
    model.save_pretrained(folder, max_shard_size="60KB")
    byte_level_tokenizer.save_pretrained(folder)
    assert len(list(folder.glob("model-*.safetensors"))) >= 3
    return folder


@pytest.fixture
def linear_dtypes(monkeypatch):
    """Every (weight dtype, input dtype) an nn.Linear sees while the test runs."""
    seen = set()
    forward = torch.nn.Linear.forward

    def recording(self, x):
        seen.add((self.weight.dtype, x.dtype))
        return forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    return seen


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


BF16 = {(torch.bfloat16, torch.bfloat16)}


def test_eval_bpb_in_bf16(bf16_dir, text_file, linear_dtypes):
    bf16 = json.loads(run_cli("eval", "bpb", "-m", bf16_dir, text_file, "--dtype", "bfloat16", "--context", 128,
                              "--json", check=0).stdout)
    assert linear_dtypes == BF16
    linear_dtypes.clear()
    upcast = json.loads(run_cli("eval", "bpb", "-m", bf16_dir, text_file, "--dtype", "float32", "--context", 128,
                                "--json", check=0).stdout)
    assert linear_dtypes == {(torch.float32, torch.float32)}
    # the same weights: bf16 arithmetic moves the figure a little, and does move it
    assert bf16["bpb"] == pytest.approx(upcast["bpb"], rel=0.02) and bf16["bpb"] != upcast["bpb"]


def test_decode_in_bf16(bf16_dir, linear_dtypes):
    out = json.loads(run_cli("decode", "-m", bf16_dir, "--dtype", "bfloat16", "--prompt", "To be", "--max-new-tokens",
                             6, "--ignore-eos", "--json", check=0).stdout)
    assert linear_dtypes == BF16 and out["tokens"] == 6


def test_kvquant_calibrate_in_bf16(bf16_dir, text_file, tmp_path, linear_dtypes):
    result = run_cli("kvquant", "calibrate", "-m", bf16_dir, "--dtype", "bfloat16", "--text", text_file, "-o",
                     tmp_path / "kv", "--bits", 3, "--samples", 2, "--context", 64, "--kv-residual", 8, "--json", check=0)
    assert linear_dtypes == BF16
    assert 0 < json.loads(result.stdout)["key_error"] < 1


def test_transplant_scale_search_in_bf16(bf16_dir, tiny_gemma_dir, tmp_path, monkeypatch, linear_dtypes):
    """--new-scale auto on the bf16 model: the base runs in bf16, the head's logits are bf16 until
    each block is upcast, and the output keeps bf16, the shard layout, the index and an untied head."""
    blocks = []
    losses = scale._losses
    monkeypatch.setattr(scale, "_losses", lambda logits, *rest: blocks.append(logits.dtype) or losses(logits, *rest))
    out = tmp_path / "out"
    payload = json.loads(run_cli("transplant", bf16_dir, "--donor", tiny_gemma_dir, "-o", out, "--k", 4,
                                 "--new-scale", "auto", "--json", check=0).stdout)
    assert payload["new_scale"]["text"].startswith("sampled from")
    assert blocks and set(blocks) == {torch.bfloat16}
    assert (torch.bfloat16, torch.bfloat16) in linear_dtypes and (torch.float32, torch.float32) not in linear_dtypes
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {path.name for path in bf16_dir.glob("model-*.safetensors")}
    dtypes = set()
    for shard in set(index["weight_map"].values()):
        with safe_open(out / shard, "pt") as stream:
            dtypes |= {stream.get_slice(name).get_dtype() for name in stream.keys()}
    assert dtypes == {"BF16"}
    with safe_open(out / index["weight_map"]["lm_head.weight"], "pt") as stream:
        head = stream.get_tensor("lm_head.weight")
    with safe_open(out / index["weight_map"]["model.embed_tokens.weight"], "pt") as stream:
        embed = stream.get_tensor("model.embed_tokens.weight")
    assert head.shape == embed.shape and not torch.equal(head, embed)  # the untied head got its own rows
