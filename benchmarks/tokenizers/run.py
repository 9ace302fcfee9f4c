"""Supertoken and dynamic tokenizers: what they save in sequence length and what it costs in bits per byte.

Data: the first --train-fraction of ../shared/data/wikitext2-valid.txt and tinyshakespeare.txt
trains the tokenizers; the rest of each file (never the same bytes) is what is measured.

Parts (each merges its results into docs/tokenizers.json; docs/tokenizers.md and the plot are
rebuilt from the whole JSON, so a part can be re-run alone):
  tokenizers  bytes per token of smollm2-135m's and gemma3-270m's own tokenizers, and of plain
              and supertoken BPEs of the same sizes trained by tokeff (`tokeff tokenizer train`).
  transplant  smollm2-135m transplanted into the 16k supertoken tokenizer with `tokeff transplant`
              (zero-shot): sequence length and bits per byte against the original.
  dynamic     `tokeff dynamic` on smollm2-135m at several merge counts: within words, across
              words, prefill mode, and the embedding weightings.

    python benchmarks/tokenizers/run.py [--parts tokenizers,transplant,dynamic] [--eval-bytes 24000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokeff.core.reporting import Line, Panel, plot_panels

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
CORPORA = {"wikitext": DATA / "wikitext2-valid.txt", "shakespeare": DATA / "tinyshakespeare.txt"}
DOCS = ROOT / "docs"
RESULTS = DOCS / "tokenizers.json"
WORK = Path(os.environ.get("TOKEFF_BENCH_WORK") or Path(tempfile.gettempdir()) / "tokeff-bench-tokenizers")
TRANSPLANT_TOKENIZER = "supertoken-16384"
# (name, vocab, supertokens, stage-1 merges); stage 1 at about 3/4 of the vocabulary below 32k, as
# SuperBPE's best transition points sit at 80-90% of a 200k vocabulary; at 32k and 49k, stage 1
# stops at 16k merges so that stage 2 still has room on a 2 MB corpus.
TOKENIZERS = [
    ("plain-8192", 8192, False, None),
    ("supertoken-8192", 8192, True, 6000),
    ("plain-16384", 16384, False, None),
    ("supertoken-16384", 16384, True, 12000),
    ("plain-32768", 32768, False, None),
    ("supertoken-32768", 32768, True, 16000),
    ("plain-49152", 49152, False, None),
    ("supertoken-49152", 49152, True, 16000),
]
DYNAMIC_RUNS = [  # (label, merge counts, options)
    ("within words", [16, 64, 256, 1024], {}),
    ("across words", [256, 1024], {"across_words": True}),
    ("prefill 0.5, within words", [256, 1024], {"prefill": 0.5}),
    ("embedding linear", [256], {"embedding": "linear"}),
    ("embedding last", [256], {"embedding": "last"}),
]


def split_corpora(fraction: float) -> dict[str, dict[str, str]]:
    """Each corpus cut at a line boundary: train part first, eval part after it."""
    parts = {}
    for name, path in CORPORA.items():
        text = path.read_text(encoding="utf-8")
        cut = text.index("\n", int(len(text) * fraction)) + 1
        parts[name] = {"train": text[:cut], "eval": text[cut:]}
    return parts


def part_tokenizers(corpora: dict, record: dict) -> None:
    from tokeff.core.errors import TokeffError
    from tokeff.core.models import load_tokenizer
    from tokeff.tokenizers_tools.artifact import write_tokenizer
    from tokeff.tokenizers_tools.stats import tokenizer_stats
    from tokeff.tokenizers_tools.training import train_bpe

    train_texts = [corpora[name]["train"] for name in CORPORA]
    WORK.mkdir(parents=True, exist_ok=True)
    train_files = []
    for name in CORPORA:
        file = WORK / f"{name}-train.txt"
        file.write_text(corpora[name]["train"], encoding="utf-8")
        train_files.append(file)
    rows = []
    for name in ("smollm2-135m", "gemma3-270m"):
        tokenizer = load_tokenizer(name)
        rows.append(_stats_row(name, "own", tokenizer, corpora, tokenizer_stats))
    for name, vocab, supertokens, stage1 in TOKENIZERS:
        started = time.perf_counter()
        try:
            trained = train_bpe(train_texts, vocab, supertokens=supertokens, stage1_merges=stage1)
        except TokeffError as exc:
            rows.append({"tokenizer": name, "kind": "tokeff", "vocab_size": vocab, "error": str(exc)})
            print(f"{name}: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - started
        out = WORK / name
        write_tokenizer(
            trained, out, force=True, texts=train_files,
            parameters={"vocab_size": trained.vocab_size, "supertokens": supertokens, "stage1_merges": stage1},
            metrics={"seconds": seconds},
        )
        row = _stats_row(name, "tokeff", load_tokenizer(str(out)), corpora, tokenizer_stats)
        row.update(train_seconds=seconds, stage1_merges=stage1, stage1_vocab=trained.stage1_vocab, path=str(out))
        rows.append(row)
        print(json.dumps({key: row[key] for key in ("tokenizer", "train_seconds")}), flush=True)
    record["tokenizers"] = {"train_bytes": sum(len(text.encode()) for text in train_texts), "rows": rows}


def _stats_row(name, kind, tokenizer, corpora, tokenizer_stats) -> dict:
    row = {"tokenizer": name, "kind": kind, "vocab_size": len(tokenizer)}
    for corpus in CORPORA:
        stats = tokenizer_stats(name, tokenizer, corpora[corpus]["eval"]).to_json()
        row[corpus] = {key: stats[key] for key in ("bytes", "tokens", "bytes_per_token", "tokens_per_word",
                                                     "vocab_used_fraction", "multiword_fraction", "lossless")}
    return row


def part_transplant(corpora: dict, record: dict, eval_bytes: int) -> None:
    """smollm2-135m given the 16k supertoken tokenizer by `tokeff transplant`, zero-shot."""
    tokenizer = WORK / TRANSPLANT_TOKENIZER
    help_text = subprocess.run([sys.executable, "-m", "tokeff", "transplant", "--help"], capture_output=True, text=True)
    if help_text.returncode != 0:
        record["transplant"] = {"status": "pending: `tokeff transplant` (issue 3) is not in this build"}
        print(record["transplant"]["status"], flush=True)
        return
    if not tokenizer.is_dir():
        raise SystemExit(f"run the tokenizers part first: {tokenizer} is missing")
    from tokeff.core.evaluation import bits_per_byte
    from tokeff.core.models import load_model
    from tokeff.core.textio import trim_partial_char

    text = trim_partial_char(corpora["wikitext"]["eval"].encode()[:eval_bytes]).decode()
    rows = []
    base = load_model("smollm2-135m", device="cpu")
    rows.append({"model": "smollm2-135m", **bits_per_byte(base, text, context=512, stride=512).to_json()})
    del base
    for method in ("subword", "mean"):
        out = WORK / f"smollm2-into-{TRANSPLANT_TOKENIZER}-{method}"
        command = [sys.executable, "-m", "tokeff", "transplant", "smollm2-135m", "--donor", str(tokenizer),
                   "--donor-tokenizer-only", "--method", method, "-o", str(out), "--force", "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            rows.append({"model": f"transplant {method}", "error": done.stderr.strip()[-500:]})
            print(rows[-1], flush=True)
            continue
        model = load_model(str(out), device="cpu")
        rows.append({"model": f"smollm2-135m -> {TRANSPLANT_TOKENIZER} ({method})", "transplant_seconds": seconds,
                     "command": " ".join(["tokeff", *command[3:]]),
                     **bits_per_byte(model, text, context=512, stride=512).to_json()})
        print(json.dumps(rows[-1]), flush=True)
    record["transplant"] = {"status": "measured", "eval_bytes": len(text.encode()), "rows": rows}


def part_dynamic(corpora: dict, record: dict, eval_bytes: int, context: int) -> None:
    from tokeff.core.models import load_model
    from tokeff.core.textio import trim_partial_char
    from tokeff.tokenizers_tools.dynamic.scoring import evaluate_dynamic

    text = trim_partial_char(corpora["wikitext"]["eval"].encode()[:eval_bytes]).decode()
    lm = load_model("smollm2-135m", device="cpu")
    runs = []
    for label, counts, options in DYNAMIC_RUNS:
        started = time.perf_counter()
        reports = evaluate_dynamic(lm, text, counts, context=context, **options)
        runs.append({"label": label, "options": options, "seconds": time.perf_counter() - started,
                     "results": [report.to_json() for report in reports]})
        for row in runs[-1]["results"]:
            print(json.dumps({"label": label, **{k: row[k] for k in ("merges", "length_reduction", "bpb_change")}}), flush=True)
    record["dynamic"] = {"model": "smollm2-135m", "eval_bytes": len(text.encode()), "context": context, "runs": runs}


def plot_vocab(record: dict) -> None:
    """Bytes per token against vocabulary size: plain and supertoken BPE, and the models' own tokenizers."""
    rows = [row for row in record["tokenizers"]["rows"] if "error" not in row]
    panels = []
    for corpus in CORPORA:
        lines = []
        for prefix, marker in (("plain-", "o"), ("supertoken-", "s")):
            # the curve: one tokenizer per size (variants with a longer name, e.g. another stage 1, are points)
            curve = sorted((row["vocab_size"], row[corpus]["bytes_per_token"]) for row in rows
                           if row["tokenizer"].startswith(prefix) and row["tokenizer"].count("-") == 1)
            if curve:
                lines.append(Line(f"{prefix.rstrip('-')} BPE (tokeff)", *zip(*curve), marker=marker))
        for row in rows:
            if row["tokenizer"].count("-") > 1 or row["kind"] == "own":
                own = row["kind"] == "own"
                lines.append(Line(None, [row["vocab_size"]], [row[corpus]["bytes_per_token"]], style="",
                                  marker="x" if own else "^", color="black" if own else "grey",
                                  notes=[row["tokenizer"]]))
        panels.append(Panel("vocabulary size", "bytes per token (held out)", corpus, lines=lines, xscale="log", xbase=2))
    plot_panels(DOCS / "tokenizers-vocab.png", panels, size=(11, 4.2))


def plot_dynamic(record: dict) -> None:
    """Merges against length reduction, and length reduction against the bits-per-byte cost."""
    from report import distinct

    runs = [run for run in record["dynamic"]["runs"] if not run["label"].startswith("embedding")]
    by_merges, by_reduction = [], []
    for run in runs:
        results = distinct(run["results"])
        merges = [row["merges"] for row in results]
        reduction = [100 * row["length_reduction"] for row in results]
        by_merges.append(Line(run["label"], merges, reduction))
        by_reduction.append(Line(run["label"], reduction, [row["bpb_change"] for row in results],
                                 notes=[str(k) for k in merges]))
    dyn = record["dynamic"]
    plot_panels(DOCS / "tokenizers.png", [
        Panel("merges learned on the batch", "sequence-length reduction (%)", lines=by_merges, xscale="log"),
        Panel("sequence-length reduction (%)", "bits-per-byte change vs own tokens", lines=by_reduction, guides=(0,)),
    ], title=f"tokeff dynamic, {dyn['model']}, {dyn['eval_bytes']:,} bytes of WikiText-2 (held out), context {dyn['context']}",
        size=(11, 4.2))


def write_markdown(record: dict) -> None:
    from report import render  # benchmarks/tokenizers/report.py

    (DOCS / "tokenizers.md").write_text(render(record))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="tokenizers,transplant,dynamic")
    parser.add_argument("--train-fraction", type=float, default=0.8)
    parser.add_argument("--eval-bytes", type=int, default=24_000, help="bytes scored by models (transplant, dynamic)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)")
    args = parser.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    DOCS.mkdir(exist_ok=True)
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    corpora = split_corpora(args.train_fraction)
    record["data"] = {
        name: {"file": str(path.relative_to(ROOT.parent)), "train_bytes": len(corpora[name]["train"].encode()),
               "eval_bytes": len(corpora[name]["eval"].encode())}
        for name, path in CORPORA.items()
    }
    record["train_fraction"] = args.train_fraction
    record["threads"] = args.threads
    record.setdefault("commands", {})
    for part in args.parts.split(","):
        started = time.perf_counter()
        if part == "tokenizers":
            part_tokenizers(corpora, record)
        elif part == "transplant":
            part_transplant(corpora, record, args.eval_bytes)
        elif part == "dynamic":
            part_dynamic(corpora, record, args.eval_bytes, args.context)
        else:
            raise SystemExit(f"unknown part {part}")
        record["commands"][part] = (
            f"python benchmarks/tokenizers/run.py --parts {part} --train-fraction {args.train_fraction} "
            f"--eval-bytes {args.eval_bytes} --context {args.context} --threads {args.threads}"
        )
        record.setdefault("part_seconds", {})[part] = time.perf_counter() - started
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    if "tokenizers" in record:
        plot_vocab(record)
    if "dynamic" in record:
        plot_dynamic(record)
    write_markdown(record)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
