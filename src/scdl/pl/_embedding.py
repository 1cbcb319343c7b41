"""``scdl.pl.embedding``: UMAP of a learned space, coloured by batch and label side by side."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

from scdl._rng import keeps_rng
from scdl.data import check_embedding, check_obsm_key, check_writable

from ._utils import (
    cached_umap,
    check_scanpy_options,
    color_keys,
    doc_show_save,
    figures_closed_on_failure,
    finish,
    parent_layout,
    umaps_kept_on_success,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_show_save
@keeps_rng
def embedding(
    adata: AnnData,
    *,
    basis: str = "X_scdl",
    color: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    ncols: int = 3,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
    **kwargs,
) -> Figure | None:
    """UMAP of ``obsm[basis]``, one panel per ``color`` key.

    The UMAP is computed from ``obsm[basis]`` the first time (scanpy's neighbour graph, exact
    neighbours up to 20,000 cells, and :func:`~scanpy.tl.umap`) and cached in
    ``adata.obsm[f"{basis}_umap"]``, with what it was computed from (``n_neighbors``,
    ``random_state`` and a fingerprint of ``obsm[basis]``) in
    ``adata.uns[f"{basis}_umap"]["params"]``: the only fields this function writes (palettes
    in ``uns[f"{color}_colors"]`` are used, but scanpy's new ones are not stored). Later
    calls reuse it while ``obsm[basis]`` and those settings are unchanged (the same cells
    sorted or reordered keep their layout), and recompute it otherwise (e.g. after a new
    :func:`scdl.tl.integrate` into the same key). A view of some
    cells (``adata[mask]``) whose parent holds a current UMAP is drawn in the parent's layout
    and nothing is written; a ``basis`` of two columns (e.g. scanpy's ``"X_umap"``) is drawn
    as it is.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        obsm key of the learned representation (e.g. from :func:`scdl.tl.integrate`).
    color
        obs columns or genes to colour by, e.g. ``["sample", "cell_type"]``. Default: the
        batch key recorded by :func:`scdl.tl.integrate` in ``uns[basis]``, if any and still a
        column of ``obs``.
    n_neighbors, random_state
        For the neighbour graph and UMAP (``random_state=None`` uses 0, so that the cached
        UMAP is reproducible).
    ncols
        Panels per row.
    ax
        Axes to draw a single ``color`` panel on (pass ``show=False`` and show your layout
        when it is complete); the figure holding it is returned.
    %(show_save)s
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``frameon`` is ``False`` unless given).

    %(returns_figure)s

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> scdl.tl.integrate(adata, batch_key="sample")
    >>> scdl.pl.embedding(adata, color=["cell_type", "sample"])
    """
    import pandas as pd
    import scanpy as sc

    check_obsm_key(basis, "basis")
    if basis not in adata.obsm:
        raise KeyError(
            f"basis={basis!r} is not in adata.obsm (available: {list(adata.obsm)}). Pass the "
            "key of an existing embedding, or make it first: `scdl.tl.integrate` writes "
            "'X_scdl' (drawn here on its UMAP), `sc.tl.umap` writes 'X_umap'."
        )
    if color is None:  # the batch key tl.integrate recorded, while that column exists
        info = adata.uns.get(basis)
        params = info.get("params") if isinstance(info, dict) else None
        batch = params.get("batch_key") if isinstance(params, dict) else None
        color = [batch] if batch and batch in adata.obs else None
        # tl.integrate read numeric batch codes as categories; scanpy would draw a colour bar
        numeric_batch = color is not None and pd.api.types.is_numeric_dtype(adata.obs[batch])
    else:
        numeric_batch = False
    # everything checked before the UMAP cache is written: a failing call writes nothing
    rep = check_embedding(adata, basis, purpose="a UMAP", arg="basis")
    # a basis of two columns (scanpy's X_umap, a t-SNE) is drawn as it is, as scanpy does: a
    # UMAP of it redrew another picture
    two_d = rep.shape[1] == 2
    umap_key = basis if two_d else f"{basis}_umap"
    # a view of cells whose parent has a current UMAP: drawn in the whole data's layout
    as_parent = not two_d and parent_layout(
        adata, umap_key, basis, n_neighbors=n_neighbors, random_state=random_state
    )
    computed = not (two_d or as_parent)
    if computed and rep.shape[0] < 4:
        raise ValueError(f"adata.obsm[{basis!r}] holds {rep.shape[0]} cells: a UMAP needs 4.")
    _check_colors(adata, color, kwargs.get("gene_symbols"))
    gene_keys = [k for k in color_keys(color) if k is not None and k not in adata.obs.columns]
    check_scanpy_options(adata, kwargs, genes=bool(gene_keys))
    # the UMAP is cached in it, scanpy's palettes written: a backed view failed inside anndata
    check_writable(adata)
    with umaps_kept_on_success(adata, *([umap_key] if computed else [])):
        if computed:
            cached_umap(
                adata,
                umap_key,
                rep,
                n_neighbors=n_neighbors,
                random_state=random_state,  # None is 0 there, so the cache can match it
            )
        kwargs.setdefault("frameon", False)
        with _scanpy_writes_undone(adata), figures_closed_on_failure():
            if numeric_batch:  # put back as it was when the figure is drawn
                adata.obs[color[0]] = adata.obs[color[0]].astype("category")
            plot = sc.pl.embedding(
                adata,
                basis=umap_key,
                color=color,
                ncols=ncols,
                ax=ax,
                show=False,
                # with ax given, scanpy draws on it and has no figure of its own to return
                return_fig=None if ax is not None else True,
                **kwargs,
            )
        if ax is not None:
            fig = ax.figure
        elif plot is None or not hasattr(plot, "savefig"):  # scanpy returns Axes for one panel
            fig = plot.figure if plot is not None else __import__("matplotlib.pyplot").pyplot.gcf()
        else:
            fig = plot
        return finish(
            fig, show=show, save=save, return_fig=return_fig, default_name=f"embedding_{basis}"
        )


def _check_colors(adata: AnnData, color, gene_symbols: str | None = None) -> None:
    """Each ``color`` key must be an obs column or a gene (scanpy's own error comes after
    the UMAP would be cached): a name of ``var_names``, of ``raw``'s, or of the var column
    ``gene_symbols`` names (scanpy's option)."""
    import difflib

    keys = [k for k in color_keys(color) if k is not None]
    genes = set(adata.var_names) | (set(adata.raw.var_names) if adata.raw is not None else set())
    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            raise KeyError(
                f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: "
                f"{list(adata.var.columns)})."
            )
        genes |= set(adata.var[gene_symbols].astype(str))
    for key in keys:
        if key not in adata.obs.columns and key not in genes:
            hint = difflib.get_close_matches(str(key), list(adata.obs.columns), n=1)
            raise KeyError(
                f"color={key!r} is neither an obs column nor a gene of adata."
                + (f" Did you mean {hint[0]!r}?" if hint else "")
            )


@contextmanager
def _scanpy_writes_undone(adata: AnnData):
    """Undo what :func:`scanpy.pl.embedding` writes into ``adata``: its palettes in uns and
    string obs/var columns made categorical (a private AnnData would not serve backed data)."""
    import pandas as pd

    def strings(df: pd.DataFrame) -> dict:
        return {c: df[c] for c in df.columns if not isinstance(df[c].dtype, pd.CategoricalDtype)}

    obs, var = strings(adata.obs), strings(adata.var)
    palettes = {k: v for k, v in adata.uns.items() if k.endswith("_colors")}
    try:
        yield
    finally:
        for df, before in ((adata.obs, obs), (adata.var, var)):
            for c, col in before.items():
                if c in df.columns and df[c].dtype != col.dtype:
                    df[c] = col
        for k in [k for k in adata.uns if k.endswith("_colors") and k not in palettes]:
            del adata.uns[k]
        for k, v in palettes.items():
            if adata.uns.get(k) is not v:
                adata.uns[k] = v
