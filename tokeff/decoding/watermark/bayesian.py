"""SynthID-Text's Bayesian detector, trained on the user's own texts: optional, never needed for a verdict.

The model is transformers' `BayesianDetectorModel` (the paper's Bayesian score): a per-depth
logistic model of how likely each g-value is under the watermark, against 1/2 without it, whose
summed log-odds over a text's scored n-grams give P(watermarked | g-values). It is trained here
on g-values of watermarked and unwatermarked texts under one key, and saved as a
`watermark-detector` artifact (safetensors weights, a manifest with the key's fingerprint and the
held-out accuracy). The posterior depends on the texts it was trained on, so tokeff reports it
next to the p-value, which stays the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokeff.core.artifacts import ArtifactWriter, Manifest, load_artifact
from tokeff.core.errors import TokeffError
from tokeff.core.hashing import sha256_bytes
from tokeff.decoding.watermark.keys import WatermarkKey

KIND = "watermark-detector"
WEIGHTS = "detector.safetensors"


@dataclass
class TrainedDetector:
    model: Any  # transformers.BayesianDetectorModel
    key_sha256: str
    metrics: dict[str, Any]

    def posteriors(self, key: WatermarkKey, texts: list[np.ndarray]) -> list[float]:
        """P(watermarked | g-values) of each token sequence under `key`."""
        if key_fingerprint(key) != self.key_sha256:
            raise TokeffError("this detector was trained for another key (its key fingerprint differs)")
        g, mask = _batch(key, texts)
        with torch.inference_mode():
            return self.model(g, mask)[0].reshape(-1).tolist()


def key_fingerprint(key: WatermarkKey) -> str:
    """sha256 of the key's words and parameters: binds a detector to its key without holding the secret."""
    return sha256_bytes(key.words.tobytes() + repr(sorted(key.params.items())).encode())


def check_key(key: WatermarkKey) -> None:
    """Refuses a key whose scheme has no tournament g-values (before any text is generated)."""
    if not hasattr(key.rule, "g_values"):
        raise TokeffError(f"a Bayesian detector reads tournament g-values: a synthid key, not {key.scheme}")


def _g_values(key: WatermarkKey, tokens: np.ndarray) -> np.ndarray:
    check_key(key)
    return key.rule.g_values(np.asarray(tokens, dtype=np.int64))


def _batch(key: WatermarkKey, texts: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """g-values [texts, longest, depth] padded with a 0/1 mask [texts, longest]."""
    values = [_g_values(key, tokens) for tokens in texts]
    longest = max(1, max(len(v) for v in values))
    g = torch.zeros((len(values), longest, len(key.words)))
    mask = torch.zeros((len(values), longest))
    for row, v in enumerate(values):
        g[row, : len(v)] = torch.from_numpy(v.astype(np.float32))
        mask[row, : len(v)] = 1
    return g, mask


def train_detector(
    key: WatermarkKey,
    watermarked: list[np.ndarray],
    unwatermarked: list[np.ndarray],
    steps: int = 300,
    learning_rate: float = 0.02,
    held_out: float = 0.25,
    seed: int = 0,
) -> TrainedDetector:
    """Fit the Bayesian detector (full-batch Adam, transformers' loss) on a split; accuracy on the rest."""
    from transformers import BayesianDetectorConfig, BayesianDetectorModel

    if len(watermarked) < 4 or len(unwatermarked) < 4:
        raise TokeffError("training needs at least 4 watermarked and 4 unwatermarked texts")
    torch.manual_seed(seed)
    texts = list(watermarked) + list(unwatermarked)
    labels = torch.tensor([1.0] * len(watermarked) + [0.0] * len(unwatermarked))
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = max(1, int(round(len(texts) * held_out)))
    test, train = order[:cut], order[cut:]
    g, mask = _batch(key, texts)
    model = BayesianDetectorModel(BayesianDetectorConfig(watermarking_depth=len(key.words)))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for _ in range(steps):
        optimizer.zero_grad()
        _, loss = model(g[train], mask[train], labels=labels[train])
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        posterior = model(g, mask)[0].reshape(-1)
    correct = (posterior >= 0.5).float() == labels
    metrics = {"watermarked_texts": len(watermarked), "unwatermarked_texts": len(unwatermarked),
               "train_accuracy": float(correct[train].float().mean()), "held_out_texts": int(cut),
               "held_out_accuracy": float(correct[test].float().mean()), "final_loss": float(loss.detach())}
    return TrainedDetector(model, key_fingerprint(key), metrics)


def save_detector(detector: TrainedDetector, key: WatermarkKey, out: Path, force: bool = False) -> Path:
    parameters = {"scheme": key.scheme, "depth": len(key.words), "key_sha256": detector.key_sha256}
    with ArtifactWriter(out, KIND, force=force, parameters=parameters) as writer:
        writer.add_input("key", str(key.path or ""), None)
        writer.metrics.update(detector.metrics)
        writer.save_tensors(WEIGHTS, dict(detector.model.state_dict()))
    return out


def load_detector(path: Path | str) -> TrainedDetector:
    """A verified detector: hashes and tensor shapes checked before its weights load."""
    from safetensors.torch import load_file
    from transformers import BayesianDetectorConfig, BayesianDetectorModel

    manifest = load_artifact(path, kind=KIND)
    model = BayesianDetectorModel(BayesianDetectorConfig(watermarking_depth=manifest.parameters["depth"]))
    model.load_state_dict(load_file(str(Path(path) / WEIGHTS)))
    return TrainedDetector(model.eval(), manifest.parameters["key_sha256"], dict(manifest.metrics))


def check_detector_artifact(path: Path, manifest: Manifest) -> list[str]:
    """`tokeff verify` checks: the weights have the shapes the recorded depth needs."""
    from safetensors.numpy import load_file

    depth = manifest.parameters.get("depth")
    if not isinstance(depth, int) or depth < 1:
        return ["detector parameter 'depth' is missing or not a positive integer"]
    expected = {"prior": (1,), "likelihood_model_watermarked.beta": (1, 1, depth),
                "likelihood_model_watermarked.delta": (1, 1, depth, depth)}
    tensors = load_file(str(path / WEIGHTS)) if (path / WEIGHTS).is_file() else {}
    found = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if found != expected:
        return [f"{WEIGHTS}: expected tensors {expected}, found {found}"]
    return []
