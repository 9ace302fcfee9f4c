"""Benchmark: tokeff transplant (every method) against mergekit-tokensurgeon on the built-in pair.

For each direction, every tokeff method and mergekit-tokensurgeon (OMP, its default) transplant
the donor's tokenizer into the base model in a subprocess (wall time, peak RSS); then the original
and every output are scored in bits per byte on held-out WikiText: the bytes from the middle of
wikitext2-valid.txt on (nothing tunes on them: `--new-scale auto` tunes on text the base model
samples, and the methods were developed on the file's first half). Two scores per model:

- out of the box: each window starts with the output tokenizer's own boundary token (`tokeff eval
  bpb`: its BOS if it adds one, else its EOS), what a user of that tokenizer gets;
- like for like: every window starts with the same row, the base model's boundary row (found in each
  output as the token whose input row equals it), so only the estimated rows differ.

    PYTHONPATH=. python benchmarks/transplant/run.py [--pairs gemma3-270m:smollm2-135m] [--methods zero,omp,omp:prior=subword] [--max-bytes N]
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

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
METHODS = ("zero", "mean", "subword", "hybrid", "omp")
CONTEXT = 1024


def held_out_range(max_bytes: int) -> tuple[int, int]:
    """Byte offsets [start, end) of the evaluation text in wikitext2-valid.txt."""
    size = DATA.stat().st_size
    return size // 2, min(size, size // 2 + max_bytes)


def held_out_text(max_bytes: int) -> str:
    from tokeff.core.textio import trim_partial_char

    start, end = held_out_range(max_bytes)
    return trim_partial_char(DATA.read_bytes()[start:end]).decode("utf-8")


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


def boundary_row(spec: str) -> torch.Tensor:
    """The base model's input row of the token its windows start with (the like-for-like prefix)."""
    from tokeff.core.models import load_model
    from tokeff.core.scoring import prefix_token_id

    lm = load_model(spec, device="cpu")
    return lm.model.get_input_embeddings().weight[prefix_token_id(lm)].detach().float().clone()


def score(spec: str, text: str, prefix_row: torch.Tensor) -> dict:
    """Bits per byte out of the box and like for like (windows start with the token carrying `prefix_row`)."""
    from tokeff.core.evaluation import bits_per_byte
    from tokeff.core.models import load_model
    from tokeff.core.scoring import prefix_token_id

    lm = load_model(spec, device="cpu")
    own = bits_per_byte(lm, text, context=CONTEXT)
    rows = lm.model.get_input_embeddings().weight.detach()
    carriers = torch.nonzero((rows.float() == prefix_row).all(dim=1)).flatten().tolist()
    row = {"bpb_out_of_the_box": own.bpb, "tokens": own.tokens, "tokens_per_byte": own.tokens / own.bytes,
           "own_prefix": lm.tokenizer.convert_ids_to_tokens(prefix_token_id(lm))}
    if not carriers:
        row["note"] = "no token carries the base boundary row: no like-for-like score"
        return row
    same = prefix_token_id(lm) in carriers
    row["bpb_like_for_like"] = own.bpb if same else bits_per_byte(lm, text, context=CONTEXT, prefix=carriers[0]).bpb
    row["like_prefix"] = lm.tokenizer.convert_ids_to_tokens(prefix_token_id(lm) if same else carriers[0])
    return row


def run_pair(base: str, donor: str, text: str, work: Path, methods: list[str], mergekit: str | None, mergekit_timeout: float) -> dict:
    from tokeff.core.resolve import model_folder

    prefix_row = boundary_row(base)
    rows = {"original": {"method": "original", **score(base, text, prefix_row)}}
    print(f"{base}: original {rows['original']}", file=sys.stderr)
    for method in methods:  # NAME or NAME:KEY=VALUE[:KEY=VALUE...] (the method's options)
        name, *params = method.split(":")
        out = work / f"{base}-{donor}-{method.replace(':', '-').replace('=', '')}"
        command = [sys.executable, "-m", "tokeff", "transplant", base, "--donor", donor, "-o", str(out), "--method", name, "--force"]
        run = timed(command + [arg for param in params for arg in ("--param", param)], 1800)
        row = {"method": f"tokeff {' '.join([name, *params])}", **run}
        if run["rc"] == 0:
            row.update(score(str(out), text, prefix_row))
            metrics = json.loads((out / "tokeff.json").read_text())["metrics"]
            row["new_scale"] = metrics["new_scale"]["value"] if metrics.get("new_scale") else None
        rows[method] = row
        print(f"{base} <- {donor} tokeff {method}: {row}", file=sys.stderr)
    if mergekit:
        out = work / f"{base}-{donor}-mergekit"
        run = timed([mergekit, str(model_folder(base)), str(model_folder(donor)), str(out), "--allow-crimes"], mergekit_timeout)
        row = {"method": "mergekit-tokensurgeon omp", **run, "timeout_s": mergekit_timeout, "progress": progress(run["tail"])}
        if run["rc"] == 0:
            row.update(score(str(out), text, prefix_row))
        rows["mergekit"] = row
        print(f"{base} <- {donor} mergekit: {row}", file=sys.stderr)
    return {"base": base, "donor": donor, "rows": list(rows.values())}


def progress(tail: str) -> str | None:
    """The last 'done/total' of a tqdm bar in a process's output (how far a timed-out run got)."""
    counts = re.findall(r"(\d+)/(\d+) \[", tail)
    return f"{counts[-1][0]} of {counts[-1][1]} batches" if counts else None


def plot(results: dict, path: Path) -> None:
    from tokeff.core.reporting import Bars, Line, Panel, plot_panels

    panels = []
    for pair in results["pairs"]:
        rows = [row for row in pair["rows"] if "bpb_out_of_the_box" in row]
        labels = [row["method"].replace("mergekit-tokensurgeon", "mergekit") for row in rows]
        like = [row.get("bpb_like_for_like", float("nan")) for row in rows]
        own = [row["bpb_out_of_the_box"] for row in rows]
        panels.append(Panel(
            "", "bits per byte (held-out WikiText, lower is better)", f"{pair['base']} given {pair['donor']}'s tokenizer",
            bars=Bars(labels, like, ["tab:orange" if "mergekit" in label else "tab:blue" for label in labels]),
            lines=[Line("out of the box", list(range(len(rows))), own, style="", marker="x", color="black")],
            ylim=(0.8 * min(like + own), 1.05 * max(like + own)), guides=[rows[0].get("bpb_like_for_like", own[0])],
        ))
    plot_panels(path, panels, title="bars: like for like (same prefix row); x: out of the box")


NOTES = """
## How it works and what to expect

- Shared tokens are matched by canonical bytes (`Ġthe` = `▁the`, `<0x0A>` = `Ċ`), special tokens by
  role (bos, eos, pad, unk, chat turn start/end) or `--map DONOR=BASE`; shared rows are copied exactly.
- `omp` (default, `--k 64`): each new token's donor embedding is coded over shared anchors. One similarity
  matmul first picks each token's `--candidates 256` (at least 4k) best-correlated anchors; OMP then searches only
  those: Batch-OMP per token in Numba on the CPU, batched torch on a GPU. `benchmarks/transplant/holdout.py`
  measures what that narrowing does to the codes (docs/transplant-holdout.md). `--prior subword`
  (`tokeff omp prior=subword` above) makes the token's spelling a first atom: the mean of its base pieces'
  rows, with the least-squares weight that the same pieces' donor rows explain of its donor embedding; OMP
  codes the rest. `--widen-below C` recodes over all anchors (mergekit's search) the tokens whose code
  over their candidates fits their donor embedding below cosine C. Every method's options are flags (`--k`, `--candidates`, `--widen-below`, `--prior`,
  `--local-weight`, `--temperature`) or `--param KEY=VALUE`, declared once in `tokeff/surgery/transplant/estimators/`.
- Estimated rows are output rows too (tied embeddings, or the rebuilt lm_head), and at full size they
  take probability from the shared tokens that spell the same text. `--new-scale auto` (default)
  multiplies them by the factor in 0.05..1 that gives the lowest bits per byte on text sampled from
  the base model itself (8 samples of 128 tokens; `--tune-text FILE` to use your own), keeping 1
  unless that gains at least 2% there; the chosen factor is in the manifest and in the table above.
- Only the embedding matrices are held in memory; other tensors are streamed shard by shard, so a
  70B checkpoint needs its embedding and lm_head (a few GB) plus one shard: run
  `tokeff transplant /path/to/70b --donor DONOR -o OUT --device cuda` on one GPU box.
"""


def _cell(row: dict, key: str, digits: int = 4) -> str:
    return f"{row[key]:.{digits}f}" if row.get(key) is not None else "-"


def _note(row: dict, command: str) -> str:
    earlier = "; measured by the earlier command below" if row.get("command") not in (None, command) else ""
    if row.get("rc", 0) == 0:
        return row.get("note", "") + earlier
    if row["rc"] is None:
        return f"timed out at {row['timeout_s']:.0f} s" + (f" after {row['progress']}" if row.get("progress") else "") + earlier
    return f"failed (exit {row['rc']})" + earlier


def write_doc(results: dict, command: str) -> None:
    docs = ROOT / "docs"
    (docs / "transplant.json").write_text(json.dumps(results, indent=2) + "\n")
    start, end = results["eval_range"]
    lines = [
        "# tokeff transplant: benchmark",
        "",
        f"Reproduce: `{command}` (2 shared CPU cores, timed runs under `flock /tmp/tokeff-bench.lock`); "
        "a pair measured by another command names it under its heading.",
        f"Quality: bits per byte on {results['eval_bytes']:,} bytes of held-out WikiText, bytes {start:,}..{end:,} of "
        f"`wikitext2-valid.txt` (no method or setting was tuned on them), windows of {CONTEXT} tokens. Lower is better; "
        "the original is the base model with its own tokenizer.",
        "",
        "- **like for like**: every window starts with the same row, the base model's boundary row (the token of each "
        "output that carries it), so only the estimated rows differ;",
        "- **out of the box**: every window starts with the output tokenizer's own boundary token (its BOS if it adds "
        "one, else its EOS), as `tokeff eval bpb` and a user of that tokenizer get it. tokeff's output tokenizer adds the "
        "base model's BOS when the donor's adds none (`bos_added` in the manifest); mergekit's keeps the donor's habit.",
        "",
    ]
    for pair in results["pairs"]:
        lines += [f"## {pair['base']} given {pair['donor']}'s tokenizer", ""]
        if pair.get("command", command) != command:
            lines += [f"Measured by `{pair['command']}`.", ""]
        mergekit = next((row for row in pair["rows"] if row["method"].startswith("mergekit") and row.get("bpb_like_for_like")), None)
        lines += ["| method | like for like bpb | vs mergekit | out of the box bpb | tokens/byte | new-row scale | wall s | vs mergekit time | peak RSS MiB | note |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for row in pair["rows"]:
            ratio = time_ratio = "-"
            if mergekit and row.get("bpb_like_for_like") is not None:
                ratio = f"{row['bpb_like_for_like'] / mergekit['bpb_like_for_like']:.3f}"
            if mergekit and row.get("seconds") and row.get("rc") == 0:
                time_ratio = f"{row['seconds'] / mergekit['seconds']:.2f}"
            scale = f"{row['new_scale']:g}" if row.get("new_scale") is not None else "-"
            rss = f"{row['peak_rss_mib']:.0f}" if row.get("peak_rss_mib") else "-"
            lines.append(f"| {row['method']} | {_cell(row, 'bpb_like_for_like')} | {ratio} | {_cell(row, 'bpb_out_of_the_box')} | "
                         f"{_cell(row, 'tokens_per_byte', 3)} | {scale} | {_cell(row, 'seconds', 1)} | {time_ratio} | {rss} | {_note(row, pair.get('command', command))} |")
        earlier = sorted({row["command"] for row in pair["rows"] if row.get("command") not in (None, pair.get("command", command))})
        lines += [""] + [f"Earlier command: `{c}`" for c in earlier] + ([""] if earlier else [])
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
    parser.add_argument("--update", action="store_true", help="keep the other pairs and rows of docs/transplant.json (same --max-bytes)")
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
    results = {"eval_bytes": len(text.encode("utf-8")), "eval_range": held_out_range(args.max_bytes), "pairs": pairs}
    previous = ROOT / "docs" / "transplant.json"
    if args.update and previous.is_file():
        old = json.loads(previous.read_text())
        if old["eval_bytes"] != results["eval_bytes"]:
            raise SystemExit(f"--update: docs/transplant.json was measured on {old['eval_bytes']} bytes, not {results['eval_bytes']}")
        # rows of a pair this run did not measure are kept (the original is always rescored)
        for pair in pairs:
            previous_pair = next((p for p in old["pairs"] if (p["base"], p["donor"]) == (pair["base"], pair["donor"])), None)
            if previous_pair is not None:
                ran = {row["method"] for row in pair["rows"]}
                pair["rows"] += [{**row, "command": previous_pair.get("command")} for row in previous_pair["rows"] if row["method"] not in ran]
        ran_pairs = {(pair["base"], pair["donor"]) for pair in pairs}
        results["pairs"] = pairs + [pair for pair in old["pairs"] if (pair["base"], pair["donor"]) not in ran_pairs]
    write_doc(results, command)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
