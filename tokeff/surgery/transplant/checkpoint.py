"""Lazy access to a model's safetensors shards: read single tensors, rewrite shard by shard.

Only the embedding matrices are ever held whole; every other tensor is copied one shard at a
time, so the checkpoint is never in memory all at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from tokeff.core.artifacts import ArtifactWriter
from tokeff.core.errors import TokeffError
from tokeff.core.model_checks import text_config

INDEX_NAME = "model.safetensors.index.json"
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
_LM_HEAD_SUFFIX = "lm_head.weight"


class Checkpoint:
    """The safetensors files of a model folder, indexed by tensor name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        files = sorted(path.name for path in folder.glob("*.safetensors"))
        if not files:
            raise TokeffError(f"{folder}: no .safetensors weights (pickled .bin checkpoints are not read, for safety)")
        self.files = files
        self.file_of: dict[str, str] = {}
        self.shapes: dict[str, list[int]] = {}
        for name in files:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    self.file_of[key] = name
                    self.shapes[key] = list(handle.get_slice(key).get_shape())

    def read(self, name: str) -> torch.Tensor:
        with safe_open(str(self.folder / self.file_of[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    def write(self, writer: ArtifactWriter, replacements: dict[str, torch.Tensor]) -> None:
        """Copy every shard into the artifact, swapping in `replacements`; one shard in memory at a time."""
        total = 0
        for file in self.files:
            with safe_open(str(self.folder / file), framework="pt") as handle:
                metadata = handle.metadata() or {"format": "pt"}
                tensors = {key: replacements.get(key, None) for key in handle.keys()}
                for key, tensor in tensors.items():
                    if tensor is None:
                        tensors[key] = handle.get_tensor(key)
            total += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
            writer.save_tensors(file, tensors, metadata)
            del tensors
        index = self.folder / INDEX_NAME
        if index.is_file():
            data = json.loads(index.read_text())
            data.setdefault("metadata", {})["total_size"] = total
            (writer.path / INDEX_NAME).write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class EmbeddingLayout:
    """Where a causal LM keeps its per-token rows."""

    architecture: str
    embed: str
    lm_head: str | None  # a stored output matrix (None: tied and not stored)
    tied: bool
    rows: int
    hidden: int

    @property
    def names(self) -> list[str]:
        return [self.embed] + ([self.lm_head] if self.lm_head else [])


def embedding_layout(folder: Path, checkpoint: Checkpoint) -> EmbeddingLayout:
    """The embedding tensors of a supported model, or an error naming what is not supported."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    full_config = json.loads((folder / "config.json").read_text())
    architecture = (full_config.get("architectures") or ["?"])[0]
    if architecture not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise TokeffError(
            f"unsupported architecture {architecture} in {folder}: transplant supports decoder-only causal LMs "
            "(a *ForCausalLM class of transformers)"
        )
    embeds = [name for name in checkpoint.shapes if name.endswith(_EMBED_SUFFIXES)]
    if len(embeds) != 1:
        raise TokeffError(f"unsupported architecture {architecture}: expected one input embedding, found {embeds or 'none'}")
    embed = embeds[0]
    rows, hidden = checkpoint.shapes[embed]
    heads = [name for name in checkpoint.shapes if name.endswith(_LM_HEAD_SUFFIX)]
    tied = bool(text_config(folder).get("tie_word_embeddings", full_config.get("tie_word_embeddings", True)))
    lm_head = heads[0] if heads else None
    if not tied and lm_head is None:
        raise TokeffError(f"{folder}: config says untied embeddings but there is no {_LM_HEAD_SUFFIX}")
    # Other per-token tables (Gemma 3n's per-layer embeddings, extra heads) would index past their rows.
    others = [
        name for name, shape in checkpoint.shapes.items()
        if name not in (embed, lm_head) and shape[:1] == [rows] and ("embed" in name.lower() or name.endswith("head.weight"))
    ]
    if others:
        raise TokeffError(
            f"unsupported architecture {architecture}: {others[0]} also has one row per token, "
            "and transplant only knows how to rebuild the input embedding and lm_head"
        )
    return EmbeddingLayout(architecture=architecture, embed=embed, lm_head=lm_head, tied=tied, rows=rows, hidden=hidden)
