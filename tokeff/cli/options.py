"""Options shared by many commands, so every command spells them the same way."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer

if TYPE_CHECKING:
    from tokeff.core.models import LoadedModel

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Dtype = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 or float16.")]
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder (off by default).")
]
Model = Annotated[str, typer.Option("--model", "-m", help="Built-in name, .gguf file, folder or hub id.")]
Output = Annotated[Path, typer.Option("-o", "--output", help="Output artifact folder.")]
# Several models combined byte by byte (`tokeff ensemble`, `tokeff eval bpb` with more than one --model).
Models = Annotated[list[str], typer.Option("--model", "-m", help="Built-in name, .gguf file, folder or hub id (repeatable).")]
EnsembleWeights = Annotated[
    list[str] | None,
    typer.Option("--weight", help="One weight per --model (default: equal), or auto: a Bayesian average over weightings of the members, by their posteriors byte by byte."),
]
EnsembleMode = Annotated[str, typer.Option(help="mix: average the byte probabilities; product: weighted geometric mean.")]
# A quantized KV cache (`tokeff decode`, `tokeff eval bpb`).
KvQuant = Annotated[
    str | None,
    typer.Option("--kv-quant", help="Quantized KV cache: a `tokeff kvquant calibrate` artifact, or uniform:BITS (KIVI)."),
]
KvResidual = Annotated[int, typer.Option(help="With --kv-quant: recent tokens kept in full precision.")]
KvSinks = Annotated[int, typer.Option(help="With --kv-quant: first tokens kept in full precision (attention sinks).")]
# Corpus mode of `tokeff watermark detect` and `tokeff eval bpb` (with -o).
CorpusOutput = Annotated[
    Path | None, typer.Option("-o", "--output", help="Corpus mode: one row per document into this .parquet or .jsonl.")
]
Engine = Annotated[str, typer.Option(help="Corpus mode: local (this process) or ray (Ray Data).")]
Address = Annotated[str | None, typer.Option(help="ray: join this running cluster (default: start Ray on this machine).")]
Workers = Annotated[int, typer.Option(help="ray: scoring actors (each loads the key or model once).")]
GpusPerWorker = Annotated[float, typer.Option(help="ray: GPUs per actor.")]
BatchSize = Annotated[int, typer.Option(help="Corpus mode: documents per batch.")]
Field = Annotated[str, typer.Option(help="JSONL and Parquet: the field holding each document's text.")]
IdField = Annotated[str | None, typer.Option(help="JSONL and Parquet: the field holding each document's id (default: path:N).")]
Resume = Annotated[bool, typer.Option("--resume", help="Finish an interrupted run with the documents not yet written.")]
FailOnError = Annotated[bool, typer.Option("--fail-on-error", help="Exit 1 if any document could not be scored.")]


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """How to load models: --device, --dtype and --trust-remote-code, declared once for every command.

    A command takes a parameter typed `ModelArgs` and is wrapped in `with_shared_args`, which turns
    that parameter into these three flags and hands the command one resolved `ModelArgs`.
    """

    device: Device = "auto"
    dtype: Dtype = "auto"
    trust_remote_code: TrustRemoteCode = False

    def load(self, spec: str) -> LoadedModel:
        from tokeff.core.models import load_model

        return load_model(spec, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)


@dataclasses.dataclass(frozen=True)
class CorpusArgs:
    """Corpus mode (-o and the engine flags), declared once for every corpus command (see `with_shared_args`)."""

    output: CorpusOutput = None
    engine: Engine = "local"
    address: Address = None
    workers: Workers = 1
    gpus_per_worker: GpusPerWorker = 0.0
    batch_size: BatchSize = 64
    field: Field = "text"
    id_field: IdField = None
    resume: Resume = False
    force: Force = False
    fail_on_error: FailOnError = False


F = TypeVar("F", bound=Callable[..., Any])


def with_shared_args(command: F) -> F:
    """Expose each of `command`'s dataclass-typed parameters (`ModelArgs`, `CorpusArgs`) to Typer as
    that class's flags, and hand the command one instance of it built from them."""
    # eval_str: real types, including flags generated from option specs (`with_cli_parameters`)
    signature = inspect.signature(command, eval_str=True)
    groups = {key: parameter.annotation for key, parameter in signature.parameters.items()
              if isinstance(parameter.annotation, type) and dataclasses.is_dataclass(parameter.annotation)}
    keyword = inspect.Parameter.KEYWORD_ONLY  # Typer passes every parameter by name
    parameters = [
        parameter.replace(kind=keyword)
        for parameter in signature.parameters.values()
        if parameter.name not in groups and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    fields = {}
    for name, cls in groups.items():
        hints = get_type_hints(cls, include_extras=True)
        fields[name] = [field.name for field in dataclasses.fields(cls)]
        parameters += [inspect.Parameter(field, keyword, default=getattr(cls, field), annotation=hints[field])
                       for field in fields[name]]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        for name, cls in groups.items():
            kwargs[name] = cls(**{field: kwargs.pop(field) for field in fields[name]})
        return command(**kwargs)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper  # type: ignore[return-value]
