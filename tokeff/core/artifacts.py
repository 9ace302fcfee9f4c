"""The one artifact writer and reader.

Every offline command writes a directory: safetensors tensors (or a Hugging Face model folder)
plus a `tokeff.json` manifest recording the tokeff version, command line, inputs with sha256,
parameters, measured metrics and the sha256 of every file. Writing goes to a temporary sibling
folder that is renamed into place at the end, so a failed or interrupted run leaves nothing
half-written at the output path.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

import tokeff
from tokeff.core import interrupt
from tokeff.core.errors import TokeffError
from tokeff.core.hashing import sha256_bytes, sha256_file

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "tokeff.json"
FORMAT = "tokeff-artifact"
FORMAT_VERSION = 2  # 2: the manifest records `digest`, the sha256 of its own canonical JSON
_READABLE_VERSIONS = (1, 2)  # version 1 (no digest) is still read: caches converted before version 2

# Extra checks for artifact kinds beyond hashes and model shapes: kind -> "module:function",
# imported only when such an artifact is verified. The function takes (path, manifest) and
# returns a list of problems.
KIND_CHECKS: dict[str, str] = {
    "watermark-key": "tokeff.decoding.watermark.keys:check_key_artifact",
    "watermark-detector": "tokeff.decoding.watermark.bayesian:check_detector_artifact",
    "kvquant": "tokeff.kvquant.artifact:check_artifact",
    "tokenizer": "tokeff.tokenizers_tools.artifact:check_tokenizer_artifact",
}


@dataclass
class Manifest:
    kind: str
    tokeff_version: str = tokeff.__version__
    created: str = ""
    command: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    digest: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def content_digest(self) -> str:
        """sha256 of every field but the digest itself, so an edited parameter, input, metric or file
        hash in tokeff.json is caught even when it changes no tensor."""
        content = {key: value for key, value in self.to_json().items() if key != "digest"}
        return sha256_bytes(json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ValueError("not a tokeff manifest")
        if data.get("format_version") not in _READABLE_VERSIONS:
            raise ValueError(f"manifest format version {data.get('format_version')} is not supported")
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    def input(self, role: str) -> dict[str, Any] | None:
        return next((entry for entry in self.inputs if entry.get("role") == role), None)


class ArtifactWriter:
    """Context manager that builds an artifact in a temporary folder and moves it to `out` on success.

    Use `writer.path` as the folder to write into (e.g. `model.save_pretrained(writer.path)`),
    `save_tensors` for safetensors files, and fill `parameters`, `metrics` and `add_input`.
    """

    def __init__(
        self,
        out: Path | str,
        kind: str,
        *,
        force: bool = False,
        parameters: dict[str, Any] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.out = Path(out)
        self.force = force
        self.manifest = Manifest(kind=kind, command=command if command is not None else _command_line())
        self.manifest.parameters.update(parameters or {})
        self._tmp: Path | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return self.manifest.parameters

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.metrics

    @property
    def path(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("ArtifactWriter used outside its `with` block")
        return self._tmp

    def add_input(self, role: str, spec: str, source: Path | str | None) -> None:
        """Record an input by the one fingerprint of its file or folder (None: nothing to hash)."""
        sha256 = input_fingerprint(source) if source is not None else None
        self.manifest.inputs.append({"role": role, "spec": spec, "sha256": sha256})

    def save_tensors(self, filename: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file  # imports torch, which reading artifacts does not need

        target = self.path / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}, str(target), metadata)
        return target

    def __enter__(self) -> ArtifactWriter:
        check_output_path(self.out, self.force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = interrupt.track(Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent)))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        tmp = self.path
        if exc_type is not None:
            _discard(tmp)
            return
        try:
            self.manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.manifest.files = _hash_files(tmp)
            self.manifest.digest = self.manifest.content_digest()
            (tmp / MANIFEST_NAME).write_text(json.dumps(self.manifest.to_json(), indent=2) + "\n")
            interrupt.publish(tmp, lambda: _replace_dir(tmp, self.out))
        except BaseException:
            _discard(tmp)
            raise


def _discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    interrupt.forget(tmp)


def check_output_path(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless the user asked for it."""
    if out.exists() and not force:
        raise TokeffError(f"{out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise TokeffError(f"{out} exists and is not a directory")


def input_fingerprint(path: Path | str) -> str:
    """The one sha256 every manifest records an input by: a file's own hash; a folder's, over its
    files' names and hashes (a tokeff artifact's manifest already lists them, verified on load)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    listed = read_manifest(path).files if is_artifact(path) else _hash_files(path)
    return sha256_bytes("\n".join(f"{name} {entry['sha256']}" for name, entry in sorted(listed.items())).encode())


def _command_line() -> list[str]:
    return ["tokeff", *sys.argv[1:]] if Path(sys.argv[0]).name == "tokeff" else list(sys.argv)


def _hash_files(root: Path) -> dict[str, dict[str, Any]]:
    return {
        file.relative_to(root).as_posix(): {"sha256": sha256_file(file), "bytes": file.stat().st_size}
        for file in sorted(root.rglob("*"))
        if file.is_file() and file.name != MANIFEST_NAME
    }


def _replace_dir(new: Path, out: Path) -> None:
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{time.time_ns()}")
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def is_artifact(path: Path | str) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    if not path.exists():
        raise TokeffError(f"{path}: no such artifact")
    manifest_file = path / MANIFEST_NAME
    if not manifest_file.is_file():
        raise TokeffError(f"{path}: not a tokeff artifact (no {MANIFEST_NAME})")
    try:
        return Manifest.from_json(json.loads(manifest_file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise TokeffError(f"{manifest_file}: corrupt manifest ({exc})") from None


def verify_artifact(path: Path | str) -> list[str]:
    """Every problem found: missing, extra or altered files, unreadable tensors, shape mismatches."""
    path = Path(path)
    manifest = read_manifest(path)
    problems = _check_digest(manifest) + _check_hashes(path, manifest)
    if problems:  # later checks would only repeat the damage in other words
        return problems
    problems += _check_safetensors(path, manifest)
    if (path / "config.json").is_file() and not problems:
        from tokeff.core.model_checks import check_model_folder

        problems += check_model_folder(path)
    if manifest.kind in KIND_CHECKS and not problems:
        module_name, function_name = KIND_CHECKS[manifest.kind].split(":")
        problems += getattr(importlib.import_module(module_name), function_name)(path, manifest)
    return problems


def load_artifact(path: Path | str, kind: str | None = None) -> Manifest:
    """The manifest of a verified artifact; a one-line TokeffError if it is not what it claims."""
    manifest = read_manifest(path)
    if kind is not None and manifest.kind != kind:
        raise TokeffError(f"{path}: is a '{manifest.kind}' artifact, expected '{kind}'")
    problems = verify_artifact(path)
    if problems:
        raise TokeffError(f"{path}: failed verification: {problems[0]}")
    return manifest


def _check_digest(manifest: Manifest) -> list[str]:
    if manifest.format_version < 2:
        return []
    if manifest.digest != manifest.content_digest():
        return [f"{MANIFEST_NAME} was edited (its digest does not match its parameters, inputs, metrics and file hashes)"]
    return []


def _check_hashes(path: Path, manifest: Manifest) -> list[str]:
    problems = []
    for name, entry in manifest.files.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != entry.get("bytes"):
            problems.append(f"{name} has {file.stat().st_size} bytes, manifest says {entry.get('bytes')}")
        elif sha256_file(file) != entry.get("sha256"):
            problems.append(f"{name} was modified (sha256 mismatch)")
    listed = set(manifest.files)
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path).as_posix()
        if file.is_file() and file.name != MANIFEST_NAME and relative not in listed:
            problems.append(f"{relative} is not listed in the manifest")
    return problems


def _check_safetensors(path: Path, manifest: Manifest) -> list[str]:
    problems = []
    for name in manifest.files:
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(path / name), framework="numpy") as handle:
                    handle.keys()
            except (SafetensorError, OSError) as exc:
                problems.append(f"{name} is not a readable safetensors file ({exc})")
    return problems
