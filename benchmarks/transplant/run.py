"""Benchmark: tokeff transplant (every method) against mergekit-tokensurgeon on the built-in pair.

For each direction, every tokeff method and mergekit-tokensurgeon (OMP, its default) transplant
the donor's tokenizer into the base model in a subprocess (wall time, peak RSS); then the original
and every output are scored in bits per byte on held-out WikiText (bytes from the second half of
wikitext2-valid.txt; no method looks at text, so nothing is calibrated on it).

    PYTHONPATH=. python benchmarks/transplant/run.py [--pairs gemma3-270m:smollm2-135m] [--methods zero,omp] [--max-bytes N]
        [--mergekit PATH/TO/mergekit-tokensurgeon] [--mergekit-timeout S[,S]]

mergekit runs only when --mergekit or the TOKEFF_MERGEKIT environment variable names its
mergekit-tokensurgeon executable; otherwise it is skipped (with a message).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
METHODS = ("zero", "mean", "subword", "hybrid", "omp")


def held_out_text(max_bytes: int) -> str:
    data = DATA.read_bytes()
    from tokeff.core.textio import trim_partial_char

    return trim_partial_char(data[len(data) // 2 : len(data) // 2 + max_bytes]).decode("utf-8")


def timed(command: list[str], timeout: float) -> dict:
    """Run a command under /usr/bin/time -v: wall seconds, peak RSS, exit status."""
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        try:
            proc = subprocess.run(
                ["/usr/bin/time", "-v", "-o", stats.name, *command], capture_output=True, text=True, timeout=timeout
            )
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-400:]
        except subprocess.TimeoutExpired as exc:
            output = exc.stderr or b""
            rc, tail = None, (output.decode(errors="replace") if isinstance(output, bytes) else output)[-400:]
        rss = next((int(line.split(":")[1]) for line in Path(stats.name).read_text().splitlines() if "Maximum resident" in line), None) if rc is not None else None
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": rss / 1024 if rss else None, "rc": rc, "tail": tail}


def score(spec: str, text: str) -> dict:
    from tokeff.core.evaluation import bits_per_byte
    from tokeff.core.models import load_model

    result = bits_per_byte(load_model(spec, device="cpu"), text, context=1024)
    return {"bpb": result.bpb, "tokens": result.tokens}


def run_pair(base: str, donor: str, text: str, work: Path, methods: list[str], mergekit: str | None, mergekit_timeout: float) -> dict:
    from tokeff.core.resolve import model_folder

    rows = {"original": {"method": "original", **score(base, text)}}
    print(f"{base}: original bpb {rows['original']['bpb']:.4f}", file=sys.stderr)
    for method in methods:
        out = work / f"{base}-{donor}-{method}"
        run = timed([sys.executable, "-m", "tokeff", "transplant", base, "--donor", donor, "-o", str(out), "--method", method, "--force"], 1800)
        row = {"method": f"tokeff {method}", **run}
        if run["rc"] == 0:
            row.update(score(str(out), text))
            scale = json.loads((out / "tokeff.json").read_text())["metrics"].get("new_scale")
            row["new_scale"] = scale["value"] if scale else None
        rows[method] = row
        print(f"{base} <- {donor} tokeff {method}: {row}", file=sys.stderr)
    if mergekit:
        out = work / f"{base}-{donor}-mergekit"
        run = timed([mergekit, str(model_folder(base)), str(model_folder(donor)), str(out), "--allow-crimes"], mergekit_timeout)
        row = {"method": "mergekit-tokensurgeon omp", **run, "progress": progress(run["tail"])}
        if run["rc"] == 0:
            row.update(score(str(out), text))
        rows["mergekit"] = row
        print(f"{base} <- {donor} mergekit: {row}", file=sys.stderr)
    return {"base": base, "donor": donor, "rows": list(rows.values())}


def progress(tail: str) -> str | None:
    """The last 'done/total' of a tqdm bar in a process's output (how far a timed-out run got)."""
    counts = re.findall(r"(\d+)/(\d+) \[", tail)
    return f"{counts[-1][0]} of {counts[-1][1]} batches" if counts else None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = results["pairs"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False)
    for axis, pair in zip(axes[0], pairs):
        rows = [row for row in pair["rows"] if "bpb" in row]
        axis.barh([row["method"] for row in rows], [row["bpb"] for row in rows], color="tab:blue")
        for y, row in enumerate(rows):
            axis.text(row["bpb"], y, f" {row['bpb']:.3f}", va="center", fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("bits per byte (held-out WikiText, lower is better)")
        axis.set_title(f"{pair['base']} given {pair['donor']}'s tokenizer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


NOTES = """
## How it works and what to expect

- Shared tokens are matched by canonical bytes (`Ġthe` = `▁the`, `<0x0A>` = `Ċ`), special tokens by
  role (bos, eos, pad, unk, chat turn start/end) or `--map DONOR=BASE`; shared rows are copied exactly.
- `omp` (default, k=64): each new token's donor embedding is coded over shared anchors. One similarity
  matmul first picks each token's 256 (at least 4k) best-correlated anchors; OMP then searches only
  those: Batch-OMP per token in Numba on the CPU, batched torch on a GPU. `benchmarks/transplant/holdout.py`
  measures what that narrowing does to the codes (docs/transplant-holdout.md).
- Estimated rows are output rows too (tied embeddings, or the rebuilt lm_head), and at full size they
  take probability from the shared tokens that spell the same text. `--new-scale auto` (default)
  multiplies them by the factor in 0.05..1 that gives the lowest bits per byte on text sampled from
  the base model itself (8 samples of 128 tokens; `--tune-text FILE` to use your own), keeping 1
  unless that gains at least 2% there; the chosen factor is in the manifest and in the table above.
- Only the embedding matrices are held in memory; other tensors are streamed shard by shard, so a
  70B checkpoint needs its embedding and lm_head (a few GB) plus one shard: run
  `tokeff transplant /path/to/70b --donor DONOR -o OUT --device cuda` on one GPU box.
"""


def write_doc(results: dict, command: str) -> None:
    docs = ROOT / "docs"
    (docs / "transplant.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# tokeff transplant: benchmark",
        "",
        f"Reproduce: `{command}` (2 shared CPU cores, timed runs under `flock /tmp/tokeff-bench.lock`); "
        "a pair measured by another command names it under its heading.",
        f"Quality: bits per byte on {results['eval_bytes']:,} bytes of held-out WikiText "
        "(from the middle of `wikitext2-valid.txt`; context 1024). Lower is better; the original is the base model with its own tokenizer.",
        "",
    ]
    for pair in results["pairs"]:
        lines += [f"## {pair['base']} given {pair['donor']}'s tokenizer", ""]
        if pair.get("command", command) != command:
            lines += [f"Measured by `{pair['command']}`.", ""]
        lines += ["| method | bits/byte | new-row scale | wall s | peak RSS MiB | note |", "| --- | --- | --- | --- | --- | --- |"]
        for row in pair["rows"]:
            bpb = f"{row['bpb']:.4f}" if "bpb" in row else "-"
            seconds = f"{row['seconds']:.1f}" if "seconds" in row else "-"
            rss = f"{row['peak_rss_mib']:.0f}" if row.get("peak_rss_mib") else "-"
            note = "" if row.get("rc", 0) == 0 else ("timed out" if row["rc"] is None else f"failed (exit {row['rc']})")
            if row.get("rc", 0) != 0 and row.get("progress"):
                note += f" after {row['progress']}"
            scale = f"{row['new_scale']:g}" if row.get("new_scale") is not None else "-"
            lines.append(f"| {row['method']} | {bpb} | {scale} | {seconds} | {rss} | {note} |")
        lines.append("")
    plot(results, docs / "transplant.png")
    lines += ["![bits per byte by method](transplant.png)", ""]
    (docs / "transplant.md").write_text("\n".join(lines) + NOTES)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="gemma3-270m:smollm2-135m,smollm2-135m:gemma3-270m", help="BASE:DONOR,... ")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--max-bytes", type=int, default=20_000)
    parser.add_argument(
        "--mergekit", default=os.environ.get("TOKEFF_MERGEKIT"), help="mergekit-tokensurgeon executable (default: $TOKEFF_MERGEKIT)"
    )
    parser.add_argument("--mergekit-timeout", default="1800,300", help="seconds: one value, or one per pair")
    parser.add_argument("--update", action="store_true", help="keep the other pairs of docs/transplant.json (same --max-bytes)")
    args = parser.parse_args()
    text = held_out_text(args.max_bytes)
    mergekit = args.mergekit or None
    if mergekit is None:
        print("mergekit skipped: give --mergekit PATH or set TOKEFF_MERGEKIT to compare with mergekit-tokensurgeon", file=sys.stderr)
    elif not Path(mergekit).is_file():
        raise SystemExit(f"--mergekit / TOKEFF_MERGEKIT: {mergekit} is not a file")
    with tempfile.TemporaryDirectory(prefix="tokeff-transplant-bench-") as work:
        pair_specs = args.pairs.split(",")
        timeouts = [float(t) for t in args.mergekit_timeout.split(",")]
        timeouts += timeouts[-1:] * (len(pair_specs) - len(timeouts))
        pairs = [
            run_pair(*pair.split(":"), text, Path(work), args.methods.split(","), mergekit, timeout)
            for pair, timeout in zip(pair_specs, timeouts)
        ]
    from_env = mergekit is not None and not any(arg.split("=")[0] == "--mergekit" for arg in sys.argv[1:])
    command = ("TOKEFF_MERGEKIT=PATH/TO/mergekit-tokensurgeon " if from_env else "") + "PYTHONPATH=. python benchmarks/transplant/run.py "
    command += " ".join(sys.argv[1:])
    for pair in pairs:
        pair["command"] = command
    results = {"eval_bytes": len(text.encode("utf-8")), "pairs": pairs}
    previous = ROOT / "docs" / "transplant.json"
    if args.update and previous.is_file():
        old = json.loads(previous.read_text())
        if old["eval_bytes"] != results["eval_bytes"]:
            raise SystemExit(f"--update: docs/transplant.json was measured on {old['eval_bytes']} bytes, not {results['eval_bytes']}")
        ran = {(pair["base"], pair["donor"]) for pair in pairs}
        kept = [pair for pair in old["pairs"] if (pair["base"], pair["donor"]) not in ran]
        results["pairs"] = pairs + kept
    write_doc(results, command)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
