"""Batched Orthogonal Matching Pursuit in torch, in two forms that give the same codes.

OMP greedily picks, k times, the dictionary atom most correlated with what is still unexplained
and refits all picked atoms by least squares. Correlations use unit-norm atoms; coefficients are
returned for the raw atoms.

- `omp`: the textbook form in signal space. Picked atoms are kept orthonormal (Gram-Schmidt,
  applied twice for stability); each step is one matmul of the residuals with the whole
  dictionary, so it suits one large dictionary shared by all targets on a GPU.
  It also takes one dictionary per target (B, N, d): the GPU path and the reference for the next.
- `omp_candidates`: the same codes in coefficient space (Batch-OMP) when every target searches its
  own few hundred candidate atoms, on the CPU with Numba: one target's candidates stay in cache
  for all k steps instead of being streamed from memory once per step.

The GPU path is batched torch (cuBLAS does the work), so there is no Triton variant.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

_EPS = 1e-6


@torch.inference_mode()
def omp(targets: torch.Tensor, dictionary: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of `targets` (B, d) over `dictionary` rows (N, d): picked row indices (B, k) and
    coefficients (B, k) with targets ≈ (coefficients[..., None] * dictionary[indices]).sum(1).

    `dictionary` may also be (B, N, d), one dictionary per target (its own candidate atoms); the
    indices then point into each target's own rows.
    """
    batch, dim = targets.shape
    _check_k(k, dictionary.shape[-2])
    targets, dictionary = targets.float(), dictionary.float()
    unit = dictionary / dictionary.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    per_target = dictionary.dim() == 3
    rows = torch.arange(batch, device=targets.device)
    basis = targets.new_zeros(batch, k, dim)  # orthonormal span of the picked atoms
    upper = targets.new_zeros(batch, k, k)  # picked atoms = basis^T @ upper (QR factors)
    projections = targets.new_zeros(batch, k)  # basis @ target
    picked = torch.zeros(batch, k, dtype=torch.long, device=targets.device)
    taken = torch.zeros(batch, dictionary.shape[-2], dtype=torch.bool, device=targets.device)
    residual = targets.clone()
    for step in range(k):
        if per_target:
            correlation = torch.bmm(unit, residual.unsqueeze(2)).squeeze(2)
        else:
            correlation = residual @ unit.T
        choice = correlation.abs_().masked_fill_(taken, -1.0).argmax(dim=1)
        taken[rows, choice] = True
        picked[:, step] = choice
        atom = dictionary[rows, choice] if per_target else dictionary[choice]
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
def omp_candidates(
    targets: torch.Tensor, atoms: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`omp` of each target over its own candidate rows of `atoms` (N, d), on the CPU (Numba).

    `candidates` (B, P) lists each target's atom ids; the returned indices point into that list, as
    `omp(targets, atoms[candidates], k)` would return them.
    """
    _check_k(k, candidates.shape[1])
    targets, atoms = targets.float().cpu().contiguous(), atoms.float().cpu()
    norms = atoms.norm(dim=1).clamp_min(_EPS)
    unit = (atoms / norms.unsqueeze(1)).contiguous()
    candidates = candidates.cpu().to(torch.int64).contiguous()
    picked, upper, projections = _omp_candidates_kernel()(targets.numpy(), unit.numpy(), candidates.numpy(), k)
    upper_t, projections_t = torch.from_numpy(upper), torch.from_numpy(projections)
    unit_coefficients = torch.linalg.solve_triangular(upper_t, projections_t.unsqueeze(2), upper=True).squeeze(2)
    picked_t = torch.from_numpy(picked)
    return picked_t, unit_coefficients / norms[candidates.gather(1, picked_t)]


@cache
def _omp_candidates_kernel():
    """Compiled on first use (and cached on disk by Numba), so importing tokeff stays fast.

    Batch-OMP (Rubinstein, Zibulevsky and Elad 2008) per target, with the Gram rows of its
    candidates computed only for the atoms it picks: a target's candidates (P x d) stay in cache
    for all k steps, which batched torch code (one kernel call per step for all targets) cannot do.
    """
    import numba

    @numba.njit(parallel=True, cache=True, fastmath=True)
    def kernel(targets, unit, candidates, k):
        batch, count = candidates.shape
        dim = unit.shape[1]
        picked = np.zeros((batch, k), dtype=np.int64)
        upper = np.zeros((batch, k, k), dtype=np.float32)
        projections = np.zeros((batch, k), dtype=np.float32)
        for b in numba.prange(batch):
            atoms = np.empty((count, dim), dtype=np.float32)
            for i in range(count):
                atoms[i] = unit[candidates[b, i]]
            corr = atoms @ targets[b]
            # Basis vector j is carried as its correlations with every candidate (w[j] = A q_j),
            # so a step needs only the picked atom's Gram row and the earlier w's.
            w = np.zeros((k, count), dtype=np.float32)
            taken = np.zeros(count, dtype=np.bool_)
            for step in range(k):
                best, choice = -1.0, 0
                for j in range(count):
                    if not taken[j] and abs(corr[j]) > best:
                        best, choice = abs(corr[j]), j
                taken[choice] = True
                picked[b, step] = choice
                column = atoms @ atoms[choice]
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
