"""``scdl.tl.cluster``: Leiden clustering on a learned representation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData


def cluster(
    adata: AnnData,
    *,
    use_rep: str = "X_scdl",
    resolution: float = 1.0,
    n_neighbors: int = 15,
    key_added: str = "scdl_cluster",
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Cluster cells by Leiden community detection on a learned representation.

    Builds a k-nearest-neighbour graph on ``obsm[use_rep]`` (scanpy's
    :func:`~scanpy.pp.neighbors`) and runs scanpy's Leiden (igraph flavour) on it. The graph
    is stored under its own key, so a PCA-based ``neighbors`` graph is left as it was.

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        obsm key of the representation, e.g. the output of :func:`scdl.tl.integrate`.
    resolution
        Leiden resolution: higher gives more, smaller clusters.
    n_neighbors
        Neighbours per cell in the graph.
    key_added
        obs column of the clusters.
    random_state
        Seed of the Leiden optimisation.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``. Writes:

    ``adata.obs[key_added]``
        Cluster labels (categorical).
    ``adata.uns[key_added]``
        Leiden parameters.
    ``adata.uns[f"{key_added}_neighbors"]``
        Parameters of the neighbour graph on ``use_rep``.
    ``adata.obsp[f"{key_added}_neighbors_distances"]``, ``..._connectivities``
        The neighbour graph on ``use_rep``.
    """
    import scanpy as sc

    if use_rep not in adata.obsm:
        avail = list(adata.obsm.keys())
        raise KeyError(
            f"use_rep={use_rep!r} is not in adata.obsm (available: {avail or 'none'}). Run "
            "`scdl.tl.integrate(adata, ...)` first or pass the key of an existing embedding."
        )
    import numpy as np

    rep = np.asarray(adata.obsm[use_rep])
    if rep.ndim != 2 or not np.issubdtype(rep.dtype, np.number):
        raise TypeError(
            f"adata.obsm[{use_rep!r}] must be a numeric cells x dimensions array, got "
            f"dtype {rep.dtype} with shape {rep.shape}."
        )
    if not np.isfinite(rep).all():
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has {int((~np.isfinite(rep)).sum())} NaN or infinite "
            "values (a diverged training?). Recompute it, e.g. with `scdl.tl.integrate`."
        )
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer):
        raise TypeError(f"n_neighbors must be an integer, got {n_neighbors!r}.")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}.")
    if not resolution > 0:
        raise ValueError(f"resolution must be > 0 (e.g. 0.5 to 2), got {resolution!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"key_added must be a non-empty string, got {key_added!r}.")
    if adata.n_obs <= n_neighbors:
        raise ValueError(
            f"{adata.n_obs} cells cannot have n_neighbors={n_neighbors}; pass a smaller "
            "n_neighbors."
        )
    adata = adata.copy() if copy else adata
    neighbors_key = f"{key_added}_neighbors"
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        use_rep=use_rep,
        key_added=neighbors_key,
        random_state=random_state,
    )
    sc.tl.leiden(
        adata,
        resolution=resolution,
        key_added=key_added,
        neighbors_key=neighbors_key,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=random_state,
    )
    return adata if copy else None
