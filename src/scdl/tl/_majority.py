"""Majority voting of per-cell labels within clusters, as CellTypist refines its calls."""

from __future__ import annotations

import numpy as np
import pandas as pd


def majority_vote(labels, clusters, *, min_support: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's most frequent label and the fraction of its cells that carry it.

    Parameters
    ----------
    labels
        Per-cell labels (``"Unknown"`` counts as a label like any other).
    clusters
        Per-cell cluster ids.
    min_support
        Clusters whose majority label holds fewer than this fraction of its cells keep each
        cell's own label (``0`` always takes the majority, as CellTypist does). A cluster
        whose most frequent labels tie has no majority and keeps each cell's own label too
        (CellTypist takes the first in sorted order, which on a few cells overwrites most
        of them with an arbitrary one). CellTypist's ``min_prop`` labels a cluster below it
        ``"Heterogeneous"``; here its cells keep their labels (the support returned tells
        them apart).

    Returns
    -------
    voted
        Per-cell label after voting.
    support
        Per-cell fraction of the cell's cluster that carries the cluster's majority label.
    """
    labels = np.asarray(labels, dtype=object)
    clusters = pd.Series(np.asarray(clusters)).astype(str).to_numpy()
    if labels.shape != clusters.shape:
        raise ValueError(
            f"labels ({labels.shape[0]}) and clusters ({clusters.shape[0]}) differ in length."
        )
    table = pd.crosstab(clusters, labels)
    top = table.idxmax(axis=1)
    tied = (table.to_numpy() == table.max(axis=1).to_numpy()[:, None]).sum(axis=1) > 1
    frac = table.max(axis=1) / table.sum(axis=1)
    support = frac.reindex(clusters).to_numpy(dtype=float)
    voted = top.reindex(clusters).to_numpy(dtype=object)
    keep_own = (support < min_support) | pd.Series(tied, index=table.index).reindex(
        clusters
    ).to_numpy(dtype=bool)
    voted[keep_own] = labels[keep_own]
    return voted, support
