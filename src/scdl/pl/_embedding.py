"""``scdl.pl.embedding``: UMAP of a learned space, coloured by batch and label side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._utils import finish

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.figure import Figure


def embedding(
    adata: AnnData,
    *,
    basis: str = "X_scdl",
    color: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    ncols: int = 3,
    show: bool | None = None,
    save: str | bool | None = None,
    **kwargs,
) -> Figure | None:
    """UMAP of ``obsm[basis]``, one panel per ``color`` key.

    The UMAP is computed from ``obsm[basis]`` the first time and cached in
    ``adata.obsm[f"{basis}_umap"]`` (the only field this function writes); later calls reuse it.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        obsm key of the learned representation (e.g. from :func:`scdl.tl.integrate`).
    color
        obs columns or genes to colour by, e.g. ``["sample", "cell_type"]``. Default: the
        batch key recorded by :func:`scdl.tl.integrate` in ``uns[basis]``, if any.
    n_neighbors, random_state
        For the neighbour graph and UMAP.
    ncols
        Panels per row.
    show, save
        As in scanpy: show the figure, and/or save it (``True`` or a path).
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    The Figure, unless it was shown.
    """
    import anndata
    import scanpy as sc

    if basis not in adata.obsm:
        raise KeyError(
            f"basis={basis!r} is not in adata.obsm (available: {list(adata.obsm)}). Run "
            "`scdl.tl.integrate` first or pass the key of an existing embedding."
        )
    umap_key = f"{basis}_umap"
    if umap_key not in adata.obsm or adata.obsm[umap_key].shape[0] != adata.n_obs:
        tmp = anndata.AnnData(obsm={"rep": np.asarray(adata.obsm[basis])})
        sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=n_neighbors, random_state=random_state)
        sc.tl.umap(tmp, random_state=random_state)
        adata.obsm[umap_key] = tmp.obsm["X_umap"]
    if color is None:
        params = adata.uns.get(basis, {}).get("params", {}) if basis in adata.uns else {}
        color = [params["batch_key"]] if params.get("batch_key") else None
    fig = sc.pl.embedding(
        adata,
        basis=umap_key,
        color=color,
        ncols=ncols,
        show=False,
        return_fig=True,
        frameon=False,
        **kwargs,
    )
    if fig is None or not hasattr(fig, "savefig"):  # scanpy returns Axes for a single panel
        fig = fig.figure if fig is not None else __import__("matplotlib.pyplot").pyplot.gcf()
    return finish(fig, show=show, save=save, default_name=f"embedding_{basis}")
