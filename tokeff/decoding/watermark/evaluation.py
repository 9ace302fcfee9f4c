"""How well a key works: detection power against length and random edits, false positives on unwatermarked text.

Watermarked texts are cut into windows of each length (up to `windows_per_text` consecutive,
non-overlapping windows per text, so short lengths get more samples), edited at random (substitutions, insertions and
deletions of random vocabulary tokens), decoded to text and re-tokenized, as a detector would
meet them. False positives are counted on texts that never saw the key: the model's own samples
and human text. Rates come with Clopper-Pearson 95% intervals, because a rate from a few hundred
texts is not a point.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from tokeff.core import console
from tokeff.core.reporting import STYLES, Line, line_plot
from tokeff.decoding.watermark.detection import detect_tokens
from tokeff.decoding.watermark.keys import WatermarkKey

EDIT_KINDS = ("substitution", "insertion", "deletion")
MIXED = "mixed"  # each edit's kind drawn uniformly from EDIT_KINDS


def apply_edits(
    tokens: list[int], rate: float, kind: str, rng: np.random.Generator, replacements: np.ndarray
) -> list[int]:
    """round(rate * len(tokens)) random edits of `kind` (or of random kinds for "mixed")."""
    edited = list(tokens)
    for _ in range(int(round(rate * len(tokens)))):
        this = EDIT_KINDS[rng.integers(len(EDIT_KINDS))] if kind == MIXED else kind
        if this == "deletion" and edited:
            del edited[rng.integers(len(edited))]
        elif this == "insertion":
            edited.insert(int(rng.integers(len(edited) + 1)), int(rng.choice(replacements)))
        elif this == "substitution" and edited:
            edited[rng.integers(len(edited))] = int(rng.choice(replacements))
    return edited


def rate_with_interval(hits: int, total: int) -> dict[str, Any]:
    if total == 0:
        return {"texts": 0, "hits": 0, "rate": None, "ci95": None}
    interval = binomtest(hits, total).proportion_ci(0.95, method="exact")
    return {"texts": total, "hits": hits, "rate": hits / total, "ci95": [interval.low, interval.high]}


@dataclass
class WatermarkEval:
    scheme: str
    parameters: dict[str, Any]
    alpha: float
    power_vs_length: list[dict[str, Any]] = field(default_factory=list)  # edit_rate, length, texts, hits, rate
    power_vs_edits: list[dict[str, Any]] = field(default_factory=list)  # kind, edit_rate, length, ...
    false_positives: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> texts, hits, rate
    detection_seconds: float = 0.0

    def min_length(self, edit_rate: float, power: float = 0.9) -> int | None:
        """The smallest evaluated length whose detection rate reaches `power` at this edit rate."""
        lengths = [row["length"] for row in self.power_vs_length
                   if row["edit_rate"] == edit_rate and row["rate"] is not None and row["rate"] >= power]
        return min(lengths) if lengths else None

    def to_json(self) -> dict[str, Any]:
        rates = sorted({row["edit_rate"] for row in self.power_vs_length})
        return {**asdict(self), "min_length_90": {str(rate): self.min_length(rate) for rate in rates}}


def _detected(key: WatermarkKey, tokenizer, token_lists: list[list[int]], alpha: float) -> int:
    """How many token sequences test positive once decoded to text and re-tokenized (what detect sees)."""
    texts = tokenizer.batch_decode(token_lists, skip_special_tokens=True)
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(bool(result.watermarked) for result in detect_tokens(key, token_lists, alpha))


def evaluate_detection(
    key: WatermarkKey,
    tokenizer,
    watermarked: list[list[int]],
    unwatermarked: dict[str, list[list[int]]],
    lengths: list[int],
    edit_rates: list[float],
    edit_length: int | None = None,
    edit_kinds: tuple[str, ...] = EDIT_KINDS,
    alpha: float = 0.01,
    seed: int = 0,
    windows_per_text: int = 4,
) -> WatermarkEval:
    """Power of the key on its `watermarked` token sequences and false positives on `unwatermarked` ones.

    Power vs length uses mixed edits at each of `edit_rates`; power vs edit rate uses each edit kind
    separately at `edit_length` tokens (skipped when None).
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    replacements = np.array([token for token in range(len(tokenizer)) if token not in special])
    result = WatermarkEval(key.scheme, dict(key.params), alpha)
    cells = [(MIXED, rate, length) for rate in edit_rates for length in lengths]
    if edit_length is not None:
        cells += [(kind, rate, edit_length) for kind in edit_kinds for rate in edit_rates if rate > 0]
    for kind, rate, length in console.track(cells, f"{key.scheme}: power"):
        windows = [tokens[start : start + length] for tokens in watermarked
                   for start in range(0, len(tokens) - length + 1, length)[:windows_per_text]]
        edited = [apply_edits(window, rate, kind, rng, replacements) for window in windows]
        row = {"kind": kind, "edit_rate": rate, "length": length,
               **rate_with_interval(_detected(key, tokenizer, edited, alpha), len(edited))}
        (result.power_vs_length if kind == MIXED else result.power_vs_edits).append(row)
    for source, token_lists in unwatermarked.items():
        hits = _detected(key, tokenizer, token_lists, alpha)
        result.false_positives[source] = rate_with_interval(hits, len(token_lists))
    if len(unwatermarked) > 1:
        total = sum(entry["texts"] for entry in result.false_positives.values())
        hits = sum(entry["hits"] for entry in result.false_positives.values())
        result.false_positives["all"] = rate_with_interval(hits, total)
    result.detection_seconds = time.perf_counter() - started
    return result


def plot_power(evals: list[WatermarkEval], folder: Path, prefix: str = "") -> list[Path]:
    """power_vs_length.png (one line per scheme and edit rate) and, if measured, power_vs_edits.png."""
    common = dict(ylabel=f"detected at p <= {evals[0].alpha:g}", ylim=(-0.02, 1.02), guides=(0.9,))
    lines = _lines(evals, "power_vs_length", "edit_rate", "length", lambda scheme, rate: f"{scheme}, {rate:.0%} edits")
    written = [line_plot(folder / f"{prefix}power_vs_length.png", lines, "tokens",
                         title="Detection power vs length (random edits)", xscale="log", **common)]
    if any(evaluation.power_vs_edits for evaluation in evals):
        lines = _lines(evals, "power_vs_edits", "kind", "edit_rate", lambda scheme, kind: f"{scheme}, {kind}")
        length = evals[0].power_vs_edits[0]["length"] if evals[0].power_vs_edits else "?"
        written.append(line_plot(folder / f"{prefix}power_vs_edits.png", lines, "edit rate",
                                 title=f"Detection power vs edit rate ({length} tokens)", **common))
    return written


def _lines(evals: list[WatermarkEval], table: str, group: str, x: str, label) -> list[Line]:
    """One line per scheme (its own style) and value of `group`: detection rate against column `x`."""
    lines = []
    for index, evaluation in enumerate(evals):
        rows = getattr(evaluation, table)
        for value in sorted({row[group] for row in rows}):
            kept = [row for row in rows if row[group] == value and row["rate"] is not None]
            lines.append(Line(label(evaluation.scheme, value), [row[x] for row in kept], [row["rate"] for row in kept],
                              STYLES[index % len(STYLES)]))
    return lines


def split_corpus(text: str) -> tuple[str, str]:
    """A corpus cut in two at a line break near the middle: prompts from one half, human text from the other."""
    middle = text.find("\n", len(text) // 2)
    middle = len(text) // 2 if middle < 0 else middle
    return text[:middle], text[middle:]


def prompts_from_text(tokenizer, text: str, count: int, prompt_tokens: int = 32, min_chars: int = 200) -> list[str]:
    """The first `prompt_tokens` tokens of each paragraph (line of `min_chars` or more, not a heading)."""
    paragraphs = [line.strip() for line in text.splitlines()
                  if len(line.strip()) >= min_chars and not line.strip().startswith("=")]
    prompts = []
    for paragraph in paragraphs[:count]:
        ids = tokenizer(paragraph, add_special_tokens=False)["input_ids"][:prompt_tokens]
        prompts.append(tokenizer.decode(ids).strip())
    return prompts


def human_windows(tokenizer, text: str, count: int, length: int) -> list[list[int]]:
    """Up to `count` consecutive, non-overlapping windows of `length` tokens of human text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[start : start + length] for start in range(0, len(ids) - length + 1, length)][:count]
