import pytest
import torch

from tokeff.core.artifacts import ArtifactWriter
from tokeff.core.errors import TokeffError
from tokeff.core.models import describe_model, load_model
from tokeff.core.resolve import model_folder


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("./missing/folder", "no such file or directory"),
        ("missing.gguf", "no such file or directory"),
    ],
)
def test_resolver_rejects_unknown_specs(spec, message):
    with pytest.raises(TokeffError, match=message):
        model_folder(spec)


def test_resolver_rejects_bad_local_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TokeffError, match="must be a .gguf file"):
        model_folder(str(tmp_path / "weights.bin"))
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(TokeffError, match="not a GGUF file"):
        model_folder(str(tmp_path / "fake.gguf"))
    with pytest.raises(TokeffError, match="no config.json"):
        model_folder(str(tmp_path))


def test_hub_id_missing_from_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(TokeffError, match="not in the local Hugging Face cache"):
        model_folder("some-org/some-model")


def test_loads_a_local_folder(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    assert lm.folder == tiny_model_dir
    assert lm.model.dtype == torch.float32
    assert lm.tokenizer.eos_token_id in lm.eos_token_ids
    facts = describe_model(str(tiny_model_dir))
    assert facts["vocab_size"] == facts["tokenizer_size"] == len(lm.tokenizer)
    assert facts["parameters"] == sum(p.numel() for p in lm.model.parameters())
    assert facts["tied_embeddings"] is True


def test_tampered_model_artifact_is_refused(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "artifact"
    with ArtifactWriter(out, kind="model") as writer:
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(writer.path)
        AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(writer.path)
    assert model_folder(str(out)) == out
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(TokeffError, match="modified"):
        load_model(str(out))


def test_unsupported_dtype_and_device():
    from tokeff.core.device import resolve_device, resolve_dtype

    with pytest.raises(TokeffError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))
    with pytest.raises(TokeffError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TokeffError, match="no CUDA"):
            resolve_device("cuda")
