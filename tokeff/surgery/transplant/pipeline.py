"""`tokeff transplant`: give a base model a donor's tokenizer, without training.

Every donor token id gets a row in the new embedding (and untied lm_head): shared tokens copy
their base row, special tokens the base row of the same role, the rest are estimated
(`estimators/`, one module per method). Weights are streamed shard by shard (`checkpoint.py`), the donor's tokenizer,
chat template and special-token ids go into config.json and generation_config.json, and with an
evaluation text the manifest records what the transplant cost in bits per byte.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import processors

from tokeff.core import console
from tokeff.core.artifacts import ArtifactWriter, check_output_path
from tokeff.core.device import DTYPE_NAMES, resolve_device
from tokeff.core.errors import TokeffError
from tokeff.core.scoring import adds_bos
from tokeff.core.models import load_model, load_tokenizer
from tokeff.core.resolve import model_folder
from tokeff.surgery.transplant.checkpoint import Checkpoint, EmbeddingLayout, embedding_layout
from tokeff.surgery.transplant.estimators import ESTIMATORS, Combination, Estimator, estimate, row_mean
from tokeff.surgery.transplant.vocab import VocabMatch, match_vocabularies, parse_maps, same_vocabulary, special_roles

_REBUILD_FLOATS = 1 << 26  # float32 values a rebuild batch may upcast (256 MiB)


@dataclass
class TransplantOptions:
    method: str = "omp"
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's own Option specs (estimators/)
    pad_to: int = 64
    new_scale: str | float = "auto"  # on estimated output rows (scale.py); tied embeddings: input rows too
    tune_text: str | None = None  # for new_scale="auto"; default: text sampled from the base model
    maps: list[str] = field(default_factory=list)
    donor_tokenizer_only: bool = False
    eval_text: str | None = None
    eval_context: int | None = None  # default: 1024 or the model's positions, if fewer
    heal: bool = False  # fit the new rows afterwards (heal.py)
    heal_steps: int | None = None  # default: a budget of steps and seconds (heal.DEFAULT_STEPS)
    heal_text: str | None = None  # default: text sampled from the base model
    device: str = "auto"


def transplant(base: str, donor: str, out: Path, options: TransplantOptions, force: bool = False) -> dict:
    """Write the transplanted model to `out`; returns the manifest's parameters and metrics."""
    started = time.perf_counter()
    estimator = _check_options(options)
    check_output_path(out, force)
    device = resolve_device(options.device)
    base_folder = model_folder(base)
    base_tokenizer = load_tokenizer(base, folder=base_folder)
    donor_folder = _donor_folder(donor, options.donor_tokenizer_only)
    donor_tokenizer = load_tokenizer(donor, folder=donor_folder)
    if same_vocabulary(base_tokenizer, donor_tokenizer):
        raise TokeffError(f"{donor} uses the same tokenizer as {base}: nothing to transplant, use {base} as it is")
    checkpoint = Checkpoint(base_folder)
    layout = embedding_layout(base_folder, checkpoint)
    match = match_vocabularies(base_tokenizer, donor_tokenizer, parse_maps(options.maps))
    shared = len(match.shared_ids)
    if shared == 0:
        raise TokeffError(f"{base} and {donor} share no token (by canonical bytes): there is nothing to build on")
    too_big = [int(i) for i in match.base_row[match.base_row >= layout.rows]]
    if too_big:
        raise TokeffError(f"{base}: tokenizer id {too_big[0]} is past its {layout.rows} embedding rows")
    counts = match.counts()
    console.info(
        f"donor vocabulary: {counts['shared']:,} shared, {counts['new']:,} new, {counts['unreachable']:,} unreachable, "
        f"{sum(counts['special_matched'].values())} special tokens matched"
    )
    rows = _padded(max(match.donor_rows, len(donor_tokenizer)), options.pad_to)
    heal_text = _check_heal(options, checkpoint, layout, base_folder, rows, device)
    donor_embeddings = _donor_embeddings(donor, donor_folder, match) if estimator.needs_donor_embeddings else None
    combination = estimate(estimator, match, base_tokenizer, donor_embeddings, device)
    del donor_embeddings
    bos_added = _keep_base_bos(base_tokenizer, donor_tokenizer, match)
    replacements = {name: _rebuild(checkpoint.read(name), match, combination, rows) for name in layout.names}
    new_scale = _scale_output_rows(base, base_tokenizer, replacements, layout, match, donor_tokenizer, options, device)
    healing = _heal(base, replacements, layout, match, donor_tokenizer, heal_text, options, device) if options.heal else None

    parameters = {
        "transplant": {
            "method": options.method, "method_options": estimator.opts,
            "pad_to": options.pad_to, "new_scale": options.new_scale, "maps": list(options.maps), "donor_tokenizer_only": options.donor_tokenizer_only,
            "tied_embeddings": layout.tied, "architecture": layout.architecture, "vocab_rows": rows,
            "bos_added": bos_added, "heal": options.heal, "heal_steps": options.heal_steps, "heal_text": options.heal_text,
        }
    }
    with ArtifactWriter(out, kind="model", force=force, parameters=parameters) as writer:
        writer.add_input("base", base, base_folder)
        writer.add_input("donor", donor, donor_folder)
        checkpoint.write(writer, replacements)
        del replacements
        _write_config(base_folder, writer.path, donor_tokenizer, rows)
        donor_tokenizer.save_pretrained(writer.path)
        metrics: dict = {"vocabulary": counts, "special_tokens": _special_report(match, base_tokenizer, donor_tokenizer)}
        if new_scale is not None:
            metrics["new_scale"] = new_scale
        if healing is not None:
            from tokeff.surgery.transplant.heal import plot_loss

            metrics["heal"] = {**healing, "plot": plot_loss(healing, writer.path)}
        metrics["seconds_transplant"] = time.perf_counter() - started
        if options.eval_text is not None:
            metrics["quality"] = _evaluate(base, writer.path, options, match, device)
        metrics["peak_rss_mib"] = _peak_rss_mib()
        metrics["seconds"] = time.perf_counter() - started
        writer.metrics.update(metrics)
    return {"output": str(out), **parameters, **metrics}


def _check_options(options: TransplantOptions) -> Estimator:
    """The configured estimator; every option checked before any model loads."""
    estimator = ESTIMATORS.get(options.method)(**options.method_options)
    if options.donor_tokenizer_only and estimator.needs_donor_embeddings:
        alone = ", ".join(name for name, cls in ESTIMATORS.items() if not cls.needs_donor_embeddings)
        raise TokeffError(
            f"--method {options.method} needs the donor model's embeddings; with --donor-tokenizer-only use {alone}"
        )
    if options.new_scale != "auto":
        try:
            options.new_scale = float(options.new_scale)
        except ValueError:
            raise TokeffError(f"--new-scale must be auto or a number, got {options.new_scale!r}") from None
        if not options.new_scale > 0:
            raise TokeffError(f"--new-scale must be positive, got {options.new_scale:g}")
    if options.tune_text is not None and options.new_scale != "auto":
        raise TokeffError("--tune-text only serves --new-scale auto")
    if options.pad_to < 1:
        raise TokeffError(f"--pad-to must be at least 1, got {options.pad_to}")
    if not options.heal and (options.heal_steps is not None or options.heal_text is not None):
        raise TokeffError("--heal-steps and --heal-text only serve --heal")
    if options.heal_steps is not None and options.heal_steps < 1:
        raise TokeffError(f"--heal-steps must be at least 1, got {options.heal_steps}")
    return estimator


def _keep_base_bos(base_tokenizer, donor_tokenizer, match: VocabMatch) -> str | None:
    """When the base tokenizer starts every text with BOS and the donor's does not, make the output
    tokenizer start with the donor token that carries the base BOS row. Models trained always to see
    BOS (Gemma) degrade badly without it; the donor's own habit does not matter to the base model."""
    if not adds_bos(base_tokenizer) or adds_bos(donor_tokenizer):
        return None
    carriers = [d for d, (b, _) in match.special_matches.items() if b == base_tokenizer.bos_token_id]
    if not carriers:
        console.warn(f"the base model expects {base_tokenizer.bos_token} first, and no donor token maps to it (use --map)")
        return None
    token_id = donor_tokenizer.bos_token_id if donor_tokenizer.bos_token_id in carriers else min(carriers)
    token = donor_tokenizer.convert_ids_to_tokens(token_id)
    donor_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A {token} $B", special_tokens=[(token, token_id)]
    )
    donor_tokenizer.bos_token = token
    console.info(f"the output tokenizer starts every text with {token} (the base model's {base_tokenizer.bos_token} row)")
    return token


def _donor_folder(donor: str, tokenizer_only: bool) -> Path:
    """A donor model's folder; with --donor-tokenizer-only a bare tokenizer folder is enough."""
    path = Path(donor).expanduser()
    if tokenizer_only and path.is_dir() and not (path / "config.json").is_file():
        if not (path / "tokenizer.json").is_file():
            raise TokeffError(f"{donor}: folder has neither a tokenizer.json nor a config.json")
        return path
    return model_folder(donor)


def _donor_embeddings(donor: str, folder: Path, match: VocabMatch) -> torch.Tensor:
    checkpoint = Checkpoint(folder)
    layout = embedding_layout(folder, checkpoint)
    embeddings = checkpoint.read(layout.embed)
    if embeddings.shape[0] < match.donor_rows:
        raise TokeffError(f"{donor}: tokenizer has {match.donor_rows} ids but the model only {embeddings.shape[0]} rows")
    return embeddings.float()


def _padded(count: int, multiple: int) -> int:
    return math.ceil(count / multiple) * multiple


@torch.inference_mode()
def _rebuild(matrix: torch.Tensor, match: VocabMatch, combination: Combination, rows: int) -> torch.Tensor:
    """The donor-indexed matrix: copied rows, estimated rows, zero padding up to `rows`."""
    hidden = matrix.shape[1]
    out = matrix.new_zeros(rows, hidden)
    known = torch.from_numpy(np.flatnonzero(match.base_row >= 0))
    source = torch.from_numpy(match.base_row)[known]
    for start in range(0, len(known), _REBUILD_FLOATS // hidden):  # gathered copies of bounded size
        part = slice(start, start + _REBUILD_FLOATS // hidden)
        out[known[part]] = matrix[source[part]]
    estimated = torch.from_numpy(match.estimated_ids)
    mean = row_mean(matrix)
    # Each batch upcasts the base rows it refers to (up to width per estimate) and its output rows:
    # about _REBUILD_FLOATS float32 values (256 MiB) whatever the vocabulary and hidden size.
    batch = max(1, _REBUILD_FLOATS // (hidden * (combination.indices.shape[1] + 1)))
    for start in range(0, len(estimated), batch):
        part = slice(start, start + batch)
        out[estimated[part]] = combination[part].apply(matrix, mean).to(matrix.dtype)
    return out


@torch.inference_mode()
def _scale_output_rows(base: str, base_tokenizer, replacements: dict[str, torch.Tensor], layout: EmbeddingLayout, match: VocabMatch,
                       tokenizer, options: TransplantOptions, device: torch.device) -> dict | None:
    """Multiply the estimated output rows (with tied embeddings: the input rows too) by --new-scale,
    choosing it first when it is auto. None when there is nothing to scale."""
    if options.method == "zero" or len(match.estimated_ids) == 0:
        return None
    scaled = layout.names if layout.tied else [layout.lm_head]
    estimated = torch.from_numpy(match.estimated_ids)
    if options.new_scale == "auto":
        from tokeff.core.textio import read_text
        from tokeff.surgery.transplant import scale

        # In the checkpoint's own dtype: "auto" would upcast a bf16 model to float32 on the CPU; and
        # with its layers read from their shards one at a time: the whole base model is never in memory.
        dtype = str(replacements[layout.embed].dtype).removeprefix("torch.")
        base_lm = load_model(base, device=str(device), dtype=dtype if dtype in DTYPE_NAMES else "auto",
                             tokenizer=base_tokenizer, stream_layers=True)
        if options.tune_text is None:
            documents, source = scale.sampled_documents(base_lm), f"sampled from {base}"
        else:
            documents, source = scale.file_documents(read_text(options.tune_text)), str(options.tune_text)
        choice = scale.choose_scale(base_lm, replacements, layout.embed, scaled[-1], estimated, tokenizer, documents, source)
        del base_lm
        report, value = choice.to_json(), choice.scale
    else:
        report, value = {"value": options.new_scale, "text": "given"}, options.new_scale
    if value != 1.0:
        for name in scaled:
            replacements[name][estimated] *= value
    return report


def _check_heal(options: TransplantOptions, checkpoint: Checkpoint, layout: EmbeddingLayout, folder: Path, rows: int,
                device: torch.device):
    """Before any work: the --heal text read and cut, and the memory a heal needs checked."""
    if not options.heal:
        return None
    from tokeff.core.model_checks import text_config
    from tokeff.surgery.transplant import heal

    heal.check_memory(checkpoint, layout, text_config(folder), rows, device)
    return heal.read_heal_text(options.heal_text) if options.heal_text is not None else None


def _heal(base: str, replacements: dict[str, torch.Tensor], layout: EmbeddingLayout, match: VocabMatch, tokenizer,
          text, options: TransplantOptions, device: torch.device) -> dict:
    from tokeff.surgery.transplant import heal

    base_lm = load_model(base, device=str(device), dtype="float32")  # fitted in float32 whatever the checkpoint holds
    text = text or heal.sampled_text(base_lm)
    return heal.heal_rows(base_lm, replacements, layout, match.estimated_ids, tokenizer, text, options.heal_steps)


def _write_config(base_folder: Path, folder: Path, tokenizer, rows: int) -> None:
    """Base config with the new vocabulary size and the donor's special-token ids."""
    config = json.loads((base_folder / "config.json").read_text())
    roles = special_roles(tokenizer)
    ids = {"bos_token_id": roles.get("bos"), "eos_token_id": roles.get("eos"), "pad_token_id": roles.get("pad")}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for section in {id(config): config, id(text): text}.values():
        if "vocab_size" in section or section is text:
            section["vocab_size"] = rows
        section.update(ids)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {}
    if (base_folder / "generation_config.json").is_file():
        generation = json.loads((base_folder / "generation_config.json").read_text())
    stops = [token for token in (roles.get("eos"), roles.get("turn_end")) if token is not None]
    generation.update(
        bos_token_id=roles.get("bos"),
        eos_token_id=sorted(set(stops)) if len(set(stops)) > 1 else (stops[0] if stops else None),
        pad_token_id=roles.get("pad", roles.get("eos")),
    )
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _special_report(match: VocabMatch, base_tokenizer, donor_tokenizer) -> list[dict]:
    return [
        {
            "donor": donor_tokenizer.convert_ids_to_tokens(donor_id),
            "base": base_tokenizer.convert_ids_to_tokens(base_id),
            "how": how,
        }
        for donor_id, (base_id, how) in sorted(match.special_matches.items())
    ]


def _evaluate(base: str, folder: Path, options: TransplantOptions, match: VocabMatch, device: torch.device) -> dict:
    from tokeff.core.textio import read_text
    from tokeff.surgery.transplant.quality import quality_report, summarize

    text = read_text(options.eval_text)
    base_lm = load_model(base, device=str(device))
    new_lm = load_model(str(folder), device=str(device))  # stock from_pretrained: proves the output loads
    limit = min(lm.max_positions or 1024 for lm in (base_lm, new_lm))
    report = quality_report(base_lm, new_lm, text, match.estimated_ids, options.eval_context or min(1024, limit))
    report["file"] = str(options.eval_text)
    console.info(summarize(report))
    return report


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
