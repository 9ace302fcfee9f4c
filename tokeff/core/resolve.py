"""The one model resolver: what local Hugging Face folder a model argument means.

A model argument may be a built-in name, a `.gguf` file, a local Hugging Face folder (a tokeff
model artifact is verified against its manifest first) or a hub id taken from the local cache.
GGUF files are converted once into a cached safetensors folder keyed by the file's sha256,
because converting costs tens of seconds while loading the cached folder takes about one.
This module imports no torch or transformers until a conversion needs them, so bad arguments
are reported at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tokeff.core import console
from tokeff.core.artifacts import ArtifactWriter, is_artifact, load_artifact
from tokeff.core.builtin_models import BUILTINS, BuiltinModel
from tokeff.core.errors import TokeffError
from tokeff.core.hashing import sha256_file
from tokeff.core.paths import tokeff_home

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GGUF_MAGIC = b"GGUF"


def model_folder(spec: str) -> Path:
    """The local Hugging Face folder behind a model argument (converting a GGUF on first use)."""
    if spec in BUILTINS:
        return _builtin_folder(BUILTINS[spec])
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise TokeffError(f"{spec}: a model file must be a .gguf file")
        return _gguf_folder(path, sha256_file(path), label=str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TokeffError(f"{spec}: folder has no config.json, so it is not a Hugging Face model")
        if is_artifact(path):
            load_artifact(path, kind="model")
        return path
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _hub_folder(spec)
    if "/" in spec or spec.endswith(".gguf"):
        raise TokeffError(f"{spec}: no such file or directory")
    raise TokeffError(
        f"unknown model '{spec}': not a built-in ({', '.join(BUILTINS)}), a local folder, a .gguf file or a hub id"
    )


def tokenizer_folder(spec: str) -> Path:
    """The folder holding a tokenizer argument's tokenizer: a tokenizer-only folder (a tokenizer.json
    and no model; a tokeff tokenizer artifact is verified first), else the model's folder."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        if is_artifact(path):
            load_artifact(path, kind="tokenizer")
        return path
    return model_folder(spec)


def cached_folder(builtin: BuiltinModel) -> Path:
    return tokeff_home() / "models" / builtin.gguf_sha256[:16]


def _builtin_folder(builtin: BuiltinModel) -> Path:
    folder = cached_folder(builtin)
    if is_artifact(folder):
        return _verified_cache(folder)
    gguf = builtin.gguf_path()
    sha = sha256_file(gguf)
    if sha != builtin.gguf_sha256:
        raise TokeffError(f"{gguf}: sha256 {sha[:12]}... does not match the expected {builtin.gguf_sha256[:12]}...")
    return _gguf_folder(gguf, sha, label=builtin.name)


def _gguf_folder(gguf: Path, sha: str, label: str) -> Path:
    folder = tokeff_home() / "models" / sha[:16]
    with _lock(folder.with_suffix(".lock")):
        if is_artifact(folder):
            return _verified_cache(folder)
        _convert_gguf(gguf, sha, label, folder)
    return folder


def _verified_cache(folder: Path) -> Path:
    """Fully verify a cached conversion once; afterwards re-hash only if a file's size or mtime changed.

    Re-hashing a 1 GB model on every load would cost seconds; the stamp lives beside the folder,
    in tokeff's own cache, and any rewrite of a file (which changes its mtime) forces a full check.
    """
    stamp = folder.with_suffix(".verified")
    current = json.dumps(_file_stats(folder), sort_keys=True)
    if stamp.is_file() and stamp.read_text() == current:
        return folder
    try:
        load_artifact(folder, kind="model")
    except TokeffError as exc:
        raise TokeffError(f"{exc} (delete {folder} to convert the model again)") from None
    stamp.write_text(current)
    return folder


def _file_stats(folder: Path) -> dict[str, list[int]]:
    return {
        file.relative_to(folder).as_posix(): [file.stat().st_size, file.stat().st_mtime_ns]
        for file in sorted(folder.rglob("*"))
        if file.is_file()
    }


def _convert_gguf(gguf: Path, sha: str, label: str, folder: Path) -> None:
    with gguf.open("rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise TokeffError(f"{gguf}: not a GGUF file (bad magic bytes)")
    console.info(f"converting {label} from GGUF once; later loads use the cache at {folder}")
    with ArtifactWriter(folder, kind="model", force=True, parameters={"converted_from": "gguf"}) as writer:
        writer.add_input("gguf", label, gguf)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # the GGUF reader raises many types on damaged files
            raise TokeffError(f"{gguf}: corrupt or unsupported GGUF ({first_line(exc)})") from None
        # The weights are already dequantized; without this, save_pretrained refuses a "quantized" model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(writer.path)
        tokenizer.save_pretrained(writer.path)


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:
        raise TokeffError(f"{repo_id}: {first_line(exc)}") from None
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise TokeffError(f"{repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading")
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as exc:
        raise TokeffError(
            f"{repo_id}: not in the local Hugging Face cache and could not be downloaded ({first_line(exc)})"
        ) from None


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialize conversions of one GGUF across processes (parallel test workers, pipelines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
