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
    """Per layer, the key and the value scheme calibration chose (names in `SCHEMES`) and their constants:
    key ranges [layers, kv_heads, head_dim] (read by fixed-range schemes; for the others, the min/max
    calibration saw, a record that keeps the artifact's shape checks) and codebooks [layers, 1 or kv_heads,
    2**bits] (even levels for schemes that fit none). `settings` holds the options of each scheme used."""

    bits: int
    key_center: torch.Tensor
    key_half: torch.Tensor
    key_codebook: torch.Tensor
    value_codebook: torch.Tensor
    key_schemes: list[str]
    value_schemes: list[str]
    settings: dict[str, dict[str, Any]]

    def quantizers(self) -> list[KVQuantizer]:
        from tokeff.kvquant.schemes import SCHEMES, Fitted

        head_dim = self.key_center.shape[-1]
        layers = []
        for layer, (key_name, value_name) in enumerate(zip(self.key_schemes, self.value_schemes)):
            keys, values = SCHEMES.get(key_name), SCHEMES.get(value_name)
            fitted_keys = Fitted(self.key_codebook[layer], self.key_center[layer], self.key_half[layer])
            layers.append(KVQuantizer(
                keys=keys.quantizer(self.bits, fitted_keys, self.settings[key_name], head_dim),
                values=values.quantizer(self.bits, Fitted(self.value_codebook[layer]), self.settings[value_name], head_dim),
                pre_rope=keys.pre_rope,
            ))
        return layers

    def save(self, writer: ArtifactWriter) -> None:
        writer.save_tensors(TENSOR_FILE, {name: getattr(self, name).float() for name in _NAMES})
        writer.parameters.update(bits=self.bits, key_schemes=list(self.key_schemes),
                                 value_schemes=list(self.value_schemes), scheme_settings=self.settings)


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
    problems = _scheme_problems(params, tensors["key_center"].shape[0])
    if problems:
        raise TokeffError(f"{path}: {problems[0]}")
    calibration = KVCalibration(
        bits=int(params["bits"]), key_schemes=params["key_schemes"], value_schemes=params["value_schemes"],
        settings=params["scheme_settings"], **{name: tensors[name] for name in _NAMES},
    )
    config = lm.model.config.get_text_config(decoder=True)
    expected = (config.num_hidden_layers, config.num_key_value_heads, _head_dim(config))
    if tuple(calibration.key_center.shape) != expected:
        raise TokeffError(f"{path}: key ranges have shape {list(calibration.key_center.shape)}, the model needs {list(expected)}")
    return calibration


def _scheme_problems(params: dict[str, Any], layers: int) -> list[str]:
    """What is wrong with the manifest's per-layer schemes and their settings (nothing: [])."""
    from tokeff.kvquant.schemes import SCHEMES

    settings = params.get("scheme_settings")
    if not isinstance(settings, dict):
        return ["the manifest records no scheme settings (made by an older tokeff? calibrate it again)"]
    problems = []
    for tensor in ("keys", "values"):
        names = params.get(f"{tensor[:-1]}_schemes")
        if not isinstance(names, list) or len(names) != layers:
            problems.append(f"{tensor[:-1]}_schemes must list one scheme per layer ({layers})")
            continue
        for name in dict.fromkeys(names):
            try:
                scheme = SCHEMES.get(name)
                if scheme.tensor != tensor:
                    problems.append(f"scheme '{name}' quantizes {scheme.tensor}, not {tensor}")
                elif settings.get(name) != scheme.settings(settings.get(name)):
                    problems.append(f"scheme '{name}' has settings {settings.get(name)}, not a full valid set")
            except TokeffError as error:
                problems.append(str(error))
    return problems


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
    problems = _scheme_problems(manifest.parameters, tensors["key_center"].shape[0])
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
