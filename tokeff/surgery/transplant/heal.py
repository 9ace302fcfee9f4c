"""`tokeff transplant --heal`: a short optimization of only the new tokens' rows.

The training-free estimate leaves each new row where the shared anchors put it. Healing fits just
those rows (input embeddings and output rows; with tied embeddings they are one row) to the base
model's own text, every base weight frozen: the trainable tensors are small parameters holding
the new rows, scattered into the frozen matrices in each forward pass, so shared rows stay
bit-identical and the optimizer state is the size of the new rows.

Objective. The heal text (default: text the base model samples, as `--new-scale auto` samples it)
is cut into chunks at spaces, where both tokenizations have a boundary, and each chunk is scored
by both models in their own tokens. The loss is the transplanted model's cross-entropy of the
chunks in bits per byte; the base model's on the same chunks is a constant, so on the base
model's own samples the difference is the chunk-level KL(base || transplanted) per byte. The loss
curve is that difference, bits per byte above the base, which healing drives toward 0.

The last chunks are held out; their bits per byte before and after healing go into the manifest,
scored by the one scorer as `tokeff eval bpb` scores the written model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.evaluation import bits_per_byte
from tokeff.core.models import LoadedModel
from tokeff.core.scoring import prefix_token_id, score_tokens
from tokeff.surgery.transplant.checkpoint import Checkpoint, EmbeddingLayout

CHUNK_CHARS = 512  # a --heal-text file is cut into chunks of at most this many characters, before a space
MAX_TOKENS = 512  # a longer chunk (in either tokenization) is left out; memory is checked for chunks this long
SAMPLES, SAMPLE_TOKENS = 32, 128  # default heal text: 32 samples of the base model, 4 of them held out
HELD_OUT_SHARE = 8  # the last 1/8 of the chunks (at least one) are held out
BATCH = 4  # chunks per step
# --heal alone: at most DEFAULT_STEPS steps, and no step started after DEFAULT_FIT_SECONDS of fitting,
# so that sampling, fitting and the held-out scoring take under 10 minutes wherever a step is slow
# (a shared 2-core CPU runs a step of gemma3-270m in seconds to tens of seconds; docs/transplant.md).
DEFAULT_STEPS = 200
DEFAULT_FIT_SECONDS = 420.0
# Adam moves every element by about the learning rate per step, so it is set relative to the size
# of the rows it moves: this fraction of the root mean square of the matrix's shared rows.
LR_FRACTION = 0.05


@dataclass
class HealText:
    train: list[str]  # chunks healed on
    held_out: str  # scored before and after
    source: str  # "sampled from BASE" or the file
    held_out_from: int | None = None  # a file's held-out text is its suffix from this character on


def read_heal_text(path: str) -> HealText:
    """A --heal-text file cut into chunks; an error when it does not make one chunk plus a held-out part."""
    from tokeff.core.textio import read_text

    text = read_text(path)
    chunks = _chunks(text)
    if len(chunks) < 2:
        raise TokeffError(
            f"--heal-text {path}: {len(text):,} characters, not more than one chunk ({CHUNK_CHARS} characters); "
            "healing needs a chunk to fit and text after it to hold out"
        )
    held = max(1, len(chunks) // HELD_OUT_SHARE)
    return HealText(chunks[:-held], "".join(chunks[-held:]), str(path), held_out_from=len("".join(chunks[:-held])))


def sampled_text(base: LoadedModel) -> HealText:
    """SAMPLES texts drawn from the base model (a seed apart from --new-scale auto's), the last ones held out."""
    from tokeff.surgery.transplant.scale import sampled_documents

    console.info(f"--heal: sampling {SAMPLES} texts of {SAMPLE_TOKENS} tokens from {base.spec}")
    documents = [d for d in sampled_documents(base, seed=1, count=SAMPLES, tokens=SAMPLE_TOKENS) if d.strip()]
    held = max(1, len(documents) // HELD_OUT_SHARE)
    return HealText(documents[:-held], "\n\n".join(documents[-held:]), f"sampled from {base.spec}")


def _chunks(text: str) -> list[str]:
    """Consecutive pieces of at most CHUNK_CHARS characters that together are `text`, each cut before a space."""
    chunks, start = [], 0
    while start < len(text):
        end = start + CHUNK_CHARS
        if end < len(text):
            space = text.rfind(" ", start + CHUNK_CHARS // 2, end)
            end = space if space > start else end
        chunks.append(text[start:end])
        start = end
    return [chunk for chunk in chunks if chunk.strip()] if len(chunks) > 1 else chunks


def check_memory(checkpoint: Checkpoint, layout: EmbeddingLayout, config: dict, rows: int, device: torch.device) -> int:
    """The bytes a heal needs (float32 weights, activations of one batch, its logits); an error naming
    the estimate when the device has less available."""
    body = sum(math.prod(shape) for name, shape in checkpoint.shapes.items() if name not in layout.names)
    matrices = rows * layout.hidden * (1 if layout.tied else 2)
    tokens = BATCH * MAX_TOKENS
    layers, hidden = config.get("num_hidden_layers", 1), layout.hidden
    intermediate, heads = config.get("intermediate_size", 4 * hidden), config.get("num_attention_heads", 1)
    activations = tokens * layers * (16 * hidden + 3 * intermediate) + BATCH * heads * layers * 2 * MAX_TOKENS**2
    # weights; the scattered matrices and their gradients; activations; logits, log-softmax and their gradient
    needed = 4 * (body + 3 * matrices + activations + 3 * tokens * rows)
    available = _available_bytes(device)
    if available is not None and needed > available:
        raise TokeffError(
            f"--heal needs up to about {needed / 2**30:.1f} GiB on {device} ({body / 1e6:,.0f}M body parameters in float32, "
            f"{rows:,} vocabulary rows, {BATCH} x {MAX_TOKENS} tokens a step) and {available / 2**30:.1f} GiB are available"
        )
    return needed


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def heal_rows(base: LoadedModel, replacements: dict[str, torch.Tensor], layout: EmbeddingLayout, new_ids: np.ndarray,
              tokenizer, text: HealText, steps: int | None, seed: int = 0) -> dict:
    """Fit the `new_ids` rows of `replacements` (donor-indexed, in place) for `steps` steps (None: the
    default budget); `base` is the base model in float32, whose layers are borrowed (its rows are
    swapped out). Returns the report."""
    started = time.perf_counter()
    model, device = base.model, base.device
    # The transplanted model's tokenizer, as `tokeff eval bpb` will use it on the written model.
    new_lm = LoadedModel(model=model, tokenizer=tokenizer, spec=base.spec, folder=base.folder)
    chunks, chunk_bytes, base_bits = _chunk_tokens(base, new_lm, text)
    context = min(1024, base.max_positions or 1024)
    base_held_out = bits_per_byte(base, text.held_out, context=context)
    embed_name, head_name, matrices = _install(model, replacements, layout, device)
    before = bits_per_byte(new_lm, text.held_out, context=context)
    new = torch.from_numpy(new_ids).to(device)
    names = [embed_name] if layout.tied else [embed_name, head_name]
    params = [torch.nn.Parameter(matrices[name][new].clone()) for name in names]
    shared = torch.ones(matrices[embed_name].shape[0], dtype=torch.bool, device=device)
    shared[new] = False
    learning_rates = [LR_FRACTION * float(matrices[name][shared].pow(2).mean().sqrt()) for name in names]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, learning_rates)])
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    curve = []
    prefix = prefix_token_id(new_lm)
    batch_size = min(BATCH, len(chunks))
    fitting = time.perf_counter()
    with console.progress() as bar:
        task = bar.add_task("healing new rows", total=steps or DEFAULT_STEPS)
        for step in range(steps or DEFAULT_STEPS):
            spent = time.perf_counter() - fitting
            if steps is None and step and spent + spent / step > DEFAULT_FIT_SECONDS:
                break
            if len(order) < batch_size:
                order += torch.randperm(len(chunks), generator=generator).tolist()
            batch, order = order[:batch_size], order[batch_size:]
            weights = {name: matrices[name].index_put((new,), p) for name, p in zip(names, params)}
            bits = _batch_bits(model, weights, [chunks[i] for i in batch], prefix, device)
            loss = bits / float(chunk_bytes[batch].sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.append(loss.item() - float(base_bits[batch].sum() / chunk_bytes[batch].sum()))
            bar.update(task, advance=1, description=f"healing new rows: {curve[-1]:+.4f} bits/byte above the base")
    steps = len(curve)
    seconds_per_step = (time.perf_counter() - fitting) / steps
    _write_back(params, names, matrices, replacements, layout, new_ids)
    after = bits_per_byte(new_lm, text.held_out, context=context)
    report = {
        "steps": steps, "batch_chunks": BATCH, "learning_rates": learning_rates, "rows": int(len(new_ids)),
        "text": text.source, "chunks": len(chunks), "chunk_bytes": int(chunk_bytes.sum()),
        "objective": "cross-entropy of base-aligned chunks; curve: bits per byte above the base model on each batch",
        "loss": [round(value, 6) for value in curve],
        "held_out": {
            "bytes": before.bytes, "context": context, "from_char": text.held_out_from,
            "base_bpb": base_held_out.bpb, "base_tokens_per_byte": base_held_out.tokens / base_held_out.bytes,
            "before_bpb": before.bpb, "after_bpb": after.bpb, "tokens_per_byte": after.tokens / after.bytes,
        },
        "seconds_per_step": seconds_per_step, "seconds": time.perf_counter() - started,
    }
    console.info(f"--heal: held-out bpb {before.bpb:.4f} -> {after.bpb:.4f} (base {base_held_out.bpb:.4f}) in {steps} steps")
    return report


def _write_back(params: list[torch.Tensor], names: list[str], matrices: dict[str, torch.Tensor],
                replacements: dict[str, torch.Tensor], layout: EmbeddingLayout, new_ids: np.ndarray) -> None:
    """The fitted rows into the matrices to be written (in their dtype) and, rounded the same way, into
    the model, so that what is scored next is what the written model holds."""
    stored = [layout.names] if layout.tied else [[layout.embed], [layout.lm_head]]  # a tied model may store lm_head too
    rows = torch.from_numpy(new_ids)
    for name, fitted, written in zip(names, params, stored):
        rounded = fitted.detach().cpu().to(replacements[written[0]].dtype)
        with torch.inference_mode():  # the rebuilt matrices are inference tensors
            for tensor_name in written:
                replacements[tensor_name][rows] = rounded
        with torch.no_grad():
            matrices[name][rows.to(matrices[name].device)] = rounded.to(matrices[name].device, torch.float32)


def _chunk_tokens(base: LoadedModel, new_lm: LoadedModel, text: HealText) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Each heal chunk in the transplanted model's tokens, its bytes, and the base model's bits on it
    (in its own tokens, after the same boundary token); chunks too long for either model are left out."""
    limit = min(MAX_TOKENS, (base.max_positions or MAX_TOKENS) - 1)
    base_ids = [base.encode_plain(chunk) for chunk in text.train]
    new_ids = [new_lm.encode_plain(chunk) for chunk in text.train]
    keep = [i for i in range(len(text.train)) if 0 < len(base_ids[i]) <= limit and 0 < len(new_ids[i]) <= limit]
    if not keep:
        raise TokeffError(f"--heal: no chunk of the heal text ({text.source}) fits in {limit} tokens")
    if len(keep) < len(text.train):
        console.warn(f"--heal: {len(text.train) - len(keep)} of {len(text.train)} chunks are over {limit} tokens; left out")
    base_bits = torch.tensor([float(score_tokens(base, base_ids[i], len(base_ids[i]) + 1, label=None).token_nll.sum())
                              for i in keep]) / math.log(2)
    chunk_bytes = torch.tensor([len(text.train[i].encode("utf-8")) for i in keep], dtype=torch.float64)
    return [new_ids[i] for i in keep], chunk_bytes, base_bits


def _install(model, replacements: dict[str, torch.Tensor], layout: EmbeddingLayout,
             device: torch.device) -> tuple[str, str, dict[str, torch.Tensor]]:
    """Put the transplanted matrices (float32, frozen) into the model; returns the parameter names of
    its input embedding and output layer and those matrices by name."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    embedding.weight = torch.nn.Parameter(replacements[layout.embed].to(device, torch.float32, copy=True), requires_grad=False)
    embedding.num_embeddings = embedding.weight.shape[0]
    if layout.tied:
        head.weight = embedding.weight
    else:
        head.weight = torch.nn.Parameter(replacements[layout.lm_head].to(device, torch.float32, copy=True), requires_grad=False)
    head.out_features = head.weight.shape[0]
    names: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), name)  # a tied matrix by its first name, the input embedding's
    embed_name, head_name = names[id(embedding.weight)], names[id(head.weight)]
    return embed_name, head_name, {embed_name: embedding.weight.data, head_name: head.weight.data}


def _batch_bits(model, weights: dict[str, torch.Tensor], chunks: list[list[int]], prefix: int, device) -> torch.Tensor:
    """Summed bits of the chunks' tokens (each after the boundary token), with `weights` swapped in."""
    length = max(len(chunk) for chunk in chunks) + 1
    ids = torch.full((len(chunks), length), prefix, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full((len(chunks), length - 1), -100, dtype=torch.long)
    for row, chunk in enumerate(chunks):
        ids[row, 1 : len(chunk) + 1] = torch.tensor(chunk)
        mask[row, : len(chunk) + 1] = 1
        targets[row, : len(chunk)] = torch.tensor(chunk)
    logits = torch.func.functional_call(
        model, weights, args=(), kwargs={"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    ).logits[:, :-1]
    nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(), ignore_index=-100, reduction="sum")
    return nats / math.log(2)


def plot_loss(report: dict, folder: Path) -> str:
    """The loss curve as a PNG in the artifact folder; returns its file name."""
    from tokeff.core.reporting import Line, line_plot

    name = "heal-loss.png"
    held = report["held_out"]
    line_plot(
        folder / name, [Line("batch", list(range(1, len(report["loss"]) + 1)), report["loss"], marker=None)],
        "step", "bits/byte above the base model", f"--heal: held-out bpb {held['before_bpb']:.4f} -> {held['after_bpb']:.4f}",
        guides=[0.0],
    )
    return name
