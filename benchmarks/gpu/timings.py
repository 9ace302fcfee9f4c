"""GPU timings for docs/gpu.md: Triton dequantize-and-attend against SDPA over a float cache, and
OMP for 200k new tokens on the GPU against the CPU. Writes one JSON object and a markdown summary
that also lists the `gpu` tests' outcomes from pytest's JUnit XML (run by scripts/gpu-check.sh).

Without CUDA it writes `{"skipped": ...}`: interpreted Triton timings would mean nothing.
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torch.nn.functional as F

from tokeff.kernels.kvquant import PackedRows, attend, pack_codes
from tokeff.kernels.omp import omp

KV_HEADS, Q_HEADS, DIM, BITS = 8, 32, 128, 4  # a Llama-3-8B layer's attention shape


def _cuda_ms(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _packed(n: int, generator: torch.Generator) -> PackedRows:
    codes = pack_codes(torch.randint(0, 2**BITS, (1, KV_HEADS, n, DIM), generator=generator), BITS)
    book = torch.sort(torch.rand(1, 2**BITS, generator=generator) * 2 - 1).values
    center = torch.randn(1, KV_HEADS, 1, DIM, generator=generator)
    half = torch.rand(1, KV_HEADS, 1, DIM, generator=generator) + 0.1
    idx = torch.zeros(1, KV_HEADS, n, 1, dtype=torch.uint8)
    val = torch.randn(1, KV_HEADS, n, 1, generator=generator).half()
    return PackedRows(*(x.cuda() for x in (codes, book, center, half, idx, val)))


def attend_timings(lengths: list[int]) -> list[dict]:
    """One decode step (1 query token) per layer over `n` cached tokens."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        keys, values = _packed(n, generator), _packed(n, generator)
        query = torch.randn(1, Q_HEADS, 1, DIM, device="cuda")
        k = torch.randn(1, KV_HEADS, n, DIM, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        q16 = query.bfloat16()
        triton_ms = _cuda_ms(lambda: attend(query, keys, values, DIM**-0.5, backend="triton"))
        sdpa_ms = _cuda_ms(lambda: F.scaled_dot_product_attention(q16, k, v, enable_gqa=True))
        packed_bytes = sum(t.numel() * t.element_size() for t in (*keys, *values))
        rows.append({"tokens": n, "triton_attend_ms": triton_ms, "sdpa_bf16_ms": sdpa_ms,
                     "packed_bytes": packed_bytes, "bf16_bytes": 2 * k.numel() * k.element_size()})
        del keys, values, k, v
    return rows


def omp_timings(new_tokens: int, atoms: int, dim: int, k: int, cpu_sample: int) -> dict:
    """`omp` of `new_tokens` targets over one shared dictionary, as the transplant runs it on a GPU;
    the CPU is timed on `cpu_sample` targets and reported per token (200k would take too long)."""
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.randn(atoms, dim, generator=generator)
    targets = torch.randn(new_tokens, dim, generator=generator)
    gpu_dict = dictionary.cuda()
    batch = 16_384
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, new_tokens, batch):
        omp(targets[i : i + batch].cuda(), gpu_dict, k)
    torch.cuda.synchronize()
    gpu_s = time.perf_counter() - start
    start = time.perf_counter()
    omp(targets[:cpu_sample], dictionary, k)
    cpu_s = time.perf_counter() - start
    return {"new_tokens": new_tokens, "atoms": atoms, "dim": dim, "k": k, "gpu_seconds": gpu_s,
            "cpu_sample": cpu_sample, "cpu_seconds_for_sample": cpu_s,
            "cpu_seconds_per_token": cpu_s / cpu_sample, "gpu_seconds_per_token": gpu_s / new_tokens}


def test_outcomes(junit: Path) -> list[dict]:
    """(test, outcome, seconds, message) per test case of a pytest JUnit XML file."""
    rows = []
    for case in ET.parse(junit).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, message = tag, (found.get("message") or "")[:200]
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time", 0)), "message": message})
    return rows


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result.get('device', 'no CUDA device')})", "", "| test | outcome | s | note |", "|---|---|---|---|"]
    lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['message']} |" for t in result["tests"]]
    if "attend" in result:
        lines += ["", "| cached tokens | Triton attend over 4-bit (ms) | SDPA over bf16 (ms) | packed / bf16 bytes |",
                  "|---|---|---|---|"]
        lines += [f"| {r['tokens']:,} | {r['triton_attend_ms']:.3f} | {r['sdpa_bf16_ms']:.3f} | "
                  f"{r['packed_bytes'] / r['bf16_bytes']:.3f} |" for r in result["attend"]]
        o = result["omp"]
        lines += ["", f"OMP (k={o['k']}, {o['atoms']:,} atoms of dim {o['dim']}): {o['new_tokens']:,} new tokens in "
                  f"{o['gpu_seconds']:.1f} s on the GPU; the CPU took {o['cpu_seconds_for_sample']:.1f} s for "
                  f"{o['cpu_sample']:,} ({o['cpu_seconds_per_token'] / o['gpu_seconds_per_token']:.0f}x slower per token)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--junit", type=Path, help="pytest's JUnit XML of the gpu tests")
    parser.add_argument("--lengths", default="4096,16384,65536")
    parser.add_argument("--omp-tokens", type=int, default=200_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        result = {"skipped": "no CUDA device"}
    else:
        result = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "attend": attend_timings([int(n) for n in args.lengths.split(",")]),
            "omp": omp_timings(args.omp_tokens, atoms=49_152, dim=2048, k=8, cpu_sample=2_000),
        }
    result["tests"] = test_outcomes(args.junit) if args.junit and args.junit.exists() else []
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (args.out / "gpu-check.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
