"""Calibrated KV-cache quantization against the uniform KIVI recipe and transformers' quantized cache.

For each built-in model, in one run: calibrate (keys and values collected once on one part of
WikiText-2, codebooks fitted at each bit width and written as verified `kvquant` artifacts), then
score another part of WikiText-2 in decode order (the text fed `--chunk` tokens per call through
the cache, in segments of `--context` tokens) with the full-precision cache, the calibrated cache,
the uniform cache (`uniform:BITS`) and, where it supports the model, transformers' QuantizedCache
with the optimum-quanto backend. Also: KV bytes per token, decode tokens/s against the
full-precision cache (tokeff's caches both attending the packed codes directly and dequantizing
them into a float buffer for SDPA), and the kernels (Numba) against the torch reference and SDPA.
Writes docs/kvquant.md, docs/kvquant.json and docs/kvquant.png. Only the timed part (kernel and
decode speed, at the end) holds /tmp/tokeff-bench.lock; the quality runs do not need it.

    python benchmarks/kvquant/run.py [--eval-bytes 5000] [--samples 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import math
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from tokeff.core.reporting import Line, Panel, plot_panels

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
CALIBRATION_SLICE = (0, 400_000)  # bytes of wikitext2-valid.txt the calibration may read
EVALUATION_START = 600_000  # evaluation text starts here: never the same bytes as calibration
LOCK = Path("/tmp/tokeff-bench.lock")  # shared by every tokeff benchmark: no timings while another one runs


@contextmanager
def bench_lock(wait_s: float):
    """Yields True holding the lock, or False if other benchmarks kept it for `wait_s` seconds."""
    with LOCK.open("a") as handle:
        print(f"waiting for {LOCK}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(5)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tensor_bytes(tensor) -> int:
    """Bytes of a tensor, looking inside tensor subclasses (quanto's packed tensors)."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) is not torch.Tensor:
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def kv_bytes(cache) -> int:
    """tokeff caches report `nbytes`; for transformers' caches, count residual and quantized tensors."""
    from tokeff.decoding.types import cache_nbytes

    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    total = cache_nbytes(cache)
    for layer in cache.layers:
        for packed in (getattr(layer, "_quantized_keys", None), getattr(layer, "_quantized_values", None)):
            if packed is not None:
                total += tensor_bytes(packed)
    return total


def decode_speed(lm, make_cache, prompt: list[int], steps: int) -> float:
    """Greedy decode tokens/s after a prefill of `prompt` (the prefill is not timed)."""
    cache = make_cache()
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True).logits
        token = int(logits[0, -1].argmax())
        started = time.perf_counter()
        for _ in range(steps):
            logits = lm.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
            token = int(logits[0, -1].argmax())
    return steps / (time.perf_counter() - started)


def kernel_speed(repeats: int = 20) -> dict:
    """One layer of smollm2-135m's shape (9 query heads over 3 KV heads x 2048 tokens x 64 channels,
    3-bit keys before RoPE, one outlier per token, 3-bit per-token values), one decode query."""
    import torch.nn.functional as F

    from tokeff.kernels.kvquant import PackedRows, attend, dequantize_into, pack_codes

    heads, n, dim, bits = 3, 2048, 64, 3
    generator = torch.Generator().manual_seed(0)

    def packed(shape):
        codes = pack_codes(torch.randint(0, 2**bits, (1, heads, n, dim), generator=generator), bits)
        return PackedRows(codes, bits, torch.linspace(-1, 1, 2**bits)[None], torch.randn(shape, generator=generator),
                          torch.rand(shape, generator=generator) + 0.1,
                          torch.randint(0, dim, (1, heads, n, 1), dtype=torch.uint8, generator=generator),
                          torch.randn(1, heads, n, 1, generator=generator).half())

    keys, values = packed((1, heads, 1, dim)), packed((1, heads, n, 1))
    angles = torch.rand(n, dim // 2, generator=generator)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    query = torch.randn(1, 3 * heads, 1, dim, generator=generator)
    k_buf, v_buf = torch.empty(1, heads, n, dim), torch.empty(1, heads, n, dim)

    def dequantize(backend):
        dequantize_into(k_buf, 0, *keys, 0, cos, sin, backend=backend)
        dequantize_into(v_buf, 0, *values, 0, backend=backend)

    def sdpa():
        return F.scaled_dot_product_attention(query, k_buf, v_buf, enable_gqa=True)

    def buffered():
        dequantize("numba")
        return sdpa()

    jobs = {
        "dequantize_torch": lambda: dequantize("torch"),
        "dequantize_numba": lambda: dequantize("numba"),
        "sdpa_fp": sdpa,
        "dequantize_numba_then_sdpa": buffered,
        "attend_torch": lambda: attend(query, keys, values, dim**-0.5, 0, cos, sin, backend="torch"),
        "attend_numba": lambda: attend(query, keys, values, dim**-0.5, 0, cos, sin, backend="numba"),
    }
    times = {}
    for label, job in jobs.items():
        job()  # warm-up (and Numba compilation)
        started = time.perf_counter()
        for _ in range(repeats):
            job()
        times[label] = (time.perf_counter() - started) / repeats * 1000
    return times


def quanto_factory(lm, bits: int, residual: int):
    """transformers' QuantizedCache (quanto backend, its defaults: per-channel groups of 64), or the reason it cannot run."""
    from transformers import QuantizedCache

    try:
        QuantizedCache("quanto", lm.model.config, nbits=bits, residual_length=residual)
    except (ImportError, ValueError) as exc:
        return None, str(exc).splitlines()[0]
    return (lambda: QuantizedCache("quanto", lm.model.config, nbits=bits, residual_length=residual)), None


def run_model(name: str, args, workdir: Path):
    """Calibration, quality and memory for one model; returns its results and a function that times decoding."""
    from transformers import DynamicCache

    from tokeff.core.evaluation import bits_per_byte
    from tokeff.core.scoring import DecodeOrder, prefix_token_id
    from tokeff.core.models import load_model
    from tokeff.core.textio import read_text
    from tokeff.kvquant.spec import kv_cache_factory
    from tokeff.kvquant.artifact import write_calibration
    from tokeff.kvquant.calibrate import fit_calibration
    from tokeff.kvquant.collect import collect

    lm = load_model(name, device="cpu")
    full = read_text(DATA)
    calibration_file = workdir / "calibration.txt"
    calibration_file.write_text(full[slice(*CALIBRATION_SLICE)])
    eval_text = full[EVALUATION_START : EVALUATION_START + args.eval_bytes]
    eval_text = eval_text[: eval_text.rfind("\n") + 1]

    # Calibration, as `tokeff kvquant calibrate` does it, with the activations collected once for all bit widths.
    ids = lm.encode_plain(calibration_file.read_text())
    per = args.cal_context - 1
    prefix = prefix_token_id(lm)
    sequences = [[prefix] + ids[i * per : (i + 1) * per] for i in range(args.samples)]
    started = time.perf_counter()
    acts = collect(lm, sequences, sensitivity=True)
    collect_s = time.perf_counter() - started
    artifacts, fit_s = {}, {}
    for bits in args.bits:
        started = time.perf_counter()
        calibration, _ = fit_calibration(acts, lm.rotary, bits, settings={"fixed": {"outliers": args.outliers}},
                                         residual=args.residual)
        fit_s[bits] = time.perf_counter() - started
        artifacts[bits] = workdir / f"{name}-kv{bits}"
        params = {"outliers": args.outliers, "group": "layer", "samples": args.samples, "context": args.cal_context}
        write_calibration(artifacts[bits], lm, calibration, calibration_file, params, {}, force=True)
    del acts
    gc.collect()

    configs = {"fp": lambda: DynamicCache(config=lm.model.config)}
    notes = {}
    for bits in args.bits:
        configs[f"calibrated-{bits}"] = kv_cache_factory(str(artifacts[bits]), lm, residual=args.residual, sinks=1)
        configs[f"uniform-{bits}"] = kv_cache_factory(f"uniform:{bits}", lm, residual=args.residual, sinks=1)
        if bits in (2, 4):  # the bit widths quanto offers
            factory, reason = quanto_factory(lm, bits, args.residual)
            if factory is not None:
                configs[f"quanto-{bits}"] = factory
            else:
                notes[f"quanto-{bits}"] = reason

    rows = []
    for label, factory in configs.items():
        made = []
        # stride = context: non-overlapping segments, each from a fresh cache and the boundary token
        order = DecodeOrder(lambda: made.append(factory()) or made[-1], chunk=args.chunk)
        result = bits_per_byte(lm, eval_text, context=args.context, stride=args.context, decode_order=order)
        first = made[0]  # the first segment's cache: a whole segment went through it in decode order
        row = {
            "model": name,
            "cache": label,
            "bits": None if label == "fp" else int(label.rsplit("-", 1)[1]),
            "bpb": result.bpb,
            "ppl": math.exp(float(result.token_nll.mean())),
            "tokens": result.tokens,
            "bytes": result.bytes,
            "kv_bytes_per_token": kv_bytes(first) / first.get_seq_length(),
            "kv_tokens": first.get_seq_length(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    fp = rows[0]
    for row in rows:
        row["delta_ppl"] = row["ppl"] - fp["ppl"]
        row["delta_bpb"] = row["bpb"] - fp["bpb"]
        row["compression"] = fp["kv_bytes_per_token"] / row["kv_bytes_per_token"]

    bits = args.speed_bits
    for kind in ("calibrated", "uniform"):  # the same caches, dequantizing into a float buffer for SDPA instead
        spec = str(artifacts[bits]) if kind == "calibrated" else f"uniform:{bits}"
        configs[f"{kind}-{bits} buffer"] = kv_cache_factory(spec, lm, residual=args.residual, sinks=1, fused=False)
    speed_configs = ["fp"] + [f"{kind}-{bits}{how}" for kind in ("calibrated", "uniform") for how in ("", " buffer")]
    speed_configs.append(f"quanto-{bits}")
    long_ids = lm.encode_plain(full[EVALUATION_START:])

    def time_decoding() -> dict:
        speed = {}
        for length in args.prompt_tokens:
            prompt = [prefix] + long_ids[: length - 1]
            for label in speed_configs:
                if label in configs:
                    rate = decode_speed(lm, configs[label], prompt, args.decode_tokens)
                    speed.setdefault(label, {})[str(length)] = rate
                    print(json.dumps({"model": name, "decode": label, "prompt": length, "tokens_per_s": rate}), flush=True)
        return speed

    result = {
        "model": name,
        "rows": rows,
        "notes": notes,
        "calibration": {"collect_s": collect_s, "fit_s": fit_s, "tokens": args.samples * per, "samples": args.samples},
        "eval_tokens": rows[0]["tokens"],
        "eval_bytes": rows[0]["bytes"],
    }
    return result, time_decoding


def plot(results: list[dict], path: Path) -> None:
    panels = []
    for result in results:
        lines = []
        for kind, marker in (("calibrated", "o"), ("uniform", "s"), ("quanto", "^")):
            points = sorted((r["kv_bytes_per_token"], r["delta_ppl"], r["bits"]) for r in result["rows"] if r["cache"].startswith(kind))
            if points:
                lines.append(Line(kind, [p[0] for p in points], [p[1] for p in points], marker=marker,
                                  notes=[f"{p[2]}b" for p in points]))
        panels.append(Panel("KV bytes per token (log)", "perplexity increase over full precision", result["model"],
                            lines=lines, xscale="log", yscale="symlog"))
    plot_panels(path, panels, size=(6 * len(panels), 4.5))


def write_markdown(results: list[dict], kernel: dict, args, command: str, total_s: float, path: Path) -> None:
    lines = [
        "# Calibrated KV-cache quantization",
        "",
        f"Reproduce: `{command}` ({total_s / 60:.0f} minutes on a shared 2-core CPU machine, {args.threads} thread(s), float32).",
        "",
        "Setup, for each model:",
        "",
        f"- **Calibration**: {args.samples} sequences of {args.cal_context} tokens from the first "
        f"{CALIBRATION_SLICE[1]:,} bytes of `wikitext2-valid.txt`; per layer, for keys and for values, the scheme "
        "of `tokeff kvquant schemes` (KIVI's own, pre-RoPE group ranges with even or Fisher-weighted k-means levels, "
        f"fixed ranges with {args.outliers:.0%} outliers) that changes attention output least within uniform's bytes.",
        f"- **Evaluation**: {args.eval_bytes:,} bytes of `wikitext2-valid.txt` from byte {EVALUATION_START:,} on "
        "(never the calibration bytes), scored in decode order: segments of "
        f"{args.context} tokens, each with a fresh cache and the boundary token, fed {args.chunk} tokens per model "
        "call, so every call attends over the quantized cache as generation would. Perplexity is per token of "
        "each model's own tokenizer; bits per byte compares across them.",
        f"- **Caches**: `fp` is transformers' DynamicCache; `calibrated-B` the `tokeff kvquant calibrate` artifact; "
        f"`uniform-B` is `--kv-quant uniform:B` (KIVI: keys per channel over groups of 32 tokens after RoPE, values "
        f"per token, no calibration); `quanto-B` is transformers' `QuantizedCache(\"quanto\")` (2 and 4 bits only, "
        f"groups of 64 along the channel axis, dequantizes the whole cache at every step). All quantized caches keep the last "
        f"{args.residual} tokens in full precision (tokeff's default is 128; a short window here makes most of each "
        f"{args.context}-token segment come from the quantized cache); tokeff's also keep 1 attention-sink token.",
        "- **KV bytes per token**: bytes held by the cache after the first evaluation segment went through it in "
        f"decode order ({args.chunk} tokens per call), divided by the tokens it holds "
        "(packed codes, per-token and per-group ranges, sparse "
        "outliers, sinks and the full-precision window; the calibrated per-layer constants, shared by every sequence, "
        "are not counted). Compression is against the float32 DynamicCache.",
        "",
    ]
    for result in results:
        cal = result["calibration"]
        lines += [
            f"## {result['model']}",
            "",
            f"{result['eval_tokens']:,} evaluation tokens ({result['eval_bytes']:,} bytes); "
            f"{cal['tokens']:,} calibration tokens.",
            "",
            "| cache | bits | perplexity | Δ perplexity | bits/byte | Δ bits/byte | KV bytes/token | compression |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in result["rows"]:
            lines.append(
                f"| {row['cache']} | {row['bits'] or 'fp32'} | {row['ppl']:.3f} | {row['delta_ppl']:+.3f} | "
                f"{row['bpb']:.4f} | {row['delta_bpb']:+.4f} | {row['kv_bytes_per_token']:,.0f} | "
                f"{row['compression']:.1f}x |"
            )
        for label, reason in result["notes"].items():
            lines.append(f"\n`{label}`: not run: transformers says: {reason}")
        speed = result.get("decode_tokens_per_s")
        if speed:
            lengths = list(speed["fp"])
            lines += [
                "",
                f"Greedy decoding, {args.decode_tokens} tokens after a prompt of {' or '.join(lengths)} tokens "
                "(prefill not timed); `buffer` rows are the same caches dequantizing their packed tokens into a "
                "float buffer for SDPA at every step instead of attending the codes directly:",
                "",
                "| cache | " + " | ".join(f"tokens/s ({n}) | vs fp ({n})" for n in lengths) + " |",
                "| --- | " + " | ".join("---: | ---:" for _ in lengths) + " |",
            ]
            for label, rates in speed.items():
                cells = " | ".join(f"{rates[n]:.1f} | {rates[n] / speed['fp'][n]:.2f}x" for n in lengths)
                lines.append(f"| {label} | {cells} |")
        lines.append("")
    if kernel is None:
        lines += ["Decode speed and the kernel timing: not measured (the benchmark lock stayed busy).", ""]
    else:
        lines += [
        "## Kernels",
        "",
        "One layer of smollm2-135m's shape (9 query heads over 3 KV heads x 2,048 tokens x 64 channels, 3-bit keys "
        "before RoPE with one outlier per token, 3-bit values per token), one decode query, milliseconds per call:",
        "",
        "| operation | ms |",
        "| --- | ---: |",
        f"| dequantize K and V into a float buffer, torch reference | {kernel['dequantize_torch']:.3f} |",
        f"| dequantize K and V into a float buffer, Numba | {kernel['dequantize_numba']:.3f} |",
        f"| SDPA over float K and V (what the full-precision cache costs) | {kernel['sdpa_fp']:.3f} |",
        f"| Numba dequantize, then SDPA | {kernel['dequantize_numba_then_sdpa']:.3f} |",
        f"| dequantize-and-attend, torch reference | {kernel['attend_torch']:.3f} |",
        f"| dequantize-and-attend, Numba | {kernel['attend_numba']:.3f} |",
        "",
        ]
    lines += [
        "The Triton kernels have the same contracts; they are tested against the reference in Triton's CPU interpreter "
        "(`TRITON_INTERPRET=1`) but were not run on a GPU here.",
        "",
        "![perplexity increase against KV bytes per token](kvquant.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--eval-bytes", type=int, default=5_000)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--cal-context", type=int, default=256)
    parser.add_argument("--outliers", type=float, default=0.01)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--residual", type=int, default=32)
    parser.add_argument("--prompt-tokens", default="512,2048", help="prompt lengths for the decode timing")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--speed-bits", type=int, default=4)
    parser.add_argument("--lock-wait", type=float, default=1800, help="seconds to wait for the benchmark lock")
    parser.add_argument("--threads", type=int, default=1, help="torch and Numba threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    args.bits = [int(b) for b in args.bits.split(",")]
    args.prompt_tokens = [int(n) for n in args.prompt_tokens.split(",")]
    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    results, timers = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            result, timer = run_model(name, args, Path(workdir))
            results.append(result)
            timers.append(timer)
    write_results(results, None, args, started)  # quality and memory are on disk before the wait for the lock
    with bench_lock(args.lock_wait) as locked:
        if locked:
            kernel = kernel_speed()
            print(json.dumps({"kernel": kernel}), flush=True)
            for result, timer in zip(results, timers):
                result["decode_tokens_per_s"] = timer()
            write_results(results, kernel, args, started)


def write_results(results: list[dict], kernel: dict | None, args, started: float) -> None:
    total_s = time.perf_counter() - started
    command = "python benchmarks/kvquant/run.py " + " ".join(sys.argv[1:])
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    payload = {"command": command.strip(), "args": vars(args), "seconds": total_s, "kernel": kernel, "models": results}
    (docs / "kvquant.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, docs / "kvquant.png")
    write_markdown(results, kernel, args, command.strip(), total_s, docs / "kvquant.md")


if __name__ == "__main__":
    main()
