"""The fused binning kernel against its torch reference, and against a brute-force sum."""

import torch

from tokeff.kernels.bin_probabilities import bin_probabilities, bin_probabilities_reference


def test_numba_kernel_equals_reference_and_brute_force():
    generator = torch.Generator().manual_seed(0)
    n_rows, n_vocab, n_bins = 5, 3000, 258
    logits = torch.randn(n_rows, n_vocab, generator=generator) * 8  # peaked rows: tiny probabilities must survive
    whole = torch.arange(n_vocab)
    first_bin = torch.randint(0, n_bins, (n_vocab,), generator=generator)
    ranged = torch.randperm(n_vocab, generator=generator)[:700]
    ranged_bins = torch.randint(0, n_bins, (700,), generator=generator)
    ids, bins = torch.cat([whole, ranged]), torch.cat([first_bin, ranged_bins])
    rows = torch.tensor([0, 3, 3, 4, 1])
    starts = torch.tensor([0, 0, n_vocab, n_vocab + 100, n_vocab + 100])
    stops = torch.tensor([n_vocab, n_vocab, n_vocab + 700, n_vocab + 100, n_vocab + 650])  # one empty segment
    fast, fast_norm = bin_probabilities(logits, rows, starts, stops, ids, bins, n_bins)
    slow, slow_norm = bin_probabilities_reference(logits, rows, starts, stops, ids, bins, n_bins)
    torch.testing.assert_close(fast_norm, slow_norm, atol=1e-9, rtol=0)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-9)
    probs = torch.softmax(logits.double(), dim=-1)
    for entry in range(len(rows)):
        expected = torch.zeros(n_bins, dtype=torch.float64)
        for k in range(int(starts[entry]), int(stops[entry])):
            expected[bins[k]] += probs[rows[entry], ids[k]]
        torch.testing.assert_close(fast[entry], expected, atol=1e-12, rtol=1e-9)
    assert torch.allclose(fast[:2].sum(1), torch.ones(2, dtype=torch.float64))  # whole rows hold all the mass
    assert fast[3].sum() == 0
