"""Simple, transparent outcome measures for tests (no training, no jax start-up)."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def knn_indices(x: np.ndarray, k: int = 30) -> np.ndarray:
    return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]


def batch_mixing(x: np.ndarray, batch, k: int = 30) -> float:
    """Mean normalised entropy of batch labels among each cell's k neighbours (1 = fully mixed)."""
    b = np.asarray(batch)
    cats, codes = np.unique(b, return_inverse=True)
    idx = knn_indices(x, k)
    counts = np.stack([(codes[idx] == c).sum(1) for c in range(len(cats))], 1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(counts > 0, counts * np.log(counts), 0), 1)
    return float(ent.mean() / np.log(len(cats)))


def label_purity(x: np.ndarray, labels, k: int = 15) -> float:
    """Fraction of each cell's k neighbours sharing its label (cell types kept apart)."""
    lab = np.asarray(labels)
    idx = knn_indices(x, k)
    return float((lab[idx] == lab[:, None]).mean())
