"""Packing and dequantization kernels against the plain torch reference."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from tokeff.kernels.kvquant import (
    DenseRows,
    PackedRows,
    attend,
    attend_reference,
    dequantize_into,
    dequantize_reference,
    merge_attention,
    pack_codes,
    packed_width,
    unpack_codes,
)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pack_roundtrip_and_width(bits):
    codes = torch.randint(0, 2**bits, (2, 3, 5, 24))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == packed_width(24, bits) == 24 * bits // 8
    assert torch.equal(unpack_codes(packed, bits, 24), codes)


def test_packing_is_a_little_endian_bitstream():
    # codes 1, 2, 3, 4, 5, 6, 7, 0 at 3 bits: bits laid out from the lowest bit of byte 0 upward
    packed = pack_codes(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3)
    stream = sum(int(byte) << (8 * i) for i, byte in enumerate(packed))
    assert [(stream >> (3 * j)) & 7 for j in range(8)] == [1, 2, 3, 4, 5, 6, 7, 0]
    with pytest.raises(ValueError, match="multiple of 8"):
        packed_width(12, 3)


def _case(bits, grid, books, outliers, rope, seed=0, dim=32):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, n = 2, 3, 16
    codes = pack_codes(torch.randint(0, 2**bits, (batch, heads, n, dim), generator=generator), bits)
    codebook = torch.sort(torch.rand(books, 2**bits, generator=generator) * 2 - 1).values
    shape = {"fixed": (1, heads, 1, dim), "group": (batch, heads, n // 4, dim), "token": (batch, heads, n, 1)}[grid]
    center = torch.randn(shape, generator=generator)
    half = torch.rand(shape, generator=generator) + 0.1
    idx = torch.stack([torch.randperm(dim, generator=generator)[:outliers] for _ in range(batch * heads * n)])
    idx = idx.reshape(batch, heads, n, outliers).to(torch.uint8)
    val = torch.randn(batch, heads, n, outliers, generator=generator).half()
    skip = 3
    cos = sin = None
    if rope:
        angles = torch.rand(n - skip, dim // 2, generator=generator) * 6
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return (codes, bits, codebook, center, half, idx, val, skip, cos, sin)


CASES = [
    (bits, grid, books, outliers, rope)
    for bits in (2, 3, 4)
    for grid, books, outliers, rope in [
        ("fixed", 1, 1, True),
        ("fixed", 3, 2, False),
        ("group", 1, 0, False),
        ("token", 3, 1, True),
        ("token", 1, 0, False),
    ]
]


@pytest.mark.parametrize("bits, grid, books, outliers, rope", CASES)
def test_numba_kernel_matches_reference(bits, grid, books, outliers, rope):
    args = _case(bits, grid, books, outliers, rope)
    expected = dequantize_reference(*args)
    out = torch.full((2, 3, 20, 32), 7.0)
    dequantize_into(out, 2, *args, backend="numba")
    torch.testing.assert_close(out[:, :, 2 : 2 + expected.shape[2]], expected, rtol=1e-6, atol=1e-6)
    assert (out[:, :, :2] == 7).all() and (out[:, :, 2 + expected.shape[2] :] == 7).all()  # nothing else written


def _attend_case(case, q_len=5, masked=True, dense=False):
    """Query [2, 6, q, 32] (two query heads per KV head), packed keys and values, a -inf/0 bias with
    one query that sees nothing, and optionally 4 full-precision rows with a causal bias."""
    codes, bits, book, center, half, idx, val, skip, cos, sin = _case(*case)
    keys = PackedRows(codes, bits, book, center, half, idx, val)
    values = PackedRows(*_case(*case[:4], False, seed=1)[:7])
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(2, 6, q_len, 32, generator=generator)
    bias = None
    if masked:
        bias = torch.where(torch.rand(2, q_len, codes.shape[2] - skip, generator=generator) < 0.3, -torch.inf, 0.0)
        bias[0, 1] = -torch.inf
    rows = None
    if dense:
        causal = torch.zeros(q_len, 4).masked_fill(~torch.ones(q_len, 4, dtype=torch.bool).tril(4 - q_len), -torch.inf)
        rows = DenseRows(torch.randn(2, 3, 4, 32, generator=generator), torch.randn(2, 3, 4, 32, generator=generator),
                         causal.expand(2, -1, -1) if masked else None)
    return query, keys, values, 0.3, skip, cos, sin, bias, rows


@pytest.mark.parametrize("masked, dense", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("bits, grid, books, outliers, rope", CASES)
def test_numba_attention_matches_reference(bits, grid, books, outliers, rope, masked, dense):
    *args, rows = _attend_case((bits, grid, books, outliers, rope), q_len=3 if dense else 5, masked=masked, dense=dense)
    out, lse = attend(*args, dense=rows, backend="numba")
    expected_out, expected_lse = attend_reference(*args, dense=rows)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-4, atol=1e-5)


def test_attention_reference_is_softmax_over_dequantized_rows_and_merges_exactly():
    """The reference against a hand-written softmax, and merging two halves of the keys gives the whole."""
    query, keys, values, scaling, skip, cos, sin, bias, rows = _attend_case(CASES[0], q_len=1, masked=False, dense=True)
    k = torch.cat([dequantize_reference(*keys, skip, cos, sin), rows.keys], 2).repeat_interleave(2, 1)
    v = torch.cat([dequantize_reference(*values, skip), rows.values], 2).repeat_interleave(2, 1)
    scores = (query @ k.transpose(-1, -2)) * scaling
    out, lse = attend_reference(query, keys, values, scaling, skip, cos, sin, dense=rows)
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v)
    torch.testing.assert_close(lse, scores.logsumexp(-1))
    halves = [slice(0, 5), slice(5, None)]
    parts = [(torch.softmax(scores[..., h], -1) @ v[:, :, h], scores[..., h].logsumexp(-1)) for h in halves]
    merged, merged_lse = merge_attention(torch.stack([p[0] for p in parts], -2), torch.stack([p[1] for p in parts], -1))
    torch.testing.assert_close(merged, out)
    torch.testing.assert_close(merged_lse, lse)


def test_reference_decodes_what_it_should():
    """Hand-checked: center + half * level, outliers replace entries, RoPE rotates pairs."""
    codes = pack_codes(torch.tensor([[[[0, 3, 1, 2, 0, 0, 0, 0]]]]), 2)
    book = torch.tensor([[-1.0, -0.5, 0.5, 1.0]])
    center, half = torch.full((1, 1, 1, 8), 2.0), torch.full((1, 1, 1, 8), 4.0)
    idx, val = torch.tensor([[[[4]]]], dtype=torch.uint8), torch.tensor([[[[9.0]]]]).half()
    x = dequantize_reference(codes, 2, book, center, half, idx, val)
    assert x[0, 0, 0].tolist() == [-2.0, 6.0, 0.0, 4.0, 9.0, -2.0, -2.0, -2.0]
    quarter = torch.full((1, 8), 0.0)
    rotated = dequantize_reference(codes, 2, book, center, half, idx, val, cos=quarter, sin=quarter + 1)
    assert rotated[0, 0, 0].tolist() == [-9.0, 2.0, 2.0, 2.0, -2.0, 6.0, 0.0, 4.0]  # (x1, x2) -> (-x2, x1)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_match_reference_in_the_interpreter():
    """Runs the Triton kernels on the CPU with TRITON_INTERPRET=1 (a GPU runs the compiled kernel)."""
    script = (
        "import torch, test_kvquant_kernels as t\n"
        "from tokeff.kernels.kvquant import attend, attend_reference, dequantize_into, dequantize_reference\n"
        "for case in t.CASES:\n"
        "    args = t._case(*case)\n"
        "    expected = dequantize_reference(*args)\n"
        "    out = torch.zeros(2, 3, 20, 32)\n"
        "    dequantize_into(out, 2, *args, backend='triton')\n"
        "    torch.testing.assert_close(out[:, :, 2:2 + expected.shape[2]], expected, rtol=1e-5, atol=1e-5)\n"
        "    for masked, dense in ((False, False), (True, True)):\n"
        "        *a, rows = t._attend_case(case, q_len=3, masked=masked, dense=dense)\n"
        "        out, lse = attend(*a, dense=rows, backend='triton')\n"
        "        ref_out, ref_lse = attend_reference(*a, dense=rows)\n"
        "        torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)\n"
        "        torch.testing.assert_close(lse, ref_lse, rtol=1e-4, atol=1e-5)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
