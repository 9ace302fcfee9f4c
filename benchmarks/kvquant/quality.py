"""KV-cache recipes against the full model: KL divergence, top-1 agreement and Δ bits/byte with 95%
bootstrap intervals (`tokeff kvquant eval`'s measure), and KV bytes per token, side by side:

- `uniform-B`: `--kv-quant uniform:B` (KIVI: keys per channel over groups of 32 tokens after RoPE,
  values per token, even levels, no calibration);
- `calibrated-B`: `tokeff kvquant calibrate` (per layer, for keys and for values, the candidate scheme
  of `tokeff kvquant schemes` that changes attention output least on the calibration sequences, within
  uniform-B's bytes per token; uniform-B's own schemes are candidates);
- `grouped-B`: `tokeff kvquant calibrate --schemes pre-rope-kmeans,per-token-kmeans` (KIVI's key
  ranges per group of 32 tokens but before RoPE, Fisher-weighted k-means codebooks, every layer).

Calibration reads the first 400,000 bytes of wikitext2-valid.txt; evaluation starts at byte 600,000
(never the same bytes) and takes at least --eval-tokens tokens. Results are written after every
cache, so a run cut short keeps what it measured. Writes docs/kvquant-quality.{md,json,png}.

    python benchmarks/kvquant/quality.py [--models smollm2-135m,gemma3-270m] [--bits 4,3,2] [--eval-tokens 8000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
CALIBRATION_BYTES = 400_000
EVALUATION_START = 600_000
RECIPES = {  # name -> candidate schemes of a calibrated recipe (None: all); uniform needs no calibration
    "calibrated": None,
    "grouped": ["pre-rope-kmeans", "per-token-kmeans"],
}


def evaluation_text(lm, full: str, tokens: int) -> str:
    """Whole lines from EVALUATION_START on holding at least `tokens` tokens."""
    size = tokens * 5
    while True:
        text = full[EVALUATION_START : EVALUATION_START + size]
        text = text[: text.rfind("\n") + 1]
        if len(lm.encode_plain(text)) >= tokens or EVALUATION_START + size >= len(full):
            return text
        size = int(size * 1.2)


def run(args) -> None:
    from tokeff.core.models import load_model
    from tokeff.core.scoring import prefix_token_id
    from tokeff.core.textio import read_text
    from tokeff.kvquant.artifact import write_calibration
    from tokeff.kvquant.calibrate import fit_calibration
    from tokeff.kvquant.collect import collect
    from tokeff.kvquant.quality import kv_quality
    from tokeff.kvquant.spec import kv_cache_factory

    full = read_text(DATA)
    rows, started = [], time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="kvquality-"))
    calibration_file = workdir / "calibration.txt"
    calibration_file.write_text(full[:CALIBRATION_BYTES])
    for name in args.models.split(","):
        lm = load_model(name, device="cpu")
        text = evaluation_text(lm, full, args.eval_tokens)
        ids = lm.encode_plain(calibration_file.read_text())
        per, prefix = args.cal_context - 1, prefix_token_id(lm)
        acts = collect(lm, [[prefix] + ids[i * per : (i + 1) * per] for i in range(args.samples)], sensitivity=True)
        specs, chosen = {}, {}
        for bits in args.bits:
            for recipe in args.recipes:
                if recipe == "uniform":
                    specs[f"uniform-{bits}"] = (recipe, bits, f"uniform:{bits}")
                    continue
                folder = workdir / f"{name}-{recipe}-{bits}"
                calibration, record = fit_calibration(acts, lm.rotary, bits, schemes=RECIPES[recipe],
                                                      residual=args.residual)
                write_calibration(folder, lm, calibration, calibration_file, {"samples": args.samples}, record, force=True)
                chosen[f"{recipe}-{bits}"] = {"keys": record["key_schemes_chosen"], "values": record["value_schemes_chosen"]}
                specs[f"{recipe}-{bits}"] = (recipe, bits, str(folder))
        del acts
        for label, (recipe, bits, spec) in specs.items():
            factory = kv_cache_factory(spec, lm, residual=args.residual, sinks=1)
            quality = kv_quality(lm, text, factory, context=args.context, chunk=args.chunk, segment=args.segment)
            rows.append({"model": name, "cache": label, "recipe": recipe, "bits": bits, **quality.to_json(),
                         **({"chosen": chosen[label]} if label in chosen else {})})
            print(f"{name} {label}: KL {quality.kl.value:.5f}, top-1 {quality.top1.value:.4f}, "
                  f"Δbpb {quality.delta_bpb.value:+.5f}, {quality.kv_bytes_per_token:,.0f} B/token, "
                  f"{quality.seconds:.0f} s", file=sys.stderr, flush=True)
            write(rows, args, time.perf_counter() - started)


def write(rows: list[dict], args, seconds: float) -> None:
    from tokeff.core.reporting import Line, Panel, STYLES, plot_panels

    docs = ROOT / "docs"
    command = "python benchmarks/kvquant/quality.py " + " ".join(sys.argv[1:])
    (docs / "kvquant-quality.json").write_text(json.dumps({"command": command, "args": vars(args), "rows": rows}, indent=2) + "\n")
    lines = [
        "# KV-cache quality against the full model", "",
        f"Reproduce: `{command}` ({seconds / 60:.0f} minutes on a shared 2-core CPU machine, {args.threads} thread(s), float32).",
        "",
        f"Each cache scores the same sliding windows as plain `tokeff eval bpb` (context {args.context}, stride "
        f"{args.context // 2}), in decode order ({args.chunk} tokens per call, the last {args.residual} tokens and 1 sink in "
        "full precision), against the full model's one-pass distributions on those windows: mean per-token KL(full || "
        f"cache) in nats, top-1 agreement and Δ bits/byte, with 95% bootstrap intervals over segments of {args.segment} "
        f"tokens. Calibration: {args.samples} sequences of {args.cal_context} tokens from the first {CALIBRATION_BYTES:,} "
        f"bytes of wikitext2-valid.txt; evaluation from byte {EVALUATION_START:,} on. KV bytes per token: the cache's "
        "bytes over the tokens it held at the end of each window, averaged (calibrated constants not counted).", "",
        "Recipes: `uniform` = `--kv-quant uniform:B` (KIVI); `calibrated` = `tokeff kvquant calibrate` (per layer, "
        "for keys and for values, the scheme of `tokeff kvquant schemes` whose quantization changes the layer's "
        "attention output least on the calibration sequences, within uniform's bytes per token; uniform's own "
        "schemes are candidates); `grouped` = `tokeff kvquant calibrate --schemes pre-rope-kmeans,per-token-kmeans` "
        "(key ranges per group of 32 tokens before RoPE, k-means codebooks, every layer).", "",
    ]
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        lines += [f"## {model}", "", f"{mine[0]['tokens']:,} evaluation tokens ({mine[0]['bytes']:,} bytes); "
                  f"full-model bits/byte {mine[0]['reference_bpb']:.4f}.", "",
                  "| cache | bits | KL (nats/token) | top-1 agreement | Δ bits/byte | KV bytes/token |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in mine:
            kl, top1, delta = row["kl"], row["top1"], row["delta_bpb"]
            lines.append(
                f"| {row['cache']} | {row['bits']} | {kl['value']:.5f} [{kl['low']:.5f}, {kl['high']:.5f}] | "
                f"{top1['value']:.4f} [{top1['low']:.4f}, {top1['high']:.4f}] | "
                f"{delta['value']:+.4f} [{delta['low']:+.4f}, {delta['high']:+.4f}] | {row['kv_bytes_per_token']:,.0f} |"
            )
        lines.append("")
        for row in mine:
            if "chosen" in row:
                picks = "; ".join(f"{tensor}: " + ", ".join(f"{name} x{count}" for name, count in row["chosen"][tensor].items())
                                  for tensor in ("keys", "values"))
                lines.append(f"- {row['cache']} chose, over the layers, {picks}.")
        lines.append("")
    lines += ["![KL divergence and Δ bits/byte against KV bytes per token](kvquant-quality.png)", ""]
    (docs / "kvquant-quality.md").write_text("\n".join(lines))
    panels = []
    for metric, label in (("kl", "KL (nats/token)"), ("delta_bpb", "Δ bits/byte")):
        series = []
        for i, model in enumerate(dict.fromkeys(row["model"] for row in rows)):
            for recipe in dict.fromkeys(row["recipe"] for row in rows):
                mine = sorted((r for r in rows if r["model"] == model and r["recipe"] == recipe), key=lambda r: r["bits"])
                if mine:
                    series.append(Line(f"{model} {recipe}", [r["kv_bytes_per_token"] for r in mine],
                                       [r[metric]["value"] for r in mine], style=STYLES[i % len(STYLES)],
                                       notes=[f"{r['bits']}b" for r in mine]))
        panels.append(Panel("KV bytes per token", label, lines=series))
    plot_panels(docs / "kvquant-quality.png", panels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--recipes", default="uniform,calibrated,grouped")
    parser.add_argument("--eval-tokens", type=int, default=8000)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--cal-context", type=int, default=256)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--residual", type=int, default=32)
    parser.add_argument("--segment", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.bits = [int(b) for b in args.bits.split(",")]
    args.recipes = args.recipes.split(",")
    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
