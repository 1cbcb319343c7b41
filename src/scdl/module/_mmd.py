"""Maximum mean discrepancy between the batches in a minibatch of latent codes."""

from __future__ import annotations

import torch


def _rbf_kernel(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(a, b).pow(2)
    return torch.exp(-d2.unsqueeze(0) / scales.view(-1, 1, 1)).mean(0)


def batch_mmd(z: torch.Tensor, batch: torch.Tensor, min_cells: int = 4) -> torch.Tensor:
    """Mean squared MMD between each batch and the rest of the minibatch.

    A multi-scale Gaussian kernel whose bandwidths follow the median pairwise distance
    (detached), so the penalty needs no tuning to the latent's scale. Batches with fewer
    than ``min_cells`` cells in the minibatch are skipped (their estimate is too noisy).
    """
    batch = batch.view(-1)
    labels = torch.unique(batch)
    zero = z.new_zeros(())
    if labels.numel() < 2:
        return zero
    with torch.no_grad():
        med = torch.cdist(z, z).pow(2).median().clamp_min(1e-6)
    scales = med * torch.tensor([0.25, 1.0, 4.0], device=z.device, dtype=z.dtype)
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
