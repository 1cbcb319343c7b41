"""Leiden resolution without labels: silhouette width over a resolution scan (with a floor),
and the resolution search behind ``n_clusters``.

Works on a neighbour graph's connectivities (a sparse cells x cells matrix); the Leiden runs
are scanpy's ``sc.tl.leiden(flavor="igraph")``, the partitions ``tl.cluster`` writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl._warnings import scanpy_scratch

if TYPE_CHECKING:
    import pandas as pd
    from scipy import sparse

# Leiden resolutions scanned by ``resolution="auto"``.
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)
# Cells the silhouette width is computed on (a random subset beyond this).
MAX_SILHOUETTE_CELLS = 2000
# Resolutions whose silhouette is within this of the best count as ties (the finest wins).
TIE = 0.01
# Lowest resolution "auto" returns: the silhouette can peak at a few coarse, well-separated
# groups of types (lymphoid / myeloid), below the partition into the types themselves.
FLOOR = 0.4


@scanpy_scratch()
def leiden(
    connectivities: sparse.spmatrix, resolution: float, seed: int, n_iterations: int = 2
) -> np.ndarray:
    """Leiden labels of every cell: scanpy's ``sc.tl.leiden`` (igraph, modularity, undirected)
    on ``connectivities``, exactly as :func:`scdl.tl.cluster` writes a fixed resolution, so a
    scan's partition at ``resolution`` is the one written there."""
    import anndata
    import pandas as pd
    import scanpy as sc

    n = connectivities.shape[0]
    tmp = anndata.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)))
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        adjacency=connectivities,
        key_added="leiden",
        flavor="igraph",
        n_iterations=n_iterations,
        directed=False,
        random_state=seed,
    )
    return tmp.obs["leiden"].to_numpy().astype(int)


def silhouette(rep: np.ndarray, labels: np.ndarray, *, seed: int, max_cells: int) -> float:
    """Mean silhouette width of ``labels`` in ``rep`` (Euclidean), on at most ``max_cells``
    random cells; NaN for a single cluster."""
    from sklearn.metrics import silhouette_score

    idx = np.arange(len(labels))
    if len(idx) > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), max_cells, replace=False))
    n = len(np.unique(labels[idx]))
    if not 1 < n < len(idx):
        return float("nan")
    return float(silhouette_score(rep[idx], labels[idx]))


def scan(
    connectivities: sparse.spmatrix,
    rep: np.ndarray,
    *,
    resolutions=GRID,
    seed: int = 0,
    max_cells: int = MAX_SILHOUETTE_CELLS,
) -> pd.DataFrame:
    """Leiden at every resolution, with the silhouette width of its partition in ``rep``.

    Returns a table of ``resolution``, ``n_clusters`` and ``silhouette``.
    """
    import pandas as pd

    rows = []
    for r in resolutions:
        labels = leiden(connectivities, float(r), seed)
        rows.append(
            {
                "resolution": float(r),
                "n_clusters": int(len(np.unique(labels))),
                "silhouette": silhouette(rep, labels, seed=seed, max_cells=max_cells),
            }
        )
    return pd.DataFrame(rows)


def choose(
    table: pd.DataFrame, criterion: str = "silhouette", tie: float = TIE, floor: float = FLOOR
) -> float:
    """The highest resolution whose ``criterion`` is within ``tie`` of the best, among those
    giving two or more clusters, and at least ``floor``; the largest resolution when none
    gives two. When no partition scores above ``tie`` (every silhouette about 0 or below:
    no partition separates the cells better than chance, e.g. identical cells), the lowest
    resolution: the band would otherwise hold every partition and return the finest."""
    ok = table[(table["n_clusters"] >= 2) & table[criterion].notna()]
    if ok.empty:
        return float(table["resolution"].max())
    best = ok[criterion].max()
    if best <= tie:
        return float(table["resolution"].min())
    return max(float(ok.loc[ok[criterion] >= best - tie, "resolution"].max()), float(floor))


def search_n_clusters(
    connectivities: sparse.spmatrix,
    n_clusters: int,
    *,
    seed: int = 0,
    low: float = 1e-3,
    high: float = 10.0,
    max_steps: int = 30,
) -> tuple[float, np.ndarray, list[tuple[float, int]]]:
    """Bisection on log-resolution for ``n_clusters`` Leiden clusters.

    Returns the resolution, its labels and the (resolution, n_clusters) steps. When no
    resolution gives exactly ``n_clusters`` within ``max_steps``, the closest count found
    (the lower resolution on ties) is returned.
    """
    steps: list[tuple[float, int]] = []
    best: tuple[int, float, np.ndarray] | None = None
    lo, hi = np.log(low), np.log(high)
    for _ in range(max_steps):
        r = float(np.exp((lo + hi) / 2))
        labels = leiden(connectivities, r, seed)
        k = int(len(np.unique(labels)))
        steps.append((r, k))
        gap = abs(k - n_clusters)
        if best is None or gap < best[0] or (gap == best[0] and r < best[1]):
            best = (gap, r, labels)
        if k == n_clusters:
            break
        if k < n_clusters:
            lo = np.log(r)
        else:
            hi = np.log(r)
    assert best is not None
    return best[1], best[2], steps


def merge_to(labels: np.ndarray, rep: np.ndarray, n_clusters: int) -> np.ndarray:
    """Merge clusters (average linkage of their centroids in ``rep``) down to ``n_clusters``.

    Leiden never returns fewer clusters than the graph has connected components, so a
    smaller ``n_clusters`` is reached by joining the closest clusters.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    ids, inverse = np.unique(labels, return_inverse=True)
    if len(ids) <= n_clusters:
        return labels
    centroids = np.stack([rep[inverse == i].mean(axis=0) for i in range(len(ids))])
    tree = linkage(centroids, method="average")
    groups = fcluster(tree, t=n_clusters, criterion="maxclust")
    return groups[inverse] - 1
