"""Does synthid's p-value hold? Its false-positive rate on human text, over many keys at once.

One key's false-positive count on 900 human windows is a noisy figure: even an exact test at
alpha 0.01 exceeds 9 of 900 for about a third of keys. So this measures the rate over `--keys`
random keys on the same windows as benchmarks/watermark/run.py (600 of wikitext-2's second half,
300 of tinyshakespeare past the tests' 60,000 characters, 200 smollm2-135m tokens each), with the
default parameters (30 layers, 5-grams, a 2**16 table), and reports, for alpha 0.01 and 0.05: the
test's own size (the null probability of p <= alpha, below alpha because the sum is discrete), the
measured rate with a 95% interval, and how each key's count spreads against the binomial spread of
an exact test. Every key's g-values are computed as detection computes them; for each window the
p-value threshold comes from the exact null (`tokeff.decoding.watermark.schemes.synthid`).
Writes docs/watermark-synthid-null.md, .json and .png.

    PYTHONPATH=. python benchmarks/watermark/synthid_null.py [--keys 400]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
ALPHAS = (0.01, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=400)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    from tokeff.core.models import load_tokenizer
    from tokeff.core.reporting import Bars, Panel, plot_panels
    from tokeff.core.textio import read_text
    from tokeff.decoding.watermark import evaluation
    from tokeff.decoding.watermark.evaluation import rate_with_interval
    from tokeff.decoding.watermark.keys import make_key
    from tokeff.decoding.watermark.schemes import synthid

    tokenizer = load_tokenizer("smollm2-135m")
    _, human_half = evaluation.split_corpus(read_text(DATA / "wikitext2-valid.txt"))
    sources = {"wikitext-2": evaluation.human_windows(tokenizer, human_half, 600, 200),
               "tinyshakespeare": evaluation.human_windows(tokenizer, read_text(DATA / "tinyshakespeare.txt")[60_000:], 300, 200)}
    rule = make_key("synthid", tokenizer, "smollm2-135m", seed=0).rule  # its parameters and table; the words vary
    words = np.random.default_rng(args.seed).integers(0, 2**64, size=(args.keys, 1, len(rule.keys)), dtype=np.uint64)
    results = {}
    for name, windows in sources.items():
        hits = {alpha: np.zeros((len(windows), args.keys), dtype=bool) for alpha in ALPHAS}
        size = {alpha: 0.0 for alpha in ALPHAS}
        for index, window in enumerate(windows):
            hashes = rule.fresh_ngram_hashes(np.array(window))
            pmf = synthid.power_pmf(synthid.depth_null_pmf(hashes, rule.table), len(rule.keys))
            tail = np.cumsum(pmf[::-1])[::-1]
            sums = synthid.g_values_of_hashes(hashes[None, :], words, rule.table).sum(axis=(1, 2))
            for alpha in ALPHAS:
                critical = int(np.flatnonzero(tail <= alpha)[0])  # p <= alpha exactly when the sum reaches it
                size[alpha] += tail[critical] / len(windows)
                hits[alpha][index] = sums >= critical
        results[name] = {"windows": len(windows), "alphas": {}}
        for alpha in ALPHAS:
            counts = hits[alpha].sum(axis=0)  # one count per key
            over = float((counts > alpha * len(windows)).mean())
            results[name]["alphas"][str(alpha)] = {
                "size": size[alpha], "rate": rate_with_interval(int(counts.sum()), len(windows) * args.keys),
                "per_key_mean": float(counts.mean()), "per_key_variance": float(counts.var()),
                "binomial_variance": float(len(windows) * size[alpha] * (1 - size[alpha])),
                "keys_over_alpha": over, "counts": counts.tolist()}
        print(name, json.dumps({a: {k: v for k, v in r.items() if k != "counts"} for a, r in results[name]["alphas"].items()}),
              file=sys.stderr)
    write(results, args, ROOT / "docs", Bars, Panel, plot_panels)


def write(results: dict, args, docs: Path, Bars, Panel, plot_panels) -> None:
    (docs / "watermark-synthid-null.json").write_text(json.dumps({"keys": args.keys, "seed": args.seed, **results}, indent=2) + "\n")
    panels = []
    for name, entry in results.items():
        alpha = entry["alphas"]["0.01"]
        counts = np.bincount(alpha["counts"])
        panels.append(Panel("false positives of one key", "keys", f"{name}: {entry['windows']} windows, alpha 0.01",
                            bars=Bars([str(c) for c in range(len(counts))], counts.tolist())))
    plot_panels(docs / "watermark-synthid-null.png", panels, title=f"synthid: false positives per key, {args.keys} keys")
    command = "PYTHONPATH=. python benchmarks/watermark/synthid_null.py" + (f" --keys {args.keys}" if args.keys != 400 else "")
    lines = ["# synthid: does the p-value hold?", "", f"Reproduce: `{command}`.", "",
             f"{args.keys} random keys (default parameters: 30 layers, 5-grams, a 2**16 table), each tested on the same "
             "human windows of 200 smollm2-135m tokens as docs/watermark.md: wikitext-2's second half and "
             "tinyshakespeare past the tests' 60,000 characters. *Size* is the test's own null probability of "
             "p <= alpha, averaged over the windows (below alpha: the g-value sum is discrete). *Rate* is the measured "
             "share of (key, window) tests at p <= alpha, with a 95% exact binomial interval (tests taken as independent). *Per-key variance* against the "
             "binomial variance says whether one key's count spreads more than an exact test's would (windows "
             "sharing n-grams would make it).", "",
             "| text | windows | alpha | size | rate | 95% interval | per-key count: mean | variance | binomial variance | keys over alpha |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, entry in results.items():
        for alpha, r in entry["alphas"].items():
            rate = r["rate"]
            lines.append(f"| {name} | {entry['windows']} | {alpha} | {r['size']:.4f} | {rate['rate']:.4f} | "
                         f"{rate['ci95'][0]:.4f}-{rate['ci95'][1]:.4f} | {r['per_key_mean']:.2f} | {r['per_key_variance']:.2f} | "
                         f"{r['binomial_variance']:.2f} | {r['keys_over_alpha']:.0%} |")
    lines += ["", "![false positives per key](watermark-synthid-null.png)", ""]
    (docs / "watermark-synthid-null.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
