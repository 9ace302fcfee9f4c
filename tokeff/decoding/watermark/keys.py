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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokeff.core.artifacts import ArtifactWriter, Manifest, load_artifact
from tokeff.core.errors import TokeffError
from tokeff.core.hashing import sha256_bytes

KIND = "watermark-key"
KEY_FILE = "key.safetensors"

# Scheme -> parameter -> (default, check, what the check demands). The one place defaults live.
_POSITIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")
SCHEMES: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "exp": {
        # number of key positions: a text of up to this many tokens never reuses one
        "key_length": (256, lambda v: _POSITIVE_INT[0](v) and v <= 1 << 20, "an integer in 1..1048576"),
        # alignment penalty per inserted or deleted token (a null match scores 1 on average); 2 came out
        # best of 0.5-3 in a sweep on smollm2-135m text with 0-40% edits (the sweep is not in docs/)
        "gap": (2.0, lambda v: isinstance(v, (int, float)) and 0 <= v <= 100, "a number in 0..100"),
        # Monte Carlo runs against random keys: the smallest p-value is 1 / (runs + 1)
        "runs": (999, _POSITIVE_INT[0], _POSITIVE_INT[1]),
        # sequential test: stop once this many null runs reach the observed statistic
        "stop_after": (20, _POSITIVE_INT[0], _POSITIVE_INT[1]),
        "min_tokens": (8, _POSITIVE_INT[0], _POSITIVE_INT[1]),
    },
    "kgw": {
        "green_fraction": (0.25, lambda v: isinstance(v, (int, float)) and 0 < v < 1, "a number in (0, 1)"),
        "bias": (2.0, lambda v: isinstance(v, (int, float)) and 0 < v <= 100, "a number in (0, 100]"),
        # previous tokens that seed the green list
        "context_width": (1, lambda v: _POSITIVE_INT[0](v) and v <= 16, "an integer in 1..16"),
        "min_tokens": (8, _POSITIVE_INT[0], _POSITIVE_INT[1]),
    },
}


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

    def manifest_parameters(self) -> dict[str, Any]:
        return {"scheme": self.scheme, **self.params, "vocab_size": self.vocab_size, "vocab_sha256": self.vocab_sha256}


def vocab_sha256(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (every piece and its id, added tokens included)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    return sha256_bytes(json.dumps(items, ensure_ascii=False).encode("utf-8"))


def scheme_parameters(scheme: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The scheme's defaults with `overrides` (None means default), each checked."""
    if scheme not in SCHEMES:
        raise TokeffError(f"unknown watermark scheme '{scheme}' (known: {', '.join(SCHEMES)})")
    spec = SCHEMES[scheme]
    unknown = sorted(name for name, value in overrides.items() if value is not None and name not in spec)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise TokeffError(f"{flags} does not apply to the {scheme} scheme")
    params = {name: overrides.get(name) if overrides.get(name) is not None else default
              for name, (default, _, _) in spec.items()}
    problems = _parameter_problems(scheme, params)
    if problems:
        raise TokeffError(problems[0])
    return params


def make_key(scheme: str, tokenizer, model: str, seed: int | None = None, **overrides: Any) -> WatermarkKey:
    """A fresh key: secret words from the OS (or from `seed`, for reproducible tests and demos)."""
    params = scheme_parameters(scheme, overrides)
    count = params["key_length"] if scheme == "exp" else 1
    if seed is None:
        words = np.array([secrets.randbits(64) for _ in range(count)], dtype=np.uint64)
    else:
        words = np.random.default_rng(seed).integers(0, 2**64, size=count, dtype=np.uint64)
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
    return WatermarkKey(scheme, words, params, vocab_size, digest, model, Path(path))


def check_vocabulary(key: WatermarkKey, tokenizer, tokenizer_spec: str) -> None:
    if vocab_sha256(tokenizer) != key.vocab_sha256:
        raise TokeffError(
            f"the tokenizer of {tokenizer_spec} ({len(tokenizer):,} tokens) is not the one this key was made "
            f"for ({key.model}, {key.vocab_size:,} tokens): its vocabulary hash differs"
        )


def check_key_artifact(path: Path, manifest: Manifest) -> list[str]:
    """`tokeff verify` checks for keys: known scheme, valid parameters, words matching the key length."""
    params = dict(manifest.parameters)
    scheme = params.pop("scheme", None)
    if scheme not in SCHEMES:
        return [f"watermark scheme {scheme!r} is unknown to this tokeff (known: {', '.join(SCHEMES)})"]
    for name in ("vocab_size", "vocab_sha256"):
        if name not in params:
            return [f"key parameter '{name}' is missing"]
        params.pop(name)
    problems = _parameter_problems(scheme, params)
    if problems:
        return problems
    from safetensors.numpy import load_file

    tensors = load_file(str(path / KEY_FILE)) if (path / KEY_FILE).is_file() else {}
    words = tensors.get("words")
    expected = params["key_length"] if scheme == "exp" else 1
    if words is None or words.dtype != np.int64 or words.shape != (expected,):
        found = "missing" if words is None else f"{words.dtype} {list(words.shape)}"
        return [f"{KEY_FILE}: expected int64 words of shape [{expected}], found {found}"]
    return []


def _parameter_problems(scheme: str, params: dict[str, Any]) -> list[str]:
    spec = SCHEMES[scheme]
    problems = [f"key parameter '{name}' is missing" for name in spec if name not in params]
    problems += [f"unknown key parameter '{name}' for the {scheme} scheme" for name in params if name not in spec]
    problems += [
        f"{scheme} parameter '{name}' must be {demand}, got {params[name]!r}"
        for name, (_, check, demand) in spec.items()
        if name in params and not check(params[name])
    ]
    return problems
