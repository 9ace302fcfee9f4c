"""Every CUDA/Triton path against its CPU definition (marker `gpu`; `scripts/gpu-check.sh` runs them).

CUDA tests skip without a GPU. The Triton-interpreter variants (TRITON_INTERPRET=1, in a subprocess
so the flag is read before Triton is imported) run on the CPU wherever Triton is installed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tokeff.kernels.byte_scatter import scatter_logsumexp, scatter_logsumexp_reference
from tokeff.kernels.kvquant import attend, attend_reference, dequantize_into, dequantize_reference
from tokeff.kernels.omp import omp

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _on(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and value and hasattr(value, "_fields"):  # PackedRows, DenseRows
        return type(value)(*(_on(v, device) for v in value))
    return value


@cuda
@needs_triton
def test_kvquant_triton_kernels_on_cuda_match_reference():
    import test_kvquant_kernels as t

    for case in t.CASES:
        args = t._case(*case)
        expected = dequantize_reference(*args)
        out = torch.zeros(2, 3, 20, 32, device="cuda")
        dequantize_into(out, 2, *_on(args, "cuda"), backend="triton")
        torch.testing.assert_close(out[:, :, 2 : 2 + expected.shape[2]].cpu(), expected, rtol=1e-5, atol=1e-5)
        for masked, dense in ((False, False), (True, False), (False, True), (True, True)):
            *a, rows = t._attend_case(case, q_len=3, masked=masked, dense=dense)
            out, lse = attend(*_on(tuple(a), "cuda"), dense=_on(rows, "cuda"), backend="triton")
            ref_out, ref_lse = attend_reference(*a, dense=rows)
            torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(lse.cpu(), ref_lse, rtol=1e-4, atol=1e-5)


def _scatter_case(n=49_152, bins=257):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(n, generator=generator) * 4 - 12
    index = torch.randint(0, bins - 3, (n,), generator=generator)  # the last 3 bins stay empty (-inf)
    return values, index, bins


@cuda
@needs_triton
def test_byte_scatter_triton_on_cuda_matches_reference():
    values, index, bins = _scatter_case()
    got = scatter_logsumexp(values.cuda(), index.cuda(), bins)
    assert got.is_cuda and got.dtype == torch.float64
    expected = scatter_logsumexp_reference(values, index, bins)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)
    assert torch.isinf(got[-3:]).all()


@needs_triton
def test_byte_scatter_triton_in_the_interpreter():
    script = (
        "import torch, test_gpu as t\n"
        "from tokeff.kernels.byte_scatter import scatter_logsumexp_triton, scatter_logsumexp_reference\n"
        "values, index, bins = t._scatter_case(n=5000)\n"
        "got = scatter_logsumexp_triton(values, index, bins)\n"
        "torch.testing.assert_close(got, scatter_logsumexp_reference(values, index, bins), rtol=1e-5, atol=1e-5)\n"
        "print('ok')\n"
    )
    _run_interpreted(script)


def _run_interpreted(script: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@cuda
def test_omp_on_cuda_matches_the_cpu():
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.randn(3000, 64, generator=generator)
    # Targets that really are sparse over the dictionary: both devices must recover the same atoms.
    truth = torch.stack([torch.randperm(3000, generator=generator)[:6] for _ in range(256)])
    targets = (torch.randn(256, 6, 1, generator=generator) * dictionary[truth]).sum(1)
    cpu_ids, cpu_coef = omp(targets, dictionary, 6)
    gpu_ids, gpu_coef = omp(targets.cuda(), dictionary.cuda(), 6)
    assert torch.equal(gpu_ids.cpu().sort(1).values, cpu_ids.sort(1).values)
    assert torch.equal(cpu_ids.sort(1).values, truth.sort(1).values)
    rebuilt = (gpu_coef.cpu().unsqueeze(2) * dictionary[gpu_ids.cpu()]).sum(1)
    torch.testing.assert_close(rebuilt, targets, rtol=1e-3, atol=1e-3)


@cuda
@pytest.mark.slow
def test_real_model_decode_with_kv_quant_on_cuda():
    """smollm2-135m greedy on CUDA through a 4-bit cache (16 full-precision rows, so the prompt is
    really packed) against the float cache: the first tokens agree."""
    prompt = open("../shared/data/wikitext2-valid.txt", encoding="utf-8").read()[2000:4000]

    def decode(*extra):
        result = subprocess.run(
            [sys.executable, "-m", "tokeff", "decode", "-m", "smollm2-135m", "--prompt", prompt, "--device", "cuda",
             "--max-new-tokens", "24", "--json", *extra],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    plain = decode()
    packed = decode("--kv-quant", "uniform:4", "--kv-residual", "16")
    assert plain["text"] and packed["text"]
    assert packed["text"][:20] == plain["text"][:20]
    assert packed["peak_kv_bytes"] < plain["peak_kv_bytes"] / 2  # the cache really was packed
