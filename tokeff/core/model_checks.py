"""Consistency checks of a Hugging Face model folder: tensor shapes against config, tokenizer against vocab."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape, read from the safetensors headers alone (no weights are loaded)."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():
                shapes[name] = list(handle.get_slice(name).get_shape())
    return shapes


def text_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return config.get("text_config", config)


def tokenizer_max_id(folder: Path) -> int | None:
    """Largest token id the tokenizer can emit (base vocabulary and added tokens)."""
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    vocab = data.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [token["id"] for token in data.get("added_tokens", [])]
    return max(ids) if ids else None


def check_model_folder(folder: Path) -> list[str]:
    problems: list[str] = []
    try:
        config = text_config(folder)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"config.json is not valid JSON ({exc})"]
    vocab_size, hidden = config.get("vocab_size"), config.get("hidden_size")
    shapes = tensor_shapes(folder)
    embeddings = [name for name in shapes if name.endswith(_EMBEDDING_SUFFIXES)]
    if not embeddings:
        return ["no input-embedding tensor found"]
    for name in embeddings + [name for name in shapes if name.endswith("lm_head.weight")]:
        if shapes[name] != [vocab_size, hidden]:
            problems.append(f"{name} has shape {shapes[name]}, config says [{vocab_size}, {hidden}]")
    tied = config.get("tie_word_embeddings", True)
    if not tied and not any(name.endswith("lm_head.weight") for name in shapes):
        problems.append("config says untied embeddings but there is no lm_head.weight")
    max_id = tokenizer_max_id(folder)
    if max_id is not None and vocab_size is not None and max_id >= vocab_size:
        problems.append(f"tokenizer has token id {max_id} but the model has only {vocab_size} embedding rows")
    return problems
