"""Benchmark: corpus jobs with engine `local` against engine `ray` at 1 and 2 workers.

In one run, on one corpus built here (nothing downloaded):
- watermark detection: `--docs` documents, half of them continuations that `tokeff watermark
  generate` wrote with a kgw key on smollm2-135m (`--generated` distinct texts, cycled), half
  human WikiText-2 paragraphs from ../shared/data (cycled); `tokeff watermark detect -o` with
  `--engine local`, then `--engine ray --workers 1` and `--workers 2`;
  each Ray configuration twice: starting its own Ray instance (no `--address`), and joining a Ray
  cluster started beforehand with `ray start --head` (`--address`), as on a real cluster, where the
  job no longer pays for starting Ray; with `--long-docs N`, the three own-instance jobs again on N
  documents, where start-up is a smaller part of the job;
- bits per byte: `--bpb-docs` WikiText-2 lines (its paragraphs, one per line; cycled) under smollm2-135m,
  local on 2 torch threads against ray with 2 one-thread workers (both use the whole machine).
Each job runs as a subprocess of its own, `--repeats` times for the `--docs` detection jobs (the median is
reported), after the previous job's Ray processes have exited, on one torch thread per process (`OMP_NUM_THREADS=1`, what
Ray gives an actor of one CPU, so local and one Ray worker compute alike): wall time (Ray's start included), the job's own seconds
(the summary's), documents/s and bytes/s, and the peak RSS summed over the process tree (the
driver and, for ray, its Ray processes and actors; sampled every 0.1 s). Rows of every ray run are
checked equal to local's. Writes docs/corpus.md, docs/corpus.json and docs/corpus.png.

    PYTHONPATH=. python benchmarks/corpus/run.py [--docs 20000] [--long-docs 200000] [--bpb-docs 2000] [--generated 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
MODEL = "smollm2-135m"
CLUSTER = "127.0.0.1:6380"  # the `ray start --head` cluster the --address jobs join
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}


def tokeff(*args: object) -> list[str]:
    return [sys.executable, "-m", "tokeff", *map(str, args)]


def measured(command: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `command`: wall seconds, peak RSS of its whole process tree, its JSON stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **ENV, **(env or {})})
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


def human_lines() -> list[str]:
    """WikiText-2's paragraphs as the file holds them, one per line (headings and blank lines left out)."""
    return [line.strip() for line in DATA.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("=")]


def build_key_and_texts(work: Path, generated: int) -> tuple[Path, list[str]]:
    """The kgw key and `generated` texts watermarked with it."""
    key, prompts, texts = work / "key", work / "prompts.txt", work / "generated.jsonl"
    subprocess.run(tokeff("watermark", "keygen", "--scheme", "kgw", "-m", MODEL, "-o", key, "--seed", 7), check=True,
                   stdout=subprocess.DEVNULL)
    prompts.write_text("".join(" ".join(p.split()[:12]) + "\n" for p in human_paragraphs()[-generated:]))
    subprocess.run(tokeff("watermark", "generate", "--key", key, "-m", MODEL, "--prompt-file", prompts, "-o", texts,
                          "--max-new-tokens", 120, "--seed", 0, "--ignore-eos"), check=True, stdout=subprocess.DEVNULL)
    return key, [json.loads(line)["text"] for line in texts.read_text().splitlines()]


def build_corpus(path: Path, docs: int, marked: list[str]) -> Path:
    """A .jsonl corpus (id, text, label): watermarked and human documents alternating, each pool cycled."""
    human = human_paragraphs()
    with path.open("w") as stream:
        for index in range(docs):
            label, pool = ("watermarked", marked) if index % 2 == 0 else ("human", human)
            stream.write(json.dumps({"doc": f"d{index}", "text": pool[(index // 2) % len(pool)], "label": label}) + "\n")
    return path


@contextmanager
def ray_cluster(workers: int):
    """A Ray cluster on this machine, started as `ray start --head` would be on a cluster's head node."""
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", "--port", CLUSTER.split(":")[1], "--num-cpus", str(workers + 1),
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True,
                   env={**os.environ, **ENV})
    try:
        yield CLUSTER
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)


def same_rows(a: Path, b: Path) -> bool:
    return pq.read_table(a).sort_by("id").equals(pq.read_table(b).sort_by("id"))


def run_engines(kind: str, base: list, corpus: Path, work: Path, engines: list[tuple], batch: int,
                timeout: float, repeats: int = 1, local_threads: int = 1) -> list[dict]:
    """One job per (engine, workers[, cluster address]), `repeats` times each: the row is the run of median job time,
    with every run's job time beside it. Each Ray job's rows are checked against the local job's output of the same
    kind, which must have run first in the same `work` folder. `local_threads`: torch threads of the local job."""
    rows, baseline = [], _ray_agents()
    for engine, workers, *address in engines:
        out = work / f"{kind}-{engine}-{workers}{'-cluster' if address else ''}.parquet"
        args = base + [corpus, "--id-field", "doc", "-o", out, "--engine", engine, "--batch-size", batch, "--json", "--force"]
        if engine == "ray":
            args += ["--workers", workers] + (["--address", address[0]] if address else [])
        # Ray 2.60's `ray start` turns on token authentication; a job joining by address must use it too
        env = {"RAY_AUTH_MODE": "token"} if address else {"OMP_NUM_THREADS": str(local_threads)} if engine == "local" else {}
        runs = []
        for _ in range(repeats):
            _wait_for_ray_exit(baseline)
            runs.append(measured(tokeff(*args), timeout, env))
        every = [run["summary"]["seconds"] for run in runs]
        result = sorted(runs, key=lambda run: run["summary"]["seconds"])[len(runs) // 2]
        if address:  # the cluster's processes are not the job's children: its RSS would be the driver's alone
            result["peak_rss_mib"] = None
        summary = result.pop("summary")
        row = {"engine": engine, "workers": workers if engine == "ray" else None, "cluster": bool(address), **result,
               "threads": local_threads if engine == "local" else 1,
               "job_seconds": summary["seconds"], "job_seconds_runs": every,
               "documents": summary["documents"], "failed": summary["failed"], "bytes": summary["bytes"], "summary": summary}
        row["docs_per_s"] = row["documents"] / row["job_seconds"]
        row["bytes_per_s"] = row["bytes"] / row["job_seconds"]
        row["startup_seconds"], row["steady_docs_per_s"] = summary.get("startup_seconds"), summary.get("steady_docs_per_s")
        # mean doc size; no rate after start-up when the first batch held every document
        row["steady_bytes_per_s"] = (row["steady_docs_per_s"] and row["bytes_per_s"] * row["steady_docs_per_s"] / row["docs_per_s"])
        if engine != "local":
            row["rows_equal_local"] = same_rows(work / f"{kind}-local-1.parquet", out)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "summary"}), file=sys.stderr, flush=True)
    return rows


def _ray_agents() -> int:
    """Ray's per-node agents running now (a cluster's, or a finished job's that have not exited yet); the process
    name is cut to 15 characters."""
    return sum(1 for p in psutil.process_iter(["name"])
               if (p.info["name"] or "").startswith(("ray::DashboardA", "ray::RuntimeEnv")))


def _wait_for_ray_exit(baseline: int, limit: float = 180) -> None:
    """A finished job's Ray agents outlive its driver by a minute or so, using CPU: wait for them, so the next job
    runs on a machine as idle as the first one did."""
    deadline = time.monotonic() + limit
    while _ray_agents() > baseline and time.monotonic() < deadline:
        time.sleep(1)


def figure(value: float | None, spec: str) -> str:
    """A table cell; '-' where the run gave no figure (no rate after start-up when the first batch held every document)."""
    return "-" if value is None else format(value, spec)


def label(row: dict) -> str:
    if row["engine"] == "local":
        return "local" + (f" ({row['threads']} threads)" if row.get("threads", 1) > 1 else "")
    return f"ray x{row['workers']}" + (" (cluster)" if row.get("cluster") else "")


def ratio_lines(rows: list[dict]) -> list[str]:
    """Ray against local at 1 worker, and 2 workers against 1, whole job and after start-up, per Ray set-up."""
    def ratio(a: dict, b: dict, key: str) -> float | None:
        return a[key] / b[key] if a.get(key) and b.get(key) else None

    local, lines = rows[0], []
    for cluster, how in ((False, "starting its own Ray"), (True, "joining a running cluster")):
        one = next((r for r in rows if r["engine"] == "ray" and r["workers"] == 1 and r.get("cluster", False) == cluster), None)
        two = next((r for r in rows if r["engine"] == "ray" and r["workers"] == 2 and r.get("cluster", False) == cluster), None)
        if one is None:
            continue
        whole, steady = ratio(local, one, "docs_per_s"), ratio(local, one, "steady_docs_per_s")
        lines.append(f"- Ray {how}, overhead at 1 worker against local (target at most +15%): "
                     f"{whole - 1:+.0%} over the whole job, {figure(steady and steady - 1, '+.0%')} after start-up.")
        if two:
            lines.append(f"- Ray {how}, scaling from 1 to 2 workers (target at least 1.7x): "
                         f"{ratio(two, one, 'docs_per_s'):.2f}x over the whole job, "
                         f"{figure(ratio(two, one, 'steady_docs_per_s'), '.2f')}x after start-up.")
    return lines


def detect_table(rows: list[dict]) -> list[str]:
    lines = ["| engine | wall s | job s | start-up s | documents/s | after start-up | MB/s | peak RSS MiB (process tree) "
             "| detections | after BH | rows = local | job s, every run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = r["summary"]
        lines.append(f"| {label(r)} | {r['wall_seconds']:.1f} | {r['job_seconds']:.1f} | {figure(r['startup_seconds'], '.1f')} | "
                     f"{r['docs_per_s']:,.0f} | {figure(r['steady_docs_per_s'], ',.0f')} | "
                     f"{r['bytes_per_s'] / 1e6:.2f} | {figure(r['peak_rss_mib'], ',.0f')} | {s.get('detections', '-')} | "
                     f"{s.get('detections_bh', '-')} | {r.get('rows_equal_local', '-')} | "
                     f"{', '.join(f'{t:.1f}' for t in r.get('job_seconds_runs', [r['job_seconds']]))} |")
    return lines


def write_doc(results: dict, command: str, docs: Path) -> None:
    from tokeff.core.reporting import Bars, Panel, plot_panels

    (docs / "corpus.json").write_text(json.dumps(results, indent=2) + "\n")
    detect, long, bpb = results["detect"], results.get("detect_long"), results["bpb"]
    panels = [Panel("", "documents/s (job)", f"watermark detect, {results['docs']:,} docs",
                    bars=Bars([label(r) for r in detect], [r["docs_per_s"] for r in detect]))]
    if long:
        panels.append(Panel("", "documents/s (job)", f"watermark detect, {results['long_docs']:,} docs",
                            bars=Bars([label(r) for r in long], [r["docs_per_s"] for r in long])))
    panels.append(Panel("", "bytes/s (job)", f"bits per byte, {results['bpb_docs']:,} docs, {MODEL}",
                        bars=Bars([label(r) for r in bpb], [r["bytes_per_s"] for r in bpb])))
    plot_panels(docs / "corpus.png", panels)
    lines = ["# Corpus jobs: engine local against Ray Data", "",
             f"Reproduce: `{command}`."
             + (f" The {' and '.join(results['separate_runs'])} part was last measured on its own (`--parts`); the "
                f"other kept its figures from an earlier run (bits per byte: `--bpb-docs {results['bpb_docs']}`)."
                if results.get("separate_runs") else ""), "",
             f"Machine: {os.cpu_count()} CPU cores (load average {results['load_average']:.1f} at the start). Every process computes on one thread "
             "(`OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1`: what a one-CPU Ray actor gets), so local and one Ray worker compute "
             "alike" + ("; the bits-per-byte local job alone runs on 2 threads" if any(r.get("threads", 1) > 1 for r in bpb)
                        else "") + ". Each job starts after the previous job's Ray processes have exited. *Wall s* is the command's time from its start to its exit, *job s* the command's own time from "
             "after its arguments are checked (its summary's `seconds`), *start-up s* the part of the job before as many "
             "scored batches as workers came back (for Ray: starting Ray, the actors, and the key or model loaded in each), and *after "
             "start-up* the rate from then on, which is what a long job runs at. *(cluster)* rows join a Ray cluster "
             "started beforehand on this machine (`ray start --head`, then `--address`), as a job on a real cluster does; "
             "their peak RSS is not given, since the cluster's processes are not the command's.", "",
             f"## Watermark detection ({results['docs']:,} documents, kgw key on {MODEL})", "",
             f"Half the documents are {results['generated']} texts watermarked by `tokeff watermark generate` (120 tokens each), "
             f"half WikiText-2 paragraphs ({results['human']:,} distinct), each cycled to fill the corpus; "
             f"batch size {results['batch_size']}. Each job ran {results.get('repeats', 1)} times; the table shows the run of "
             "median job time, and every run's job time in the last column.", "", *detect_table(detect), "", *ratio_lines(detect), ""]
    if long:
        lines += [f"### The same corpus, cycled to {results['long_docs']:,} documents", "", *detect_table(long), "",
                  *ratio_lines(long), ""]
    lines += [f"## Bits per byte ({results['bpb_docs']:,} documents, {MODEL}, context 1024)", "",
              (f"The documents are WikiText-2's paragraphs as its file holds them, one per line "
               f"({results['bpb_distinct']:,} distinct, cycled); batch size {min(results['batch_size'], 64)}. Both "
               "engines use both cores: local on 2 torch threads, Ray with 2 actors of one thread each."
               if results.get("bpb_distinct") else
               "Kept from an earlier run of this benchmark, before it changed: the documents were the human "
               "paragraphs above, batch size 64, one thread per process, local against ray x1."), "",
              "| engine | wall s | job s | start-up s | documents/s | KB/s | KB/s after start-up | peak RSS MiB (process tree) "
              "| corpus bpb | rows = local |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in bpb:
        steady = r["steady_bytes_per_s"] and r["steady_bytes_per_s"] / 1e3
        lines.append(f"| {label(r)} | {r['wall_seconds']:.1f} | {r['job_seconds']:.1f} | {figure(r['startup_seconds'], '.1f')} | "
                     f"{r['docs_per_s']:.1f} | {r['bytes_per_s'] / 1e3:.1f} | {figure(steady, '.1f')} | "
                     f"{figure(r['peak_rss_mib'], ',.0f')} | {r['summary']['bpb']:.4f} | "
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
    --engine ray --address HEAD_IP:6379 --workers 32 --batch-size 1024     # with RAY_AUTH_MODE=token, below
```

Every path (corpus files, key, model folder, output) must be readable at the same path on every
node (a shared file system), since each actor loads the key or model itself. The driver (where the
command runs) writes the output; the actors only score. Without `--address`, `--engine ray` starts a
Ray instance of its own on this machine with `--workers` + 1 CPUs, even where a cluster runs here.

Ray 2.60's `ray start` turns on token authentication. On this machine a job joining by address
(`--address HEAD_IP:6379`) was refused (`InvalidAuthToken`) until it ran with `RAY_AUTH_MODE=token`,
which reads the cluster's token from `~/.ray/auth_token` (or `RAY_AUTH_TOKEN`); `--address auto`, on a
node of the cluster, joined without it. See Ray's token-authentication guide for other nodes.

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
    parser.add_argument("--long-docs", type=int, default=0, help="also run the own-instance jobs on this many documents")
    parser.add_argument("--bpb-docs", type=int, default=2_000)
    parser.add_argument("--generated", type=int, default=64, help="distinct watermarked texts generated")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each --docs detection job (median reported)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--parts", default="detect,bpb",
                        help="the parts to measure; the others are kept from --docs-out's corpus.json")
    parser.add_argument("--docs-out", type=Path, default=ROOT / "docs", help="where corpus.md goes (elsewhere for a quick check)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    parts = set(args.parts.split(","))
    kept = json.loads((args.docs_out / "corpus.json").read_text()) if parts != {"detect", "bpb"} else {}
    own = [("local", 1), ("ray", 1), ("ray", 2)]
    with tempfile.TemporaryDirectory(prefix="tokeff-corpus-bench-") as tmp:
        work = Path(tmp)
        key, marked = build_key_and_texts(work, args.generated)
        detect, long = kept.get("detect"), kept.get("detect_long")
        if "detect" in parts:
            base = ["watermark", "detect", "--key", key]
            corpus = build_corpus(work / "corpus.jsonl", args.docs, marked)
            detect = run_engines("detect", base, corpus, work, own, args.batch_size, args.timeout, args.repeats)
            with ray_cluster(workers=2) as address:
                detect += run_engines("detect", base, corpus, work, [("ray", 1, address), ("ray", 2, address)],
                                      args.batch_size, args.timeout, args.repeats)
            if args.long_docs:
                corpus = build_corpus(work / "long.jsonl", args.long_docs, marked)
                long = run_engines("detect-long", base, corpus, work, own, args.batch_size, args.timeout)
        bpb_corpus, lines = work / "human.jsonl", human_lines()
        bpb_corpus.write_text("".join(json.dumps({"doc": f"h{i}", "text": lines[i % len(lines)]}) + "\n"
                                      for i in range(args.bpb_docs)))
        # Both engines use the whole machine: local on 2 torch threads, Ray with 2 one-thread actors.
        bpb = kept["bpb"] if "bpb" not in parts else run_engines(
            "bpb", ["eval", "bpb", "-m", MODEL], bpb_corpus, work, [("local", 1), ("ray", 2)], min(args.batch_size, 64),
            args.timeout, local_threads=2)
    given = [arg for arg in sys.argv[1:] if not arg.startswith("--parts=")]
    if "--parts" in given:  # "--parts X" as two words
        del given[given.index("--parts") : given.index("--parts") + 2]
    command = " ".join(["PYTHONPATH=. python benchmarks/corpus/run.py", *given])
    # a part kept from an earlier run keeps that run's size (its --bpb-docs or --docs)
    write_doc({"docs": args.docs if "detect" in parts else kept["docs"],
               "long_docs": args.long_docs if "detect" in parts else kept.get("long_docs", 0),
               "bpb_docs": args.bpb_docs if "bpb" in parts else kept["bpb_docs"], "generated": args.generated,
               "human": len(human_paragraphs()), "bpb_distinct": len(lines) if "bpb" in parts else kept.get("bpb_distinct"),
               "repeats": args.repeats, "batch_size": args.batch_size, "load_average": load, "detect": detect,
               "detect_long": long, "bpb": bpb, "separate_runs": sorted(parts) if kept else None}, command, args.docs_out)


if __name__ == "__main__":
    main()
