"""Binned next-token probabilities: softmax of a logits row, summed into byte bins over a list of token ids.

The batched byte-level scorer reduces every tree node's next-token distribution to what the byte
positions that use it need: for each entry, `sums[e, b] = sum(softmax(logits[rows[e]])[ids[k]]
for k in starts[e]:stops[e] where bins[k] == b)`. The (ids, bins) segments share one array (a
whole-vocabulary segment reads every token's first byte; a ranged one the tokens that continue
a prefix). Also returned: each row's log-normalizer (float64), so a token's log-probability is
`logits[row, id] - log_norm[row]`.

Two implementations with one contract: a plain torch reference (what the tests compare against,
and what CUDA tensors use) and a fused Numba loop for the CPU, which reads the float32 logits in
place, takes each token's exp once per row (in a row buffer that every entry of the row reads) and
accumulates in float64, instead of building float64 copies, log-probabilities and probabilities of
vocabulary size for the whole batch.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


def bin_probabilities_reference(
    logits: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor,
    ids: torch.Tensor, bins: torch.Tensor, n_bins: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch reference: (sums [entries, n_bins] float64, log_norm [rows] float64)."""
    log_norm = torch.logsumexp(logits.double(), dim=-1)
    sums = torch.zeros(len(rows), n_bins, dtype=torch.float64, device=logits.device)
    for entry, (row, start, stop) in enumerate(zip(rows.tolist(), starts.tolist(), stops.tolist())):
        probs = torch.exp(logits[row, ids[start:stop]].double() - log_norm[row])
        sums[entry].index_add_(0, bins[start:stop], probs)
    return sums, log_norm


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_probabilities_numba(logits, order, row_starts, rows, starts, stops, ids, bins, n_bins):  # pragma: no cover - compiled
    n_rows, n_vocab = logits.shape
    log_norm = np.empty(n_rows)
    sums = np.zeros((rows.shape[0], n_bins))
    for r in numba.prange(n_rows):
        peak = -np.inf
        for v in range(n_vocab):
            if logits[r, v] > peak:
                peak = np.float64(logits[r, v])
        # Each probability once per row (an exp is most of the cost), read by every entry of the row.
        unnormalized = np.empty(n_vocab)
        total = 0.0
        for v in range(n_vocab):
            unnormalized[v] = np.exp(np.float64(logits[r, v]) - peak)
            total += unnormalized[v]
        log_norm[r] = peak + np.log(total)
        for position in range(row_starts[r], row_starts[r + 1]):
            e = order[position]
            for k in range(starts[e], stops[e]):
                sums[e, bins[k]] += unnormalized[ids[k]]
            for b in range(n_bins):
                sums[e, b] /= total
    return sums, log_norm


def bin_probabilities(
    logits: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor,
    ids: torch.Tensor, bins: torch.Tensor, n_bins: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums [entries, n_bins], log_norm [rows]), float64 on the logits' device: Numba on the CPU, else the reference."""
    if logits.is_cuda:
        return bin_probabilities_reference(logits, rows, starts, stops, ids, bins, n_bins)
    as_long = lambda tensor: tensor.numpy().astype(np.int64, copy=False)  # noqa: E731
    order = torch.argsort(rows, stable=True)  # the entries grouped by row, each row's between row_starts[r] and [r + 1]
    row_starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(rows, minlength=len(logits)).cumsum(0)])
    sums, log_norm = _bin_probabilities_numba(
        logits.float().contiguous().numpy(), as_long(order), as_long(row_starts), as_long(rows), as_long(starts),
        as_long(stops), as_long(ids), as_long(bins), n_bins,
    )
    return torch.from_numpy(sums), torch.from_numpy(log_norm)
