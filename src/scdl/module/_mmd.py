"""Kernel two-sample and independence statistics on minibatches of latent codes.

Both use a multi-scale Gaussian kernel whose bandwidths follow the median pairwise squared
distance (detached), so the penalties need no tuning to the latent's scale.
"""

from __future__ import annotations

import torch


def _rbf_kernel(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(a, b).pow(2)
    return torch.exp(-d2.unsqueeze(0) / scales.view(-1, 1, 1)).mean(0)


def median_scales(x: torch.Tensor) -> torch.Tensor:
    """Bandwidths 0.25, 1 and 4 times the median squared distance between rows (detached)."""
    with torch.no_grad():
        med = torch.cdist(x, x).pow(2).median().clamp_min(1e-6)
    return med * torch.tensor([0.25, 1.0, 4.0], device=x.device, dtype=x.dtype)


def batch_mmd(z: torch.Tensor, batch: torch.Tensor, min_cells: int = 4) -> torch.Tensor:
    """Mean squared MMD between each batch and the rest of the minibatch.

    Batches with fewer than ``min_cells`` cells in the minibatch are skipped (their estimate
    is too noisy).
    """
    batch = batch.view(-1)
    labels = torch.unique(batch)
    zero = z.new_zeros(())
    if labels.numel() < 2:
        return zero
    scales = median_scales(z)
    total, n = zero, 0
    for b in labels:
        inb = batch == b
        nb, no = int(inb.sum()), int((~inb).sum())
        if nb < min_cells or no < min_cells:
            continue
        za, zb = z[inb], z[~inb]
        total = total + (
            _rbf_kernel(za, za, scales).mean()
            + _rbf_kernel(zb, zb, scales).mean()
            - 2 * _rbf_kernel(za, zb, scales).mean()
        )
        n += 1
        if labels.numel() == 2:  # one comparison already covers both batches
            break
    return total / max(n, 1)


def hsic(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """HSIC (Hilbert-Schmidt independence criterion) between paired rows of ``z`` and ``s``.

    Biased estimate ``trace(K_z H K_s H) / (n - 1)^2`` with a kernel per space (each with its
    own median bandwidths, so it is blind to the scale of each space: ``s`` cannot escape it
    by shrinking). Zero when ``z`` and ``s`` are independent.
    """
    n = z.shape[0]
    kz = _rbf_kernel(z, z, median_scales(z))
    ks = _rbf_kernel(s, s, median_scales(s))
    kz = kz - kz.mean(0, keepdim=True) - kz.mean(1, keepdim=True) + kz.mean()
    return (kz * ks).sum() / (n - 1) ** 2
