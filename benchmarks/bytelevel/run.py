"""Byte-level bits per byte, batched, beside token-level `eval bpb` on the same held-out text.

Held-out text: `--bytes` bytes of WikiText-2 validation from a line start (`--offset`, default the file's end); nothing in
tokeff is fitted or tuned on it. Per model, in the same run: token-level bits per byte (tokeff's
`bits_per_byte`, 1,024-token windows, stride 512), byte-level bits per byte with the batched
covering-tree scorer (2,048-byte windows after 2,048 bytes of context), and the seconds of each.
The ensembles (equal-weight mix and product, and `--weight auto` over mixes and over products) are
computed from the members' byte-level distributions on the same windows. Before timing, each
path runs once on a few bytes (Numba's compile and torch's first calls are not counted). The incremental reference (one model call per
byte) runs on the first `--reference-bytes` bytes of the text beside the batched scorer, for its
speed and to check that both give the same number. 95% intervals: block bootstrap over 256-byte
blocks (1,000 resamples, seed 0), paired for differences.

    python benchmarks/bytelevel/run.py [--bytes 16384] [--reference-bytes 512] [--offset 600000]

Writes docs/bytelevel.md, docs/bytelevel.json and docs/bytelevel.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tokeff.core.evaluation import bits_per_byte
from tokeff.core.scoring import window_plan
from tokeff.core.models import load_model
from tokeff.core.reporting import Bars, Panel, plot_panels
from tokeff.core.weights import AUTO
from tokeff.decoding.bytelevel import byte_bits_per_byte
from tokeff.decoding.bytelevel import scoring
from tokeff.decoding.bytelevel.scoring import ensemble_nll
from tokeff.decoding.bytelevel.utf8 import partial_start

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
MODELS = ("smollm2-135m", "gemma3-270m")
BLOCK = 256


def held_out(count: int, offset: int | None) -> tuple[str, int]:
    """`count` bytes of WikiText-2 validation from the first line start at or after `offset` (None: the last
    `count` bytes), cut back to a line end, and their byte offset in the file."""
    data = DATA.read_bytes()
    start = data.index(b"\n", max(0, len(data) - count if offset is None else offset - 1)) + 1
    end = min(len(data), start + count)
    if end < len(data):
        end = data.rindex(b"\n", start, end) + 1
    return data[start:end].decode("utf-8"), start


def bootstrap(nll: torch.Tensor, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of bits per byte from per-byte nats (or paired differences), resampling 256-byte blocks."""
    blocks = nll[: len(nll) // BLOCK * BLOCK].view(-1, BLOCK).sum(1)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(blocks), (resamples, len(blocks)), generator=generator)
    values = blocks[picks].sum(1) / (len(blocks) * BLOCK * math.log(2))
    low, high = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype)).tolist()
    return low, high


def work(lm, data: bytes, token_ids: list[int], tree_tokens: int) -> dict:
    """Multiply-adds per byte that each scorer cannot avoid, from the model's shapes: every token fed runs the
    body (one multiply-add per non-embedding weight), every distribution needed runs the output layer
    (vocabulary x hidden). Token level feeds its overlapping windows and keeps the logits of scored tokens only;
    byte level feeds every covering-tree node and needs every scored node's whole distribution (one node per
    byte position: the tokenization of each prefix), its context prompt keeping one row."""
    model = lm.model
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embedding.numel() - (0 if head is embedding else head.numel())
    row = head.shape[0] * head.shape[1]
    token_fed = sum(end - start + 1 for start, end, _ in window_plan(len(token_ids), 1023, 512))
    plan = scoring.windows(data, 2048, 2048)
    context_tokens = sum(len(lm.encode_plain(data[c:s].decode("utf-8"))) + 1 for c, s, _ in plan if s > c)
    token_macs = token_fed * body + len(token_ids) * row
    byte_macs = tree_tokens * body + (tree_tokens - context_tokens) * row
    return {"body_params": body, "head_row_macs": row, "token_fed_per_byte": token_fed / len(data),
            "token_rows_per_byte": len(token_ids) / len(data), "byte_fed_per_byte": tree_tokens / len(data),
            "byte_rows_per_byte": (tree_tokens - context_tokens) / len(data), "macs_ratio": byte_macs / token_macs}


def run(n_bytes: int, reference_bytes: int, start: int | None) -> dict:
    text, offset = held_out(n_bytes, start)
    data = text.encode()
    lms = {spec: load_model(spec, device="cpu") for spec in MODELS}
    rows, nll, logprobs = {}, {}, []
    for spec, lm in lms.items():
        bits_per_byte(lm, text[:200])  # warm-up, untimed
        byte_bits_per_byte([lm], text[:200], context_bytes=2048)
        started = time.perf_counter()
        token = bits_per_byte(lm, text)
        token_seconds = time.perf_counter() - started
        byte = byte_bits_per_byte([lm], text, context_bytes=2048)
        nll[spec] = byte.byte_nll[0]
        logprobs.append(byte.member_logprobs[0])
        rows[spec] = {
            "token_bpb": token.bpb, "token_seconds": token_seconds, "byte_bpb": byte.bpb, "byte_seconds": byte.seconds,
            "byte_vs_token_time": byte.seconds / token_seconds, "model_calls_per_byte": byte.model_calls[0] / byte.bytes,
            "tree_tokens_per_byte": byte.tree_tokens[0] / byte.bytes, "tokens": token.tokens,
            "byte_ci": bootstrap(byte.byte_nll[0]),
            "work": work(lm, data, token.token_ids, byte.tree_tokens[0]),
        }
        print(spec, rows[spec], file=sys.stderr)
    # `-m A -m B` scores its members one after the other on the same windows, then combines their
    # distributions: its time is the members' byte-level times (the combination takes milliseconds).
    ensemble_seconds = sum(rows[spec]["byte_seconds"] for spec in MODELS)
    windows = len(scoring.windows(data, 2048, 2048))
    ensembles = {}
    logprobs = torch.stack(logprobs)
    best = min(MODELS, key=lambda spec: rows[spec]["byte_bpb"])
    ensembles_run = (("mix", None, "mix"), ("product", None, "product"), ("auto mix", AUTO, "mix"), ("auto product", AUTO, "product"))
    for name, weights, mode in ensembles_run:
        values = ensemble_nll(logprobs, data, weights, mode)
        ensembles[name] = {"bpb": float(values.sum()) / (math.log(2) * len(data)), "ci": bootstrap(values),
                           f"minus_{best}_ci": bootstrap(values - nll[best])}
    slowest_token = max(rows[spec]["token_seconds"] for spec in MODELS)
    members_token = sum(rows[spec]["token_seconds"] for spec in MODELS)
    reference = data[:reference_bytes]
    reference_text = reference[: partial_start(reference)].decode()  # the window's first bytes, whole characters
    incremental = byte_bits_per_byte([lms[MODELS[0]]], reference_text, context_bytes=2048, batched=False)
    batched = byte_bits_per_byte([lms[MODELS[0]]], reference_text, context_bytes=2048)
    return {
        "generation": generation(text),
        "bytes": len(data), "file_offset": offset, "windows": windows, "segment_bytes": 2048, "context_bytes": 2048,
        "models": rows, "ensembles": ensembles, "ensemble_seconds": ensemble_seconds,
        "ensemble_vs_slowest_token_time": ensemble_seconds / slowest_token,
        "ensemble_vs_members_token_time": ensemble_seconds / members_token,
        "reference": {
            "model": MODELS[0], "bytes": incremental.bytes, "incremental_bpb": incremental.bpb, "batched_bpb": batched.bpb,
            "incremental_seconds": incremental.seconds, "batched_seconds": batched.seconds,
            "incremental_calls_per_byte": incremental.model_calls[0] / incremental.bytes,
            "batched_calls_per_byte": batched.model_calls[0] / batched.bytes,
        },
    }


def generation(text: str, prompts: int = 3, new_bytes: int = 64) -> list[dict]:
    """`tokeff ensemble --greedy-baseline` (equal-weight mix, greedy bytes) on the first lines of the held-out text:
    model calls and seconds per generated byte, beside each member's plain greedy token decoding of the same prompt."""
    out = []
    for prompt in [line for line in text.splitlines() if len(line) > 80][:prompts]:
        command = [sys.executable, "-m", "tokeff", "ensemble", *(arg for spec in MODELS for arg in ("-m", spec)),
                   "--prompt", prompt[:200], "--max-new-bytes", str(new_bytes), "--ignore-eos", "--greedy-baseline", "--json"]
        payload = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        out.append({key: payload[key] for key in ("bytes", "seconds_per_byte", "model_calls_per_byte", "greedy")})
    return out


def write_doc(report: dict, command: str, path: Path) -> None:
    ci = lambda pair: f"[{pair[0]:.4f}, {pair[1]:.4f}]"  # noqa: E731
    lines = [
        "# Byte-level bits per byte, batched",
        "",
        f"Reproduce: `{command}` (CPU, shared 2-core machine).",
        "",
        f"Held-out text: {report['bytes']:,} bytes of `wikitext2-valid.txt` from byte {report['file_offset']:,} "
        "(line start to line end; nothing is fitted or tuned on it). Token level: `tokeff eval bpb` (1,024-token windows, stride 512). "
        f"Byte level: `tokeff eval bpb --byte-level` / `-m A -m B` ({report['windows']} window(s) of up to 2,048 scored bytes, "
        "each after 2,048 bytes of context), the covering trees of each window scored in batched tree-attention passes. "
        "Intervals: 95%, block bootstrap over 256-byte blocks.",
        "",
        "| model | token-level bpb | byte-level bpb | byte-level 95% CI | token s | byte s | byte / token time | calls / byte | tree tokens / byte |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for spec, row in report["models"].items():
        lines.append(f"| {spec} | {row['token_bpb']:.4f} | {row['byte_bpb']:.4f} | {ci(row['byte_ci'])} | {row['token_seconds']:.1f} "
                     f"| {row['byte_seconds']:.1f} | {row['byte_vs_token_time']:.2f}x | {row['model_calls_per_byte']:.4f} "
                     f"| {row['tree_tokens_per_byte']:.2f} |")
    lines += [
        "",
        "What each scorer must compute, from the model's shapes and the counts of this run (multiply-adds of "
        "attention scores left out): token level feeds its overlapping windows through the body and runs the "
        "output layer for the scored tokens only; byte level feeds every covering-tree node and needs the whole "
        "next-token distribution of one node per byte position (the tokenization of each prefix), so the output "
        "layer runs about once per byte. The last column is the time ratio no implementation of this exact scorer "
        "goes below at equal speed per multiply-add.",
        "",
        "| model | body params | token: fed / byte | token: output rows / byte | byte: fed / byte | byte: output rows / byte | multiply-add ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for spec, row in report["models"].items():
        w = row["work"]
        lines.append(f"| {spec} | {w['body_params'] / 1e6:.0f}M (+ {w['head_row_macs'] / 1e6:.0f}M per output row) "
                     f"| {w['token_fed_per_byte']:.2f} | {w['token_rows_per_byte']:.2f} | {w['byte_fed_per_byte']:.2f} "
                     f"| {w['byte_rows_per_byte']:.2f} | {w['macs_ratio']:.2f}x |")
    best_key = next(key for key in report["ensembles"]["mix"] if key.startswith("minus_"))
    lines += [
        "",
        f"Ensembles of both, from the members' distributions on the same windows; the last column is the paired "
        f"difference with the best member ({best_key[6:-3]}), bits per byte. Ensemble scoring (both members): "
        f"{report['ensemble_seconds']:.1f} s, {report['ensemble_vs_slowest_token_time']:.2f}x the slower member's token-level time "
        f"({report['ensemble_vs_members_token_time']:.2f}x both members' token-level times together). "
        "`auto` averages over 9 weightings of the two members (weights 0, 1/8, ..., 1; the members alone among them) by "
        "their posteriors, so its total bits are at most the best weighting's + log2(9) = 3.17 bits.",
        "",
        "| ensemble | byte-level bpb | 95% CI | minus best member, 95% CI |",
        "| --- | ---: | --- | --- |",
    ]
    for name, row in report["ensembles"].items():
        lines.append(f"| {name} | {row['bpb']:.4f} | {ci(row['ci'])} | {ci(row[best_key])} |")
    ref = report["reference"]
    lines += [
        "",
        f"Batched against the incremental reference (one model call per byte), {ref['model']}, the first {ref['bytes']:,} bytes: "
        f"{ref['batched_bpb']:.5f} vs {ref['incremental_bpb']:.5f} bpb; {ref['batched_seconds']:.1f} s vs "
        f"{ref['incremental_seconds']:.1f} s ({ref['incremental_seconds'] / ref['batched_seconds']:.0f}x); "
        f"{ref['batched_calls_per_byte']:.4f} vs {ref['incremental_calls_per_byte']:.2f} model calls per byte.",
        "",
        "Times are single runs, token and byte level side by side in one process; the ratios are what count "
        f"(1-minute load average {report['load_average'][0]:.1f} at the start, {report['load_average'][1]:.1f} at the end, "
        "on 2 cores: other jobs shared the machine).",
        "",
        "Generation: `tokeff ensemble -m smollm2-135m -m gemma3-270m --greedy-baseline` (equal-weight mix, the most probable "
        "byte at each step, one byte at a time) on the first lines of the held-out text (up to 200 characters each), "
        "64 new bytes, beside each member's greedy token decoding of the same prompt:",
        "",
        "| prompt | ensemble ms / byte | ensemble calls / byte (per member) | "
        + " | ".join(f"{spec} greedy ms / byte | {spec} greedy calls / byte" for spec in MODELS) + " |",
        "| --- | ---: | --- | " + " | ".join("---: | ---:" for _ in MODELS) + " |",
        *(f"| {index + 1} | {1000 * row['seconds_per_byte']:.0f} | "
          + ", ".join(f"{calls:.2f}" for calls in row["model_calls_per_byte"].values()) + " | "
          + " | ".join(f"{1000 * row['greedy'][spec]['seconds_per_byte']:.0f} | {row['greedy'][spec]['model_calls_per_byte']:.2f}"
                       for spec in MODELS) + " |"
          for index, row in enumerate(report["generation"])),
        "",
        "![results](bytelevel.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(report: dict, path: Path) -> None:
    names = list(report["models"]) + [f"ensemble {name}" for name in report["ensembles"]]
    values = [row["byte_bpb"] for row in report["models"].values()] + [row["bpb"] for row in report["ensembles"].values()]
    ratios = [row["byte_vs_token_time"] for row in report["models"].values()] + [report["ensemble_vs_slowest_token_time"]]
    plot_panels(path, [
        Panel("", "bits per byte (byte level)", "held-out WikiText", bars=Bars(names, values)),
        Panel("", "byte-level time / token-level time", "scoring time", bars=Bars(list(report["models"]) + ["ensemble"], ratios),
              guides=(3.0, 6.0)),
    ], size=(11, 4.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=16384)
    parser.add_argument("--reference-bytes", type=int, default=512)
    parser.add_argument("--offset", type=int, default=None, help="start at the first line at or after this byte (default: the file's end)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()[0]
    report = run(args.bytes, args.reference_bytes, args.offset)
    report["load_average"] = [load_before, os.getloadavg()[0]]  # other jobs on the machine move the times
    offset = "" if args.offset is None else f" --offset {args.offset}"
    command = f"python benchmarks/bytelevel/run.py --bytes {args.bytes} --reference-bytes {args.reference_bytes}{offset}"
    docs = ROOT / "docs"
    (docs / "bytelevel.json").write_text(json.dumps({"command": command, **report}, indent=2))
    write_doc(report, command, docs / "bytelevel.md")
    plot(report, docs / "bytelevel.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
