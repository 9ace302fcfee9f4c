"""Shared fixtures: tiny Llama (byte-level BPE) and Gemma3 (SentencePiece) model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tiny_models


@pytest.fixture(autouse=True)
def _isolated_home(request, tmp_path_factory, monkeypatch):
    """Unit tests get a private TOKEFF_HOME; slow tests use the real cache of converted built-ins."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("TOKEFF_HOME", str(tmp_path_factory.mktemp("tokeff-home")))


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    return tiny_models.byte_level_tokenizer()


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    return tiny_models.sentencepiece_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, byte_level_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    return tiny_models.save(tiny_models.tiny_llama(byte_level_tokenizer), byte_level_tokenizer, folder)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, sentencepiece_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gemma")
    return tiny_models.save(tiny_models.tiny_gemma3(sentencepiece_tokenizer), sentencepiece_tokenizer, folder)


@pytest.fixture(params=["llama", "gemma"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gemma_dir) -> Path:
    """Each test using this runs on both tiny families."""
    return tiny_llama_dir if request.param == "llama" else tiny_gemma_dir


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def builtin_model():
    """Loads each real built-in model once per session: `builtin_model("smollm2-135m")`. Do not mutate it."""
    from tokeff.core.models import load_model

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load_model(name, device="cpu")
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on a shared 2-core machine run many times faster on one torch thread than on two
    that fight other processes (measured: smollm2 generation 12 s vs 200 s under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
