"""Benchmark: corpus jobs with engine `local` against engine `ray` at 1 and 2 workers.

In one run, on one corpus built here (nothing downloaded):
- watermark detection: `--docs` documents, half of them continuations that `tokeff watermark
  generate` wrote with a kgw key on smollm2-135m (`--generated` distinct texts, cycled), half
  human WikiText-2 paragraphs from ../shared/data (cycled); `tokeff watermark detect -o` with
  `--engine local`, then `--engine ray --workers 1` and `--workers 2`;
- bits per byte: the first `--bpb-docs` human paragraphs under smollm2-135m, local and ray (1 worker).
Each job runs as a subprocess of its own, on one torch thread per process (`OMP_NUM_THREADS=1`, what
Ray gives an actor of one CPU, so local and one Ray worker compute alike): wall time (Ray's start included), the job's own seconds
(the summary's), documents/s and bytes/s, and the peak RSS summed over the process tree (the
driver and, for ray, its Ray processes and actors; sampled every 0.1 s). Rows of every ray run are
checked equal to local's. Writes docs/corpus.md, docs/corpus.json and docs/corpus.png.

    PYTHONPATH=. python benchmarks/corpus/run.py [--docs 20000] [--bpb-docs 2000] [--generated 64]
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

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
MODEL = "smollm2-135m"


def tokeff(*args: object) -> list[str]:
    return [sys.executable, "-m", "tokeff", *map(str, args)]


def measured(command: list[str], timeout: float) -> dict:
    """Run `command`: wall seconds, peak RSS of its whole process tree, its JSON stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                                 "RAYON_NUM_THREADS": "1"})
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None and time.perf_counter() - started < timeout:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    stdout = proc.communicate()[0]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode})")
    return {"wall_seconds": time.perf_counter() - started, "peak_rss_mib": peak / 2**20, "summary": json.loads(stdout)}


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def human_paragraphs() -> list[str]:
    text = DATA.read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n \n") if len(p.strip()) > 200 and not p.strip().startswith("=")]


def build_corpus(work: Path, docs: int, generated: int) -> tuple[Path, Path, int]:
    """The key, the corpus (.jsonl: id, text, label) and the human paragraphs' count."""
    key, prompts, texts = work / "key", work / "prompts.txt", work / "generated.jsonl"
    subprocess.run(tokeff("watermark", "keygen", "--scheme", "kgw", "-m", MODEL, "-o", key, "--seed", 7), check=True,
                   stdout=subprocess.DEVNULL)
    human = human_paragraphs()
    prompts.write_text("".join(" ".join(p.split()[:12]) + "\n" for p in human[-generated:]))
    subprocess.run(tokeff("watermark", "generate", "--key", key, "-m", MODEL, "--prompt-file", prompts, "-o", texts,
                          "--max-new-tokens", 120, "--seed", 0, "--ignore-eos"), check=True, stdout=subprocess.DEVNULL)
    marked = [json.loads(line)["text"] for line in texts.read_text().splitlines()]
    corpus = work / "corpus.jsonl"
    with corpus.open("w") as stream:
        for index in range(docs):
            label, pool = ("watermarked", marked) if index % 2 == 0 else ("human", human)
            stream.write(json.dumps({"doc": f"d{index}", "text": pool[(index // 2) % len(pool)], "label": label}) + "\n")
    return key, corpus, len(human)


def same_rows(a: Path, b: Path) -> bool:
    return pq.read_table(a).sort_by("id").equals(pq.read_table(b).sort_by("id"))


def run_engines(kind: str, base: list, corpus: Path, work: Path, engines: list[tuple[str, int]], batch: int,
                timeout: float) -> list[dict]:
    rows = []
    for engine, workers in engines:
        out = work / f"{kind}-{engine}-{workers}.parquet"
        args = base + [corpus, "--id-field", "doc", "-o", out, "--engine", engine, "--batch-size", batch, "--json"]
        if engine == "ray":
            args += ["--workers", workers]
        result = measured(tokeff(*args), timeout)
        summary = result.pop("summary")
        row = {"engine": engine, "workers": workers if engine == "ray" else None, **result,
               "job_seconds": summary["seconds"], "documents": summary["documents"], "failed": summary["failed"],
               "bytes": summary["bytes"], "summary": summary}
        row["docs_per_s"] = row["documents"] / row["job_seconds"]
        row["bytes_per_s"] = row["bytes"] / row["job_seconds"]
        row["startup_seconds"], row["steady_docs_per_s"] = summary["startup_seconds"], summary["steady_docs_per_s"]
        # mean doc size; no rate after start-up when the first batch held every document
        row["steady_bytes_per_s"] = (row["steady_docs_per_s"] and row["bytes_per_s"] * row["steady_docs_per_s"] / row["docs_per_s"])
        if rows:
            row["rows_equal_local"] = same_rows(work / f"{kind}-local-1.parquet", out)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "summary"}), file=sys.stderr, flush=True)
    return rows


def figure(value: float | None, spec: str) -> str:
    """A table cell; '-' where the run gave no figure (no rate after start-up when the first batch held every document)."""
    return "-" if value is None else format(value, spec)


def write_doc(results: dict, command: str, docs: Path) -> None:
    from tokeff.core.reporting import Bars, Panel, plot_panels

    (docs / "corpus.json").write_text(json.dumps(results, indent=2) + "\n")
    label = lambda r: "local" if r["engine"] == "local" else f"ray x{r['workers']}"  # noqa: E731
    detect, bpb = results["detect"], results["bpb"]
    plot_panels(docs / "corpus.png", [
        Panel("", "documents/s (job)", f"watermark detect, {results['docs']:,} docs",
              bars=Bars([label(r) for r in detect], [r["docs_per_s"] for r in detect])),
        Panel("", "bytes/s (job)", f"bits per byte, {results['bpb_docs']:,} docs, {MODEL}",
              bars=Bars([label(r) for r in bpb], [r["bytes_per_s"] for r in bpb])),
    ])
    local, ray1 = detect[0], next(r for r in detect if r["workers"] == 1 and r["engine"] == "ray")
    ray2 = next((r for r in detect if r["workers"] == 2), None)
    overhead = local["docs_per_s"] / ray1["docs_per_s"] - 1
    def steady_ratio(a: dict, b: dict) -> float | None:
        return a["steady_docs_per_s"] / b["steady_docs_per_s"] if a["steady_docs_per_s"] and b["steady_docs_per_s"] else None

    ratio = steady_ratio(local, ray1)
    steady_overhead = None if ratio is None else ratio - 1
    ratios = [f"- Ray's overhead at 1 worker against local: {figure(steady_overhead, '+.0%')} in documents/s after start-up, "
              f"{overhead:+.0%} over the whole job (Ray's and the actors' start-up of {ray1['startup_seconds']:.0f} s "
              f"included, against local's {local['startup_seconds']:.1f} s); target at most +15%."]
    if ray2:
        ratios.append(f"- Scaling from 1 to 2 Ray workers: {figure(steady_ratio(ray2, ray1), '.2f')}x in "
                      f"documents/s after start-up, {ray2['docs_per_s'] / ray1['docs_per_s']:.2f}x over the whole job; "
                      "target at least 1.7x.")
    lines = ["# Corpus jobs: engine local against Ray Data", "",
             f"Reproduce: `{command}` (under `flock /tmp/tokeff-bench.lock`)."
             + (f" The {' and '.join(results['separate_runs'])} part was last measured on its own (`--parts`), the rest "
                "in an earlier run of the same command." if results.get("separate_runs") else ""), "",
             f"Machine: {os.cpu_count()} CPU cores (load average {results['load_average']:.1f} at the start). Every process computes on one thread "
             "(`OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1`: what a one-CPU Ray actor gets), so local and one Ray worker compute "
             "alike. *Job s* is the command's own time (its summary's `seconds`), *start-up s* the part of it before as many "
             "scored batches as workers came back (for Ray: starting Ray, the actors, and the key or model loaded in each), and *after "
             "start-up* the rate from then on, which is what a long job runs at.", "",
             f"## Watermark detection ({results['docs']:,} documents, kgw key on {MODEL})", "",
             f"Half the documents are {results['generated']} texts watermarked by `tokeff watermark generate` (120 tokens each), "
             f"half WikiText-2 paragraphs ({results['human']:,} distinct), each cycled to fill the corpus; "
             f"batch size {results['batch_size']}.", "",
             "| engine | wall s | job s | start-up s | documents/s | after start-up | MB/s | peak RSS MiB (process tree) "
             "| detections | after BH | rows = local |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in detect:
        s = r["summary"]
        lines.append(f"| {label(r)} | {r['wall_seconds']:.1f} | {r['job_seconds']:.1f} | {figure(r['startup_seconds'], '.1f')} | "
                     f"{r['docs_per_s']:,.0f} | {figure(r['steady_docs_per_s'], ',.0f')} | "
                     f"{r['bytes_per_s'] / 1e6:.2f} | {r['peak_rss_mib']:,.0f} | {s.get('detections', '-')} | "
                     f"{s.get('detections_bh', '-')} | {r.get('rows_equal_local', '-')} |")
    lines += ["", *ratios, "",
              f"## Bits per byte ({results['bpb_docs']:,} documents, {MODEL}, context 1024)", "",
              "| engine | wall s | job s | start-up s | documents/s | KB/s | KB/s after start-up | peak RSS MiB (process tree) "
              "| corpus bpb | rows = local |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in bpb:
        steady = r["steady_bytes_per_s"] and r["steady_bytes_per_s"] / 1e3
        lines.append(f"| {label(r)} | {r['wall_seconds']:.1f} | {r['job_seconds']:.1f} | {figure(r['startup_seconds'], '.1f')} | "
                     f"{r['docs_per_s']:.1f} | {r['bytes_per_s'] / 1e3:.1f} | {figure(steady, '.1f')} | "
                     f"{r['peak_rss_mib']:,.0f} | {r['summary']['bpb']:.4f} | "
                     f"{r.get('rows_equal_local', '-')} |")
    lines += ["", "![throughput by engine](corpus.png)", "", USAGE]
    (docs / "corpus.md").write_text("\n".join(lines))


USAGE = """## Running a corpus job

One document per text file, or JSONL (`--field text`, `--id-field`) or Parquet; folders and globs too:

```
tokeff watermark detect --key KEY 'data/*.jsonl' -o detections.parquet --json
tokeff eval bpb -m MODEL corpus.parquet --field body -o bpb.parquet
```

Rows go to numbered parts under the output as they complete; `--resume` finishes a killed run with
exactly the documents not yet written.

### On a Ray cluster (several machines)

Start Ray on the head node and join each worker node, then point the same command at the cluster:

```
ray start --head --port 6379                 # on the head node
ray start --address HEAD_IP:6379             # on every other node
tokeff watermark detect --key KEY 'data/*.parquet' -o detections.parquet \\
    --engine ray --address HEAD_IP:6379 --workers 32 --batch-size 1024
```

Every path (corpus files, key, model folder, output) must be readable at the same path on every
node (a shared file system), since each actor loads the key or model itself. The driver (where the
command runs) writes the output; the actors only score. Without `--address`, `--engine ray` starts a
Ray instance on this machine with `--workers` + 1 CPUs.

### With GPUs

`--gpus-per-worker G` asks Ray for G GPUs per scoring actor (fractions share a GPU), and
`--device cuda` (eval bpb) puts each actor's model on its GPU:

```
tokeff eval bpb -m MODEL 'data/*.jsonl' -o bpb.parquet --engine ray --address HEAD_IP:6379 \\
    --workers 8 --gpus-per-worker 1 --device cuda --dtype bfloat16 --batch-size 64
```

`--batch-size` documents go to an actor at a time. Ray pays a fixed cost per batch (a task on an actor, its
blocks through the object store), so watermark detection, which scores a document in about a millisecond,
wants batches of a thousand or so. eval bpb packs their windows several to a model
call (right-padded, up to the context's tokens per call), which is where a GPU earns its keep on
short documents. Watermark detection needs no model, only the key and the tokenizer: it runs on
CPUs (`--gpus-per-worker 0`, the default).
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--bpb-docs", type=int, default=2_000)
    parser.add_argument("--generated", type=int, default=64, help="distinct watermarked texts generated")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--parts", default="detect,bpb",
                        help="the parts to measure; the others are kept from --docs-out's corpus.json")
    parser.add_argument("--docs-out", type=Path, default=ROOT / "docs", help="where corpus.md goes (elsewhere for a quick check)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tokeff-corpus-bench-") as tmp:
        work = Path(tmp)
        key, corpus, human = build_corpus(work, args.docs, args.generated)
        parts = set(args.parts.split(","))
        kept = json.loads((args.docs_out / "corpus.json").read_text()) if parts != {"detect", "bpb"} else {}
        engines = [("local", 1), ("ray", 1), ("ray", 2)]
        detect = kept["detect"] if "detect" not in parts else run_engines(
            "detect", ["watermark", "detect", "--key", key], corpus, work, engines, args.batch_size, args.timeout)
        bpb_corpus = work / "human.jsonl"
        paragraphs = human_paragraphs()
        bpb_corpus.write_text("".join(json.dumps({"doc": f"h{i}", "text": paragraphs[i % len(paragraphs)]}) + "\n"
                                      for i in range(args.bpb_docs)))
        bpb = kept["bpb"] if "bpb" not in parts else run_engines(
            "bpb", ["eval", "bpb", "-m", MODEL], bpb_corpus, work, [("local", 1), ("ray", 1)], min(args.batch_size, 64),
            args.timeout)
    given = [arg for arg in sys.argv[1:] if not arg.startswith("--parts=")]
    if "--parts" in given:  # "--parts X" as two words
        del given[given.index("--parts") : given.index("--parts") + 2]
    command = " ".join(["PYTHONPATH=. python benchmarks/corpus/run.py", *given])
    write_doc({"docs": args.docs, "bpb_docs": args.bpb_docs, "generated": args.generated, "human": human,
               "batch_size": args.batch_size, "load_average": load, "detect": detect, "bpb": bpb,
               "separate_runs": sorted(parts) if kept else None}, command, args.docs_out)


if __name__ == "__main__":
    main()
