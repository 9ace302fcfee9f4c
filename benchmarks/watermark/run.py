"""Watermarks on smollm2-135m: detection power, false positives, text quality, detection speed.

In one run: generates watermarked texts with an `exp`, a `kgw` and a `synthid` key and plain
samples without a key (wikitext-2 paragraph openings as prompts, from the first half of the file),
then measures, for the three schemes side by side,
- power: share of watermarked texts detected at p <= 0.01, against length and random edits,
- false positives at alpha 0.01 on text that never saw the key: the model's plain samples, the
  other schemes' watermarked texts, and human text (windows of the second half of wikitext-2, and
  of tinyshakespeare past the 60,000 characters the unit tests train their tokenizers on),
- quality: the model's own negative log-likelihood of each set of continuations (distortion-free
  sampling should match plain sampling; kgw's bias should not),
- speed of the exp detector (key length 256, 200-token texts): the Numba kernels against a
  straightforward NumPy version of the same statistic and the same Monte Carlo test; and the
  full test's texts/s of each scheme.
Writes docs/watermark.md, docs/watermark.json and the plots docs/watermark_*.png. The timed part
(detection speed) holds /tmp/tokeff-bench.lock itself, so other benchmarks on a shared machine
do not run during it; generation and the (untimed) power measurements do not hold it.

    python benchmarks/watermark/run.py [--texts 24] [--generations CACHE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SHAKESPEARE_SKIP = 60_000  # characters tests/tiny_models.py trains tokenizers on
SCHEMES = ("exp", "kgw", "synthid")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_lock(path: str = "/tmp/tokeff-bench.lock"):
    """Hold the machine's benchmark lock (flock) while timing."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def timed(fn, repeat: int = 1):
    """(value of the last call, best seconds over `repeat` calls)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return value, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=48, help="watermarked texts per scheme")
    parser.add_argument("--null-texts", type=int, default=48, help="plain model samples")
    parser.add_argument("--human-texts", type=int, default=600, help="wikitext-2 windows")
    parser.add_argument("--shakespeare-texts", type=int, default=300, help="tinyshakespeare windows")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for generation")
    parser.add_argument("--lengths", default="8,12,16,24,32,48,64,96,128,200")
    parser.add_argument("--edit-rates", default="0,0.2,0.4")
    parser.add_argument("--edit-length", type=int, default=100)
    parser.add_argument("--windows-per-text", type=int, default=4, help="windows of each length cut from a text")
    parser.add_argument("--throughput-texts", type=int, default=16)
    parser.add_argument("--numpy-texts", type=int, default=2, help="texts the (slow) NumPy detector runs on")
    parser.add_argument("--interop-texts", type=int, default=20,
                        help="texts per config that transformers' own generate watermarks, for tokeff to detect")
    parser.add_argument("--generations", type=Path, help="cache of the generated texts (reused if it exists)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--lock-held", action="store_true",
                        help="the caller holds /tmp/tokeff-bench.lock (flock ... run.py --lock-held): do not take it again")
    parser.add_argument("--render-only", action="store_true", help="rewrite watermark.md from watermark.json")
    args = parser.parse_args()
    if args.render_only:
        rerender(args.docs)
        return

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    from tokeff.core.models import load_model
    from tokeff.core.textio import read_text
    from tokeff.decoding.watermark import evaluation
    from tokeff.decoding.watermark.keys import make_key

    started = time.perf_counter()
    lm = load_model(args.model, device="cpu")
    tokenizer = lm.tokenizer
    prompt_half, human_half = evaluation.split_corpus(read_text(DATA))
    # Fixed seeds make the run reproducible; a real key comes from `tokeff watermark keygen` without --seed.
    keys = {scheme: make_key(scheme, tokenizer, args.model, seed=101 + index) for index, scheme in enumerate(SCHEMES)}
    generations, generation_seconds = generate_all(args, lm, keys, prompt_half)
    human = evaluation.human_windows(tokenizer, human_half, args.human_texts, args.max_new_tokens)
    shakespeare = evaluation.human_windows(tokenizer, read_text(SHAKESPEARE)[SHAKESPEARE_SKIP:],
                                           args.shakespeare_texts, args.max_new_tokens)
    lengths = [int(v) for v in args.lengths.split(",")]
    rates = [float(v) for v in args.edit_rates.split(",")]

    evals = {}
    for scheme, key in keys.items():
        unwatermarked = {
            "model, no key": [g["token_ids"] for g in generations["plain"]],
            **{f"model, {other} key": [g["token_ids"] for g in generations[other]] for other in keys if other != scheme},
            "human (wikitext-2)": human,
            "human (tinyshakespeare)": shakespeare,
        }
        log(f"evaluating {scheme}")
        evals[scheme] = evaluation.evaluate_detection(
            key, tokenizer, [g["token_ids"] for g in generations[scheme]], unwatermarked, lengths, rates,
            edit_length=args.edit_length, alpha=0.01, seed=0, windows_per_text=args.windows_per_text,
        )
        log(f"  {evals[scheme].detection_seconds:.0f} s")
    log("transformers interop")
    interop = transformers_interop(args, lm, prompt_half)
    log("quality")
    quality = {name: continuation_nll(lm, items) for name, items in generations.items()}
    log("throughput (waiting for the benchmark lock)")
    with contextlib.nullcontext() if args.lock_held else bench_lock():
        speed = throughput(args, keys["exp"], generations["exp"], human)
        speed["schemes"] = scheme_speed(args, keys, generations, human)
    results = {
        "model": args.model,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "keys": {scheme: {"scheme": scheme, **key.params} for scheme, key in keys.items()},
        "generation_seconds": generation_seconds,
        "generated_tokens": {name: sum(len(g["token_ids"]) for g in items) for name, items in generations.items()},
        "evaluations": {scheme: result.to_json() for scheme, result in evals.items()},
        "quality": quality,
        "interop": interop,
        "throughput": speed,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "total_seconds": time.perf_counter() - started,
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "watermark.json").write_text(json.dumps(results, indent=2) + "\n")
    evaluation.plot_power(list(evals.values()), args.docs, prefix="watermark_")
    (args.docs / "watermark.md").write_text(render(results, evals))
    log(f"wrote {args.docs / 'watermark.md'} in {results['total_seconds']:.0f} s")


def rerender(docs: Path) -> None:
    """watermark.md and the plots again from the measured watermark.json (after editing the prose here)."""
    from dataclasses import fields

    from tokeff.decoding.watermark import evaluation

    results = json.loads((docs / "watermark.json").read_text())
    names = {f.name for f in fields(evaluation.WatermarkEval)}
    evals = {scheme: evaluation.WatermarkEval(**{k: v for k, v in entry.items() if k in names})
             for scheme, entry in results["evaluations"].items()}
    evaluation.plot_power(list(evals.values()), docs, prefix="watermark_")
    (docs / "watermark.md").write_text(render(results, evals))


def generate_all(args, lm, keys, prompt_half):
    """Watermarked texts per scheme and plain samples, each from its own prompts; cached if asked."""
    cached = {"generations": {}, "seconds": {}}
    if args.generations and args.generations.exists():  # a run that stopped part-way keeps what it generated
        cached = json.loads(args.generations.read_text())
    from tokeff.decoding.types import DecodeConfig
    from tokeff.decoding.watermark import evaluation
    from tokeff.decoding.watermark.generation import generate_texts

    total = len(keys) * args.texts + args.null_texts
    prompts = evaluation.prompts_from_text(lm.tokenizer, prompt_half, total)
    config = DecodeConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=7, stop_at_eos=False)
    plan = {scheme: (key, prompts[index * args.texts : (index + 1) * args.texts])
            for index, (scheme, key) in enumerate(keys.items())}
    plan["plain"] = (None, prompts[len(keys) * args.texts :])
    generations, seconds = cached["generations"], cached["seconds"]
    for name, (key, chunk) in plan.items():
        if name in generations:
            continue
        log(f"generating {len(chunk)} {name} texts of {args.max_new_tokens} tokens")
        items, seconds[name] = timed(lambda: generate_texts(lm, chunk, key, config, batch_size=args.batch_size))
        generations[name] = [item.to_json() for item in items]
        log(f"  {seconds[name]:.0f} s ({len(chunk) * args.max_new_tokens / seconds[name]:.1f} tokens/s)")
        if args.generations:
            args.generations.write_text(json.dumps({"generations": generations, "seconds": seconds}))
    return generations, seconds


def transformers_interop(args, lm, prompt_half) -> dict:
    """Texts that transformers' `generate(watermarking_config=...)` writes on the real model, detected by
    tokeff with a key made from the same config (`keygen --from-transformers`), after decoding to text and
    re-tokenizing as a detector sees them; plain samples from the same prompts as the control."""
    import torch
    from transformers import GenerationConfig, SynthIDTextWatermarkingConfig, WatermarkingConfig

    from tokeff.decoding.watermark import evaluation
    from tokeff.decoding.watermark.detection import detect_texts
    from tokeff.decoding.watermark.keys import key_from_transformers

    configs = {
        "synthid": ("synthid", SynthIDTextWatermarkingConfig(keys=[654, 400, 836, 123, 340, 443, 597, 160, 57, 29, 590, 639],
                                                             ngram_len=5)),
        "kgw lefthash": ("kgw", WatermarkingConfig(seeding_scheme="lefthash", hashing_key=424242)),
        "kgw selfhash": ("kgw", WatermarkingConfig(seeding_scheme="selfhash")),
    }
    tokenizer = lm.tokenizer
    prompts = evaluation.prompts_from_text(tokenizer, prompt_half[len(prompt_half) // 2 :], args.interop_texts)
    # Left padding, so every row generates from the end of its prompt.
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(watermarking_config, seed: int) -> list[str]:
        torch.manual_seed(seed)
        config = GenerationConfig(do_sample=True, top_k=0, temperature=1.0, max_new_tokens=args.max_new_tokens,
                                  min_new_tokens=args.max_new_tokens, pad_token_id=pad, watermarking_config=watermarking_config)
        with torch.inference_mode():
            out = lm.model.generate(**batch, generation_config=config)
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    plain = generate(None, seed=11)
    results = {}
    for name, (scheme, config) in configs.items():
        key = key_from_transformers(scheme, config.to_dict(), tokenizer, args.model)
        started = time.perf_counter()
        marked = generate(config, seed=12)
        seconds = time.perf_counter() - started
        hits = sum(bool(r.watermarked) for r in detect_texts(key, tokenizer, marked, alpha=0.01))
        false = sum(bool(r.watermarked) for r in detect_texts(key, tokenizer, plain, alpha=0.01))
        results[name] = {"config": config.to_dict(), "texts": len(marked), "detected": hits,
                         "detected_rate": evaluation.rate_with_interval(hits, len(marked)),
                         "plain_detected": false, "plain_rate": evaluation.rate_with_interval(false, len(plain)),
                         "generation_seconds": seconds}
        log(f"  {name}: {hits}/{len(marked)} detected, plain {false}/{len(plain)}")
    return results


def continuation_nll(lm, items, batch_size: int = 8) -> dict:
    """Mean negative log-likelihood (nats/token) of each continuation given its prompt, under the model."""
    import torch
    import torch.nn.functional as F

    from tokeff.decoding.types import Prompt

    per_text = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            rows = [(Prompt.from_text(lm, item["prompt"]).ids, item["token_ids"]) for item in items[start : start + batch_size]]
            width = max(len(p) + len(c) for p, c in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (prompt, continuation) in enumerate(rows):
                sequence = prompt + continuation
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            logits = lm.model(input_ids=ids, attention_mask=mask).logits.float()
            for row, (prompt, continuation) in enumerate(rows):
                first = len(prompt)
                predicted = logits[row, first - 1 : first - 1 + len(continuation)]
                per_text.append(float(F.cross_entropy(predicted, torch.tensor(continuation)).item()))
    values = np.array(per_text)
    return {"texts": len(values), "mean_nll": float(values.mean()), "stderr": float(values.std(ddof=1) / np.sqrt(len(values))),
            "per_text": per_text}


def throughput(args, key, marked, human) -> dict:
    """exp detection speed on 200-token texts (key length 256): Numba against NumPy, same statistic and test."""
    from tokeff.decoding.watermark.detection import detect_tokens
    from tokeff.decoding.watermark.scheme import null_seed
    from tokeff.kernels.exp_alignment import TokenBatch, alignment_scores, alignment_scores_numpy, null_keys

    length = args.max_new_tokens
    texts = [g["token_ids"][:length] for g in marked[: args.throughput_texts]]
    plain = human[: args.throughput_texts]
    n, gap, runs = key["key_length"], key["gap"], key["runs"]
    batch = TokenBatch.from_texts(texts)
    alignment_scores(batch, key.words, gap)  # compile outside the timing
    detect_tokens(key, texts[:1])

    # one statistic per text: the hot loop on its own
    _, numba_stat = timed(lambda: alignment_scores(batch, key.words, gap), repeat=3)
    _, numpy_stat = timed(lambda: [alignment_scores_numpy(t, key.words[None], gap) for t in texts], repeat=2)

    # the whole test on watermarked texts: every one of the `runs` null keys is needed
    numba_results, numba_marked = timed(lambda: detect_tokens(key, texts))
    numpy_texts = texts[: args.numpy_texts]

    def numpy_detect():
        p_values = []
        for tokens in numpy_texts:
            observed = alignment_scores_numpy(tokens, key.words[None], gap)[0]
            seed = null_seed(key, np.asarray(tokens))
            exceed = sum(int((alignment_scores_numpy(tokens, null_keys(seed, start, min(100, runs - start), n), gap)
                              >= observed).sum()) for start in range(0, runs, 100))
            p_values.append((exceed + 1) / (runs + 1))  # no early stop: watermarked texts never stop early
        return p_values

    numpy_p, numpy_marked = timed(numpy_detect)
    agree = [abs(a.p_value - b) < 1e-12 for a, b in zip(numba_results, numpy_p)]
    # unwatermarked texts: the sequential test stops early
    plain_results, numba_plain = timed(lambda: detect_tokens(key, plain))
    return {
        "tokens_per_text": length, "key_length": n, "runs": runs,
        "statistic_per_s": {"numba": len(texts) / numba_stat, "numpy": len(texts) / numpy_stat,
                            "ratio": numpy_stat / numba_stat},
        "watermarked_texts_per_s": {"numba": len(texts) / numba_marked, "numpy": len(numpy_texts) / numpy_marked,
                                    "ratio": (numpy_marked / len(numpy_texts)) / (numba_marked / len(texts)),
                                    "numba_texts": len(texts), "numpy_texts": len(numpy_texts),
                                    "same_p_values": all(agree)},
        "unwatermarked_texts_per_s": {"numba": len(plain) / numba_plain,
                                      "mean_null_runs": float(np.mean([r.details["null_runs"] for r in plain_results]))},
    }


def scheme_speed(args, keys, generations, human) -> dict:
    """Full tests per second of each scheme on its own watermarked texts and on human windows."""
    from tokeff.decoding.watermark.detection import detect_tokens

    speeds = {}
    for scheme, key in keys.items():
        marked = [g["token_ids"] for g in generations[scheme][: args.throughput_texts]]
        plain = human[: args.throughput_texts]
        detect_tokens(key, marked[:1])  # compile and warm caches outside the timing
        _, marked_seconds = timed(lambda: detect_tokens(key, marked))
        _, plain_seconds = timed(lambda: detect_tokens(key, plain))
        speeds[scheme] = {"watermarked": len(marked) / marked_seconds, "human": len(plain) / plain_seconds}
    return speeds


def interop_table(interop: dict | None) -> list[str]:
    if not interop:
        return []
    first = next(iter(interop.values()))
    return [
        f"Measured on the model above: {first['texts']} texts of the run's length per config that transformers' "
        "own `model.generate(watermarking_config=...)` wrote (sampling at temperature 1, no top-k), decoded to "
        "text and tested by `tokeff watermark detect`'s code with a key from `keygen --from-transformers` on the "
        "same config; the control is plain samples from the same prompts.",
        "",
        "| transformers config | watermarked detected at p <= 0.01 | 95% interval | plain samples flagged |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {entry['detected']} / {entry['texts']} | {entry['detected_rate']['ci95'][0]:.0%} - "
          f"{entry['detected_rate']['ci95'][1]:.0%} | {entry['plain_detected']} / {entry['plain_rate']['texts']} |"
          for name, entry in interop.items()],
        "",
    ]


def render(results: dict, evals: dict) -> str:
    s = results["settings"]
    speed = results["throughput"]
    lines = [
        "# Watermarks: exp (distortion-free, edit-robust), kgw (green list) and synthid (tournament)",
        "",
        f"Model `{results['model']}`, sampling at temperature 1, {s['max_new_tokens']}-token continuations of "
        f"wikitext-2 paragraph openings (32 tokens, first half of `wikitext2-valid.txt`). Measured "
        f"{time.strftime('%Y-%m-%d')} on a shared 2-core CPU machine; the whole run took "
        f"{results['total_seconds'] / 60:.0f} minutes, waiting for the shared benchmark lock included.",
        "",
        "Reproduce (the detection-speed part takes `/tmp/tokeff-bench.lock` itself, unless run under "
        "`flock /tmp/tokeff-bench.lock ... --lock-held`, as this run was):",
        "",
        "```sh",
        "python benchmarks/watermark/run.py"
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in s.items()
                  if k in ("texts", "null_texts", "human_texts", "shakespeare_texts", "max_new_tokens", "lengths", "edit_rates",
                           "edit_length", "windows_per_text", "batch_size", "threads")),
        "```",
        "",
        "Size of this run: "
        f"{s['texts']} watermarked texts per scheme and {s['null_texts']} plain samples of {s['max_new_tokens']} "
        f"tokens, {s['human_texts']} human windows of wikitext-2 and {s['shakespeare_texts']} of tinyshakespeare "
        f"(past its first 60,000 characters, which the unit tests train on). Generation ran at "
        f"{sum(results['generated_tokens'].values()) / sum(results['generation_seconds'].values()):.0f} "
        f"tokens/s ({s['threads']} torch thread(s), batches of {s['batch_size']}) on a machine shared with other "
        "jobs, which is what bounds the number of generated texts; the 95% intervals below say how much that "
        f"leaves uncertain. Each power cell uses up to {s['windows_per_text']} consecutive non-overlapping windows "
        "of each watermarked text (so short lengths get more samples than long ones), then applies random edits, "
        "decodes to text and re-tokenizes, as a detector would see it.",
        "",
        "Keys: " + "; ".join(f"`{k}`: " + ", ".join(f"{p}={v}" for p, v in key.items() if p != "scheme")
                             for k, key in results["keys"].items()) + ".",
        "",
        "## Shortest text detected 90% of the time (p <= 0.01)",
        "",
        "| edit rate | " + " | ".join(evals) + " |",
        "| --- | " + " | ".join("---" for _ in evals) + " |",
    ]
    rates = sorted({row["edit_rate"] for row in next(iter(evals.values())).power_vs_length})
    for rate in rates:
        cells = [f"{evals[k].min_length(rate)} tokens" if evals[k].min_length(rate) else "not within 200" for k in evals]
        lines.append(f"| {rate:.0%} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Edits are mixed: each is a substitution, an insertion or a deletion of a random vocabulary token, "
        "equally likely; the rate is edits per token. For comparison, the paper reports 35 tokens at 40-50% "
        "edits for the exp scheme with 1B-7B models (other models, prompts and edit model).",
        "",
        "![power vs length](watermark_power_vs_length.png)",
        "",
    ]
    for scheme, result in evals.items():
        lengths = sorted({row["length"] for row in result.power_vs_length})
        lines += [f"### {scheme}: detected at p <= 0.01 (windows tested)", "",
                  "| edit rate | " + " | ".join(str(length) for length in lengths) + " |",
                  "| --- | " + " | ".join("---" for _ in lengths) + " |"]
        for rate in rates:
            rows = {row["length"]: row for row in result.power_vs_length if row["edit_rate"] == rate}
            lines.append(f"| {rate:.0%} | " + " | ".join(
                f"{rows[length]['rate']:.0%} ({rows[length]['texts']})" for length in lengths) + " |")
        lines.append("")
    edit_length = s["edit_length"]
    lines += [f"## Power vs edit kind at {edit_length} tokens", "", "| scheme | kind | "
              + " | ".join(f"{r:.0%}" for r in rates if r > 0) + " |",
              "| --- | --- | " + " | ".join("---" for r in rates if r > 0) + " |"]
    for scheme, result in evals.items():
        for kind in ("substitution", "insertion", "deletion"):
            rows = {row["edit_rate"]: row for row in result.power_vs_edits if row["kind"] == kind}
            lines.append(f"| {scheme} | {kind} | " + " | ".join(f"{rows[r]['rate']:.0%}" for r in rates if r > 0) + " |")
    lines += ["", "![power vs edits](watermark_power_vs_edits.png)", "",
              "## False positives at alpha 0.01 (text that never saw the key)", "",
              "| scheme | text | texts | false positives | rate | 95% interval |", "| --- | --- | --- | --- | --- | --- |"]
    for scheme, result in evals.items():
        for source, entry in result.false_positives.items():
            lines.append(f"| {scheme} | {source} | {entry['texts']} | {entry['hits']} | {entry['rate']:.2%} | "
                         f"{entry['ci95'][0]:.2%} - {entry['ci95'][1]:.2%} |")
    q = results["quality"]
    lines += [
        "",
        "Model texts are tested at their full length, human windows are "
        f"{s['max_new_tokens']} tokens. One key per scheme serves every text here, as in deployment.",
        "",
        "## Text quality: the model's negative log-likelihood of each set of continuations",
        "",
        "| texts | count | mean nats/token | standard error |", "| --- | --- | --- | --- |",
        *[f"| {name} | {entry['texts']} | {entry['mean_nll']:.3f} | {entry['stderr']:.3f} |" for name, entry in q.items()],
        "",
        *[f"- {name} - plain: {q[name]['mean_nll'] - q['plain']['mean_nll']:+.3f} nats/token "
          f"(+/- {2 * np.hypot(q[name]['stderr'], q['plain']['stderr']):.3f}, two standard errors)" for name in results["keys"]],
        "",
        "Exponential-minimum sampling is an exact sample from the model over the random key, so its texts "
        "should score like plain samples; kgw adds `bias` to the green logits, which moves the distribution; "
        "synthid's tournament leaves the distribution unchanged on average over keys (with one key and a "
        "repeated context left unwatermarked, it is close to, not exactly, the model's).",
        "",
        f"## exp detection speed ({speed['tokens_per_text']}-token texts, key length {speed['key_length']}, "
        f"{speed['runs']} Monte Carlo runs)",
        "",
        "| measure | tokeff (Numba) | NumPy version | ratio |", "| --- | --- | --- | --- |",
        f"| alignment statistic, evaluations/s | {speed['statistic_per_s']['numba']:.0f} | "
        f"{speed['statistic_per_s']['numpy']:.1f} | {speed['statistic_per_s']['ratio']:.0f}x |",
        f"| full test of a watermarked text (all {speed['runs']} runs), texts/s | "
        f"{speed['watermarked_texts_per_s']['numba']:.2f} | {speed['watermarked_texts_per_s']['numpy']:.3f} | "
        f"{speed['watermarked_texts_per_s']['ratio']:.0f}x |",
        f"| full test of a human text (sequential, {speed['unwatermarked_texts_per_s']['mean_null_runs']:.0f} runs on "
        f"average), texts/s | {speed['unwatermarked_texts_per_s']['numba']:.1f} | | |",
        "",
        "Both versions compute the same statistic and the same null keys "
        f"(p-values identical: {speed['watermarked_texts_per_s']['same_p_values']}); the NumPy version is the "
        "reference the tests compare against (vectorized over keys and key positions, a Python loop over the "
        f"text's tokens) and ran on {speed['watermarked_texts_per_s']['numpy_texts']} texts, the Numba kernels on "
        f"{speed['watermarked_texts_per_s']['numba_texts']}. The machine is shared, so absolute rates are noisy; "
        "the ratios were measured side by side.",
        "",
        "### Full detection test of each scheme (texts/s)",
        "",
        "| scheme | watermarked texts/s | human texts/s |", "| --- | --- | --- |",
        *[f"| {name} | {entry['watermarked']:.1f} | {entry['human']:.1f} |" for name, entry in speed["schemes"].items()],
        "",
        f"On {s['throughput_texts']} texts of each kind, {s['max_new_tokens']} tokens. exp runs Numba kernels (its "
        "sequential test stops early on human text); kgw is one binomial tail; synthid is NumPy: its mean's exact "
        "null (one circular cross-correlation with the table, then the depths' sum), or, for the weighted mean, "
        f"the g-values under {results['keys']['synthid']['runs']} random keys.",
        "",
        "## How the exp p-value works",
        "",
        "The statistic aligns the text to the key read cyclically (free start and end, every shift at once) with "
        "match score -log(1-u) and a penalty per inserted or deleted token. Its null distribution depends on the "
        "text (repeated tokens share key values), so each text gets a Monte Carlo test against random keys "
        "evaluated on its own tokens, exact at any length. It stops once 20 null runs reach the observed value "
        "(Besag-Clifford sequential p-value), so unwatermarked texts cost a few dozen runs; otherwise it makes "
        f"{results['keys']['exp']['runs']} runs, and the smallest p-value it can report is "
        f"1/{results['keys']['exp']['runs'] + 1} = {1 / (results['keys']['exp']['runs'] + 1):.4f} "
        "(`tokeff watermark detect --runs` buys more resolution at proportional cost). kgw's p-value is the "
        "exact binomial tail over distinct (previous token, token) pairs.",
        "",
        "## How the synthid p-value works, and the optional Bayesian detector",
        "",
        "The statistic is the mean g-value (or, with `detect --statistic weighted_mean`, SynthID-Text's weighted "
        "mean, weights linspace(10, 1, depth)) over the text's n-grams whose context occurs for the first time; a "
        "repeated context is one piece of evidence, not many. The null is a text independent of the key: a "
        "uniformly random key on the text's own n-grams. For the mean and a power-of-two table (transformers' "
        "default, 2**16) the p-value is exact: under a random key word every n-gram's table index moves by the "
        "same uniform shift, so one depth's sum is uniform over the table's cyclic shifts, and the depths' words "
        "are independent. For the weighted mean it is a Monte Carlo test against "
        f"{results['keys']['synthid']['runs']} random keys on the same n-grams (smallest p-value "
        f"1/{results['keys']['synthid']['runs'] + 1}). No detector is trained. Over 400 keys on the human windows "
        "below, the rate at alpha 0.01 equals the test's size (`docs/watermark-synthid-null.md`); one key's count "
        "on 900 windows still exceeds 1% for about a third of keys, as an exact test's must. "
        "`tokeff watermark train-detector --key K --watermarked A.jsonl --unwatermarked B.jsonl -o DET` trains "
        "SynthID's Bayesian detector (transformers' `BayesianDetectorModel`) on your own texts and records its "
        "held-out accuracy; `detect --detector DET` then adds its posterior P(watermarked) to each line. The "
        "posterior depends on the texts it was trained on, so the verdict stays the p-value's.",
        "",
        "## Interoperability with transformers",
        "",
        *interop_table(results.get("interop")),
        "- `tokeff watermark keygen --scheme synthid|kgw --from-transformers CONFIG.json` makes the key a "
        "`SynthIDTextWatermarkingConfig` or `WatermarkingConfig` (its `to_dict()`) stands for, so "
        "`tokeff watermark detect` tests what `model.generate(watermarking_config=...)` wrote; "
        "`tokeff watermark export --key K -o CONFIG.json` writes a key back as that config.",
        "- kgw keys read by transformers use its green lists (`--hashing lefthash` or `selfhash`: "
        "`torch.randperm` of the model's `config.vocab_size`, stored in the key as `vocab_rows`); tokeff's own "
        "`--hashing tokeff` (the default, measured above) decides each (context, token) pair independently and "
        "has no transformers equivalent. With transformers' green lists a context holds exactly "
        "int(vocab_rows * green_fraction) green tokens, so tokeff's p-value is the exact tail of a sum of "
        "hypergeometric counts, one per distinct green-list seed.",
        "- `tests/test_watermark_transformers.py` checks on tiny models that tokeff's green lists, biased logits, "
        "green counts and z-scores equal transformers' `WatermarkLogitsProcessor` and "
        "`WatermarkDetector(ignore_repeated_ngrams=True)`, that its g-values and context masks equal "
        "`SynthIDTextWatermarkLogitsProcessor`'s, and that 200-token texts from transformers' `generate` are "
        "detected at p <= 0.01 at least 9 times in 10 (kgw lefthash, kgw selfhash at bias 4, synthid).",
        "- Where the two differ, tokeff follows transformers in generation: the watermark acts after "
        "temperature/top-k/top-p (transformers appends its processor last), synthid zero-pads the context of the "
        "first generated tokens and leaves a context seen among the last `context_history_size` unwatermarked. "
        "In detection tokeff counts each distinct context (synthid) or (seed, token) pair (kgw) once, where "
        "transformers' KGW detector counts repeats by default (its normal-approximation p-value then does not "
        "hold) and its SynthID mask forgets contexts older than `context_history_size`. Green lists, sampling "
        "tables and permutations are drawn on the CPU: text transformers watermarked on a GPU (a different "
        "random generator) does not match. `tokeff decode --watermark` with a kgw key biases the logits before "
        "temperature, unlike `watermark generate`; the two agree at temperature 1 without top-k/top-p.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
