"""Model loading and bits-per-byte of the built-in models.

Measures, in one run, for each built-in: loading through transformers' GGUF path (what a user
would do without tokeff: `from_pretrained(dir, gguf_file=...)` every time), tokeff's first load
(conversion into a fresh cache) and tokeff's warm load, then bits per byte on WikiText-2.
Writes docs/foundation.md and docs/foundation.json.

    python benchmarks/foundation/run.py [--max-bytes 100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-bytes", type=int, default=100_000)
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from tokeff.core.builtin_models import BUILTINS
    from tokeff.core.evaluation import bits_per_byte
    from tokeff.core.models import load_model
    from tokeff.core.textio import read_text

    text = read_text(DATA, args.max_bytes)
    rows = []
    for name, builtin in BUILTINS.items():
        gguf = builtin.gguf_path()

        def transformers_gguf_load():
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)

        _, hf_seconds = timed(transformers_gguf_load)
        gc.collect()  # the next conversion needs the memory back
        with tempfile.TemporaryDirectory() as home:
            os.environ["TOKEFF_HOME"] = home
            _, first_seconds = timed(lambda: load_model(name, device="cpu"))
            lm, warm_seconds = timed(lambda: load_model(name, device="cpu"))
            result = bits_per_byte(lm, text, context=args.context)
        row = {
            "model": name,
            "transformers_gguf_load_s": hf_seconds,
            "tokeff_first_load_s": first_seconds,
            "tokeff_warm_load_s": warm_seconds,
            "warm_speedup": hf_seconds / warm_seconds,
            **{f"bpb_{key}": value for key, value in result.to_json().items()},
        }
        del os.environ["TOKEFF_HOME"], lm, result
        gc.collect()  # the next model's conversion needs the memory back
        rows.append(row)
        print(json.dumps(row), flush=True)

    command = "python benchmarks/foundation/run.py " + " ".join(sys.argv[1:])
    (ROOT / "docs" / "foundation.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Foundation: model loading and bits per byte",
        "",
        f"Reproduce: `{command.strip()}` (2 CPU cores, shared machine; times are wall-clock seconds of one run).",
        "",
        "Loading: transformers' own GGUF path (`from_pretrained(dir, gguf_file=...)`, dequantizing every time) "
        "against tokeff's first load (the same conversion, written once into the cache as safetensors) and "
        "tokeff's warm load (the cached folder, its hashes checked through a size/mtime stamp).",
        "",
        "The committed run shared the 2 cores with other jobs (load average 8-17), so absolute seconds are "
        "inflated and noisy; the load ratios are taken side by side in one process.",
        "",
        "| model | transformers GGUF load (s) | tokeff first load (s) | tokeff warm load (s) | warm speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['transformers_gguf_load_s']:.1f} | {row['tokeff_first_load_s']:.1f} "
            f"| {row['tokeff_warm_load_s']:.1f} | {row['warm_speedup']:.1f}x |"
        )
    lines += [
        "",
        f"Bits per byte on the first {args.max_bytes:,} bytes of `wikitext2-valid.txt` "
        f"(context {args.context}, stride {args.context // 2}):",
        "",
        "| model | bits/byte | tokens | bytes/token | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['bpb_bpb']:.4f} | {row['bpb_tokens']:,} | {row['bpb_bytes_per_token']:.2f} "
            f"| {row['bpb_seconds']:.0f} |"
        )
    (ROOT / "docs" / "foundation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
