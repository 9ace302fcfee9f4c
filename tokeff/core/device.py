"""`--device` and `--dtype` resolution shared by every command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokeff.core.errors import TokeffError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TokeffError("--device cuda asked for, but no CUDA GPU is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise TokeffError(f"unknown device '{name}' (use auto, cpu or cuda)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on the CPU (fast and exact there) and bfloat16 on a GPU."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPE_NAMES:
        raise TokeffError(f"unknown dtype '{name}' (use auto, {', '.join(DTYPE_NAMES)})")
    return getattr(torch, name)
