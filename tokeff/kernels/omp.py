"""Batched Orthogonal Matching Pursuit in torch, in two forms that give the same codes.

OMP greedily picks, k times, the dictionary atom most correlated with what is still unexplained
and refits all picked atoms by least squares. Correlations use unit-norm atoms; coefficients are
returned for the raw atoms.

- `omp`: the textbook form in signal space. Picked atoms are kept orthonormal (Gram-Schmidt,
  applied twice for stability); each step is one matmul of the residuals with the whole
  dictionary, so it suits one large dictionary shared by all targets on a GPU.
- `omp_gram`: the same algorithm in coefficient space ("Batch-OMP", Rubinstein, Zibulevsky and
  Elad 2008) for a small dictionary shared by a group of targets: after one matmul for the
  targets' correlations and the dictionary's Gram matrix, a step costs O(atoms × step) per target
  instead of O(atoms × dim), which is what makes OMP over a 262k-token vocabulary fit a CPU.

Both are matmul-bound or memory-bound tensor code that BLAS and cuBLAS already run well, which is
why neither has a Numba or Triton variant.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

_EPS = 1e-6


@torch.inference_mode()
def omp(targets: torch.Tensor, dictionary: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of `targets` (B, d) over `dictionary` rows (N, d): picked row indices (B, k) and
    coefficients (B, k) with targets ≈ (coefficients[..., None] * dictionary[indices]).sum(1)."""
    batch, dim = targets.shape
    _check_k(k, dictionary.shape[0])
    targets, dictionary = targets.float(), dictionary.float()
    unit_t = (dictionary / dictionary.norm(dim=1, keepdim=True).clamp_min(_EPS)).T
    rows = torch.arange(batch, device=targets.device)
    basis = targets.new_zeros(batch, k, dim)  # orthonormal span of the picked atoms
    upper = targets.new_zeros(batch, k, k)  # picked atoms = basis^T @ upper (QR factors)
    projections = targets.new_zeros(batch, k)  # basis @ target
    picked = torch.zeros(batch, k, dtype=torch.long, device=targets.device)
    taken = torch.zeros(batch, dictionary.shape[0], dtype=torch.bool, device=targets.device)
    residual = targets.clone()
    for step in range(k):
        choice = (residual @ unit_t).abs_().masked_fill_(taken, -1.0).argmax(dim=1)
        taken[rows, choice] = True
        picked[:, step] = choice
        atom = dictionary[choice]
        vector = atom
        if step:
            span = basis[:, :step]
            for _ in range(2):  # "twice is enough" re-orthogonalization
                overlap = torch.bmm(span, vector.unsqueeze(2)).squeeze(2)
                vector = vector - torch.bmm(overlap.unsqueeze(1), span).squeeze(1)
                upper[:, :step, step] += overlap
        norm = vector.norm(dim=1)
        independent = norm > _EPS * atom.norm(dim=1).clamp_min(_EPS)
        # An atom already in the span adds nothing: a zero basis vector gives it coefficient 0.
        unit_vector = torch.where(independent.unsqueeze(1), vector / norm.clamp_min(_EPS).unsqueeze(1), 0.0)
        upper[:, step, step] = torch.where(independent, norm, torch.ones_like(norm))
        basis[:, step] = unit_vector
        projections[:, step] = (unit_vector * residual).sum(dim=1)
        residual = residual - unit_vector * projections[:, step : step + 1]
    coefficients = torch.linalg.solve_triangular(upper, projections.unsqueeze(2), upper=True).squeeze(2)
    return picked, coefficients


@torch.inference_mode()
def omp_gram(
    targets: torch.Tensor, atoms: torch.Tensor, k: int, gram: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`omp` for many targets sharing a small dictionary `atoms` (P, d), on the CPU (Numba).

    `gram` may pass the unit atoms' Gram matrix (P, P) when several target batches share `atoms`.
    """
    _check_k(k, atoms.shape[0])
    targets, atoms = targets.float().cpu(), atoms.float().cpu()
    norms = atoms.norm(dim=1).clamp_min(_EPS)
    unit = atoms / norms.unsqueeze(1)
    if gram is None:
        gram = unit @ unit.T
    correlation = targets @ unit.T  # one matmul; the per-step work below never touches `dim` again
    picked, upper, projections = _omp_gram_numba(correlation.numpy(), gram.float().cpu().numpy(), k)
    upper_t, projections_t = torch.from_numpy(upper), torch.from_numpy(projections)
    unit_coefficients = torch.linalg.solve_triangular(upper_t, projections_t.unsqueeze(2), upper=True).squeeze(2)
    picked_t = torch.from_numpy(picked)
    return picked_t, unit_coefficients / norms[picked_t]


def _omp_gram_numba(correlation: np.ndarray, gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _omp_gram_kernel()(np.ascontiguousarray(correlation), np.ascontiguousarray(gram), k)


@cache
def _omp_gram_kernel():
    """Compiled on first use (and cached on disk by Numba), so importing tokeff stays fast."""
    import numba

    @numba.njit(parallel=True, cache=True, fastmath=True)
    def kernel(correlation, gram, k):
        batch, count = correlation.shape
        picked = np.zeros((batch, k), dtype=np.int64)
        upper = np.zeros((batch, k, k), dtype=np.float32)
        projections = np.zeros((batch, k), dtype=np.float32)
        for b in numba.prange(batch):
            # Basis vector j is carried as its correlations with every unit atom (w[j] = U q_j),
            # so a step needs only the new atom's Gram row and the earlier w's, all in cache.
            corr = correlation[b].copy()
            w = np.zeros((k, count), dtype=np.float32)
            taken = np.zeros(count, dtype=np.bool_)
            column = np.empty(count, dtype=np.float32)
            for step in range(k):
                best, choice = -1.0, 0
                for j in range(count):
                    if not taken[j] and abs(corr[j]) > best:
                        best, choice = abs(corr[j]), j
                taken[choice] = True
                picked[b, step] = choice
                column[:] = gram[choice]
                leftover = 1.0
                for j in range(step):
                    overlap = w[j, choice]
                    upper[b, j, step] = overlap
                    leftover -= float(overlap) * float(overlap)
                    for p in range(count):
                        column[p] -= overlap * w[j, p]
                if leftover > _EPS:  # else the atom lies in the span: coefficient 0
                    norm = np.sqrt(leftover)
                    upper[b, step, step] = norm
                    projection = corr[choice] / norm
                    projections[b, step] = projection
                    for p in range(count):
                        w[step, p] = column[p] / norm
                        corr[p] -= w[step, p] * projection
                else:
                    upper[b, step, step] = 1.0
        return picked, upper, projections

    return kernel


def _check_k(k: int, atoms: int) -> None:
    if not 0 < k <= atoms:
        raise ValueError(f"k={k} must be in 1..{atoms} (the atoms available)")
