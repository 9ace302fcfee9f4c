"""Loading a model argument as a ready causal LM and tokenizer (resolution itself is in `resolve`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokeff.core.device import resolve_device, resolve_dtype
from tokeff.core.errors import TokeffError
from tokeff.core.model_checks import tensor_shapes, text_config
from tokeff.core.resolve import first_line, model_folder, tokenizer_folder

if TYPE_CHECKING:  # torch and transformers load only after the argument resolved, so typos fail fast
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from tokeff.core.rope import RotaryTables


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, ready on its device."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    folder: Path

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def text_config(self) -> PretrainedConfig:
        """The decoder's config (multimodal models nest it)."""
        return self.model.config.get_text_config(decoder=True)

    @property
    def max_positions(self) -> int | None:
        """Positions the model was trained for, if its config says."""
        return getattr(self.text_config, "max_position_embeddings", None) or None

    @property
    def input_rows(self) -> int:
        """Rows of the input embedding: the ids the model can read."""
        return self.model.get_input_embeddings().num_embeddings

    @property
    def output_rows(self) -> int:
        """Rows of the output layer: the ids the model can predict."""
        return self.model.get_output_embeddings().weight.shape[0]

    @cached_property
    def rotary(self) -> RotaryTables:
        """The model's rotary tables and frequencies (raises for a model without RoPE)."""
        from tokeff.core.rope import RotaryTables

        return RotaryTables(self.model)

    def check_context(self, tokens: int, what: str = "--context", minimum: int = 2, within_positions: bool = True) -> int:
        """The one check of a length the model must hold: `minimum` up to the model's positions (unless a
        cache renumbers positions, `within_positions=False`)."""
        limit = self.max_positions if within_positions else None
        if tokens < minimum or (limit is not None and tokens > limit):
            bound = f"be in {minimum}..{limit} (the model's positions)" if limit else f"be at least {minimum}"
            raise TokeffError(f"{what} must {bound}, got {tokens}")
        return tokens

    @property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends generation (generation config and tokenizer)."""
        ids: set[int] = set()
        for source in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source is not None:
                ids.update(source)
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def encode_plain(self, text: str) -> list[int]:
        """Tokens of raw text (no BOS) in which strings that spell special tokens stay text.

        Scored or calibrated text is data, not a prompt: WikiText's literal `<unk>` must not become
        Gemma's unknown-token control id, which the model was never meant to predict.
        """
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def load_model(
    spec: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None, stream_layers: bool = False,
) -> LoadedModel:
    """`tokenizer`: one already loaded from `spec` (a 128k-token tokenizer is hundreds of MiB).
    `stream_layers` (CPU only): the decoder layers stay in their safetensors files and each forward
    pass reads them one at a time (accelerate's disk offload), so the model holds only its other weights."""
    folder = model_folder(spec)
    from transformers import AutoModelForCausalLM

    torch_device = resolve_device(device)
    tokenizer = tokenizer or load_tokenizer(spec, trust_remote_code=trust_remote_code, folder=folder)
    placement = {"device_map": _layers_on_disk(folder, trust_remote_code)} if stream_layers and torch_device.type == "cpu" else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=resolve_dtype(dtype, torch_device), trust_remote_code=trust_remote_code, **placement
        )
    except ValueError as exc:
        raise TokeffError(f"{spec}: cannot load as a causal LM ({first_line(exc)})") from None
    except OSError as exc:
        raise TokeffError(f"{spec}: cannot read model weights ({first_line(exc)})") from None
    model = model if placement else model.to(torch_device)  # a dispatched model must keep its hooks' devices
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, spec=spec, folder=folder)


def _layers_on_disk(folder: Path, trust_remote_code: bool) -> dict[str, str]:
    """A device map with every block of the decoder's layer list on "disk" and every other module on the CPU.

    The layer list is the model's largest `ModuleList` (by parameters), found on an empty (meta) copy."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    lists = {name: module for name, module in empty.named_modules() if isinstance(module, torch.nn.ModuleList)}
    layers = max(lists, key=lambda name: sum(p.numel() for p in lists[name].parameters()))

    def placed(module: torch.nn.Module, prefix: str) -> dict[str, str]:
        out = {}
        for name, child in module.named_children():
            path = prefix + name
            if path == layers:
                out |= {f"{path}.{i}": "disk" for i in range(len(child))}
            elif layers.startswith(path + "."):
                out |= placed(child, path + ".")
            else:
                out[path] = "cpu"
        return out

    return placed(empty, "")


def load_tokenizer(
    spec: str, trust_remote_code: bool = False, folder: Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model argument, or of a tokenizer-only folder (e.g. from `tokeff tokenizer train`)."""
    folder = folder or tokenizer_folder(spec)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TokeffError(f"{spec}: cannot load its tokenizer ({first_line(exc)})") from None


def describe_model(spec: str) -> dict[str, Any]:
    """Architecture, sizes and vocabulary of a model, read from its config and safetensors headers."""
    folder = model_folder(spec)
    config = text_config(folder)
    shapes = tensor_shapes(folder)
    tokenizer = load_tokenizer(spec, folder=folder)
    heads = config.get("num_attention_heads")
    return {
        "model": spec,
        "folder": str(folder),
        "architecture": (json.loads((folder / "config.json").read_text()).get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"),
        "parameters": sum(math.prod(shape) for shape in shapes.values()),
        "vocab_size": config.get("vocab_size"),
        "tokenizer_size": len(tokenizer),
        "tied_embeddings": config.get("tie_word_embeddings", True) and not any(
            name.endswith("lm_head.weight") for name in shapes
        ),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "attention_heads": heads,
        "kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or (config["hidden_size"] // heads if heads else None),
        "context_length": config.get("max_position_embeddings"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
    }

