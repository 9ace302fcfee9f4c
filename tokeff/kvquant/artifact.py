"""The `kvquant` artifact: calibrated tensors in `kvquant.safetensors` plus the manifest, and the
checks that it is intact and made for the model it is about to be used with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tokeff.core.errors import TokeffError
from tokeff.kvquant.quantizer import KVQuantizer, TensorQuantizer

if TYPE_CHECKING:
    from tokeff.core.artifacts import ArtifactWriter, Manifest
    from tokeff.core.models import LoadedModel

KIND = "kvquant"
TENSOR_FILE = "kvquant.safetensors"
_NAMES = ("key_center", "key_half", "key_codebook", "value_codebook")


@dataclass
class KVCalibration:
    """Per layer: pre-RoPE key ranges [layers, kv_heads, head_dim] and codebooks [layers, 1 or kv_heads, 2**bits].

    With `key_group` > 0, keys take per-channel ranges from each group of that many tokens (as KIVI,
    but before RoPE) and the codebook is fitted to keys normalized that way; the fixed ranges are then
    kept only as the record of what calibration saw (and for the artifact's shape checks)."""

    bits: int
    key_center: torch.Tensor
    key_half: torch.Tensor
    key_codebook: torch.Tensor
    value_codebook: torch.Tensor
    key_outliers: int  # entries per token kept exact
    value_outliers: int
    key_group: int = 0

    def quantizers(self) -> list[KVQuantizer]:
        return [
            KVQuantizer(
                keys=TensorQuantizer(
                    self.bits, self.key_codebook[layer], per_token=False, group=self.key_group,
                    **({} if self.key_group else {"center": self.key_center[layer], "half": self.key_half[layer]}),
                    outliers=self.key_outliers,
                ),
                values=TensorQuantizer(self.bits, self.value_codebook[layer], per_token=True, outliers=self.value_outliers),
                pre_rope=True,
            )
            for layer in range(self.key_center.shape[0])
        ]

    def save(self, writer: ArtifactWriter) -> None:
        writer.save_tensors(TENSOR_FILE, {name: getattr(self, name).float() for name in _NAMES})
        writer.parameters.update(bits=self.bits, key_outliers_per_token=self.key_outliers,
                                 value_outliers_per_token=self.value_outliers, key_group=self.key_group)


def load_calibration(path: Path | str, lm: LoadedModel) -> KVCalibration:
    """A verified calibration for exactly this model; a one-line error otherwise."""
    from safetensors.torch import load_file

    from tokeff.core.artifacts import input_fingerprint, load_artifact

    manifest = load_artifact(path, kind=KIND)
    made_for = manifest.input("model") or {}
    fingerprint = input_fingerprint(lm.folder)
    if made_for.get("sha256") != fingerprint:
        raise TokeffError(
            f"{path} was calibrated for model {made_for.get('spec')} (fingerprint {str(made_for.get('sha256'))[:12]}), "
            f"not for {lm.spec} (fingerprint {fingerprint[:12]}); calibrate it for this model with `tokeff kvquant calibrate`"
        )
    tensors = load_file(str(Path(path) / TENSOR_FILE))
    params = manifest.parameters
    calibration = KVCalibration(
        bits=int(params["bits"]),
        key_outliers=int(params["key_outliers_per_token"]),
        value_outliers=int(params["value_outliers_per_token"]),
        key_group=int(params.get("key_group", 0)),
        **{name: tensors[name] for name in _NAMES},
    )
    config = lm.model.config.get_text_config(decoder=True)
    expected = (config.num_hidden_layers, config.num_key_value_heads, _head_dim(config))
    if tuple(calibration.key_center.shape) != expected:
        raise TokeffError(f"{path}: key ranges have shape {list(calibration.key_center.shape)}, the model needs {list(expected)}")
    return calibration


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_artifact(path: Path, manifest: Manifest) -> list[str]:
    """Kind-specific checks for `tokeff verify`: tensors present, shapes consistent, codebooks sorted in [-1, 1]."""
    from safetensors.torch import load_file

    file = path / TENSOR_FILE
    if not file.is_file():
        return [f"{TENSOR_FILE} is missing"]
    tensors = load_file(str(file))
    missing = [name for name in _NAMES if name not in tensors]
    if missing:
        return [f"{TENSOR_FILE} lacks {', '.join(missing)}"]
    problems: list[str] = []
    bits = manifest.parameters.get("bits")
    center, half = tensors["key_center"], tensors["key_half"]
    if center.shape != half.shape or center.dim() != 3:
        problems.append(f"key ranges have shapes {list(center.shape)} and {list(half.shape)}")
    if not bool((half > 0).all()) or not bool(torch.isfinite(center).all()):
        problems.append("key ranges are not finite and positive")
    for name in ("key_codebook", "value_codebook"):
        book = tensors[name]
        if book.dim() != 3 or book.shape[0] != center.shape[0] or book.shape[-1] != 2 ** int(bits or 0):
            problems.append(f"{name} has shape {list(book.shape)} for {bits}-bit codes and {center.shape[0]} layers")
        elif not bool((book[..., 1:] >= book[..., :-1]).all()) or book.abs().max() > 1:
            problems.append(f"{name} levels are not sorted within [-1, 1]")
    return problems


def write_calibration(
    out: Path, lm: LoadedModel, calibration: KVCalibration, text: Path, parameters: dict[str, Any],
    metrics: dict[str, Any], force: bool = False,
) -> None:
    """Write the artifact: tensors, the model's fingerprint and the text's hash as inputs, parameters and metrics."""
    from tokeff.core.artifacts import ArtifactWriter

    with ArtifactWriter(out, kind=KIND, force=force, parameters=parameters) as writer:
        writer.add_input("model", lm.spec, lm.folder)
        writer.add_input("text", str(text), text)
        calibration.save(writer)
        writer.metrics.update(metrics)
