"""Options shared by many commands, so every command spells them the same way."""

from pathlib import Path
from typing import Annotated

import typer

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Dtype = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 or float16.")]
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder (off by default).")
]
Output = Annotated[Path, typer.Option("-o", "--output", help="Output artifact folder.")]
# Several models combined byte by byte (`tokeff ensemble`, `tokeff eval bpb` with more than one --model).
Models = Annotated[list[str], typer.Option("--model", "-m", help="Built-in name, .gguf file, folder or hub id (repeatable).")]
EnsembleWeights = Annotated[list[float] | None, typer.Option("--weight", help="One weight per --model (default: equal).")]
EnsembleMode = Annotated[str, typer.Option(help="mix: average the byte probabilities; product: weighted geometric mean.")]
# A quantized KV cache (`tokeff decode`, `tokeff eval bpb`).
KvQuant = Annotated[
    str | None,
    typer.Option("--kv-quant", help="Quantized KV cache: a `tokeff kvquant calibrate` artifact, or uniform:BITS (KIVI)."),
]
KvResidual = Annotated[int, typer.Option(help="With --kv-quant: recent tokens kept in full precision.")]
KvSinks = Annotated[int, typer.Option(help="With --kv-quant: first tokens kept in full precision (attention sinks).")]
# Bounded KV caches (`tokeff decode --method sink|h2o`, `tokeff eval bpb --method sink|h2o`).
Sinks = Annotated[int | None, typer.Option(help="sink: attention-sink tokens kept (default 4).")]
Window = Annotated[
    int | None, typer.Option(help="sink: recent tokens kept (default 1020); h2o: recent part of the budget.")
]
KvBudget = Annotated[int | None, typer.Option(help="h2o: positions kept per layer and head (default 512).")]
