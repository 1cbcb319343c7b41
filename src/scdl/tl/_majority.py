"""Majority voting of per-cell labels within clusters, as CellTypist refines its calls, and the
over-clustering it votes over: the user's (an obs column, a Series or an array) checked, and
written to obs as scanpy writes Leiden's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData


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


def given_clusters(adata: AnnData, over_clustering) -> np.ndarray:
    """The user's over-clustering: an obs column, or one cluster per cell."""
    if isinstance(over_clustering, str):
        from scdl.data import check_obs_key

        return check_obs_key(adata, over_clustering, arg="over_clustering").to_numpy()
    if isinstance(over_clustering, pd.Series):  # by cell name, as pandas aligns (not position)
        if (
            not over_clustering.index.is_unique
            or not adata.obs_names.isin(over_clustering.index).all()
        ):
            raise ValueError(
                "over_clustering is a Series whose index does not name every cell of adata "
                "once; index it by adata.obs_names (or pass its values: `.to_numpy()`)."
            )
        over_clustering = over_clustering.reindex(adata.obs_names)
    clusters = np.asarray(over_clustering)
    if clusters.shape != (adata.n_obs,):
        raise ValueError(
            f"over_clustering must be an obs column name or hold one cluster per cell "
            f"({adata.n_obs}); got shape {clusters.shape}."
        )
    n_missing = int(pd.isna(pd.Series(clusters, dtype=object)).sum())
    if n_missing:  # as an obs column with them is refused: else they vote as one cluster
        raise ValueError(
            f"over_clustering has {n_missing} missing values (NaN/None); give every cell a "
            "cluster, or pass over_clustering=None to compute one."
        )
    return clusters


def categories_given(adata: AnnData, over_clustering) -> list[str] | None:
    """The order of a categorical over-clustering the user gave (an obs column or a
    Series), as strings; ``None`` for any other."""
    column = adata.obs.get(over_clustering) if isinstance(over_clustering, str) else over_clustering
    if isinstance(getattr(column, "dtype", None), pd.CategoricalDtype):  # Series or Categorical
        return [str(c) for c in column.dtype.categories]
    return None


def cluster_column(clusters, order: list[str] | None) -> pd.Categorical:
    """Cluster ids as a categorical of strings, as scanpy writes Leiden's: in the given
    order, else numbers by value (0, 1, 2, ..., 10, not 0, 1, 10) and any other ids after
    them in text order."""
    values = pd.Series(clusters).astype(str).to_numpy()
    present = set(values)
    if order is None:
        order = sorted(
            present, key=lambda v: (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v)
        )
    return pd.Categorical(values, categories=[c for c in order if c in present])


def clusters_given(over_clustering, graph) -> str:
    """How ``params`` records the over-clustering: its obs column, or where it came from."""
    if isinstance(over_clustering, str):
        return over_clustering
    if over_clustering is not None:
        return "an array given per cell"
    return "" if graph is None else "Leiden of obsp['connectivities']"
