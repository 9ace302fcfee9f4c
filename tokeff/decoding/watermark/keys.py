"""Watermark keys: the secret random words and every scheme parameter, as a verified artifact.

A key is a `watermark-key` artifact: `key.safetensors` holds the secret 64-bit words (exp: one per
key position, each seeding that position's uniforms over the vocabulary; kgw: one word that seeds
the green lists), and the manifest holds the scheme, all its parameters and the sha256 of the
tokenizer vocabulary. Generator and detector both read the parameters from the key, so they can
never disagree on a default, and a text tokenized with another vocabulary is refused.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tokeff.core.artifacts import ArtifactWriter, Manifest, load_artifact
from tokeff.core.errors import TokeffError
from tokeff.core.hashing import sha256_bytes
from tokeff.decoding.watermark.scheme import SCHEMES, WatermarkScheme

KIND = "watermark-key"
KEY_FILE = "key.safetensors"


@dataclass(frozen=True)
class WatermarkKey:
    scheme: str
    words: np.ndarray = field(repr=False)  # uint64 secret words
    params: dict[str, Any]
    vocab_size: int
    vocab_sha256: str
    model: str  # the model (and so the tokenizer) the key was made for
    path: Path | None = None

    def __getitem__(self, name: str) -> Any:
        return self.params[name]

    @cached_property
    def rule(self) -> WatermarkScheme:
        """The key's scheme bound to it: chooser, logits processor, detector."""
        return SCHEMES.get(self.scheme)(self)

    def for_detection(self, overrides: dict[str, Any]) -> WatermarkKey:
        """This key with detection-precision parameters (exp's `runs`) overridden; None means keep."""
        given = {name: value for name, value in overrides.items() if value is not None}
        for name in given:
            if name not in self.rule.detection_options:
                owners = [scheme for scheme, cls in SCHEMES.items() if name in cls.detection_options]
                raise TokeffError(f"--{name.replace('_', '-')} applies to {', '.join(owners)} keys")
        return replace(self, params={**self.params, **self.rule.parameters({**self.params, **given})})

    def manifest_parameters(self) -> dict[str, Any]:
        return {"scheme": self.scheme, **self.params, "vocab_size": self.vocab_size, "vocab_sha256": self.vocab_sha256}


def vocab_sha256(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (every piece and its id, added tokens included)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    return sha256_bytes(json.dumps(items, ensure_ascii=False).encode("utf-8"))


def make_key(scheme: str, tokenizer, model: str, seed: int | None = None, **overrides: Any) -> WatermarkKey:
    """A fresh key: secret words from the OS (or from `seed`, for reproducible tests and demos)."""
    cls = SCHEMES.get(scheme)
    params = cls.for_model(cls.parameters(overrides), model)
    count = cls.word_count(params)
    if seed is None:
        words = np.array([secrets.randbits(64) for _ in range(count)], dtype=np.uint64)
    else:
        words = np.random.default_rng(seed).integers(0, 2**64, size=count, dtype=np.uint64)
    return WatermarkKey(scheme, words, params, len(tokenizer), vocab_sha256(tokenizer), model)


def key_from_transformers(scheme: str, config: dict[str, Any], tokenizer, model: str) -> WatermarkKey:
    """The key a transformers watermarking config stands for, so tokeff detects what `generate` watermarked."""
    cls = SCHEMES.get(scheme)
    params, words = cls.from_transformers(config)
    params = cls.for_model(params, model)
    return WatermarkKey(scheme, words, params, len(tokenizer), vocab_sha256(tokenizer), model)


def save_key(key: WatermarkKey, out: Path, force: bool = False) -> Path:
    import torch

    with ArtifactWriter(out, KIND, force=force, parameters=key.manifest_parameters()) as writer:
        writer.add_input("model", key.model, None)
        writer.save_tensors(KEY_FILE, {"words": torch.from_numpy(key.words.view(np.int64).copy())})
    return out


def load_key(path: Path | str) -> WatermarkKey:
    """A verified key: hashes, parameters and word count checked before anything uses it."""
    from safetensors.numpy import load_file

    manifest = load_artifact(path, kind=KIND)
    params = dict(manifest.parameters)
    scheme = params.pop("scheme")
    vocab_size = params.pop("vocab_size")
    digest = params.pop("vocab_sha256")
    words = load_file(str(Path(path) / KEY_FILE))["words"].view(np.uint64)
    model = (manifest.input("model") or {}).get("spec", "")
    params = SCHEMES.get(scheme).stored(params)  # verified above: the scheme is known
    return WatermarkKey(scheme, words, params, vocab_size, digest, model, Path(path))


def check_vocabulary(key: WatermarkKey, tokenizer, tokenizer_spec: str) -> None:
    if vocab_sha256(tokenizer) != key.vocab_sha256:
        raise TokeffError(
            f"the tokenizer of {tokenizer_spec} ({len(tokenizer):,} tokens) is not the one this key was made "
            f"for ({key.model}, {key.vocab_size:,} tokens): its vocabulary hash differs"
        )


def key_tokenizer(key: WatermarkKey, spec: str | None = None, trust_remote_code: bool = False):
    """The tokenizer texts are tested with: `spec`, else the key's model; refused if its vocabulary is not the key's."""
    from tokeff.core.encoder import load_encoder

    spec = spec or key.model
    if not spec:
        raise TokeffError(f"{key.path}: the key names no model; pass --tokenizer")
    tokenizer = load_encoder(spec, trust_remote_code=trust_remote_code)
    check_vocabulary(key, tokenizer, spec)
    return tokenizer


def check_key_artifact(path: Path, manifest: Manifest) -> list[str]:
    """`tokeff verify` checks for keys: known scheme, valid parameters, words matching the key length."""
    params = dict(manifest.parameters)
    scheme = params.pop("scheme", None)
    if scheme not in SCHEMES.names():
        return [f"watermark scheme {scheme!r} is unknown to this tokeff (known: {', '.join(SCHEMES.names())})"]
    for name in ("vocab_size", "vocab_sha256"):
        if name not in params:
            return [f"key parameter '{name}' is missing"]
        params.pop(name)
    cls = SCHEMES.get(scheme)
    problems = cls.problems(params)
    if problems:
        return problems
    from safetensors.numpy import load_file

    tensors = load_file(str(path / KEY_FILE)) if (path / KEY_FILE).is_file() else {}
    words = tensors.get("words")
    expected = cls.word_count(params)
    if words is None or words.dtype != np.int64 or words.shape != (expected,):
        found = "missing" if words is None else f"{words.dtype} {list(words.shape)}"
        return [f"{KEY_FILE}: expected int64 words of shape [{expected}], found {found}"]
    return []
