"""``scdl.pl.contrastive``: shared and salient spaces side by side, and the top salient genes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from scdl._rng import keeps_rng
from scdl.data import check_embedding, check_writable

from ._utils import (
    cached_umap,
    check_scanpy_options,
    color_keys,
    doc_show_save,
    figures_closed_on_failure,
    finish,
    umaps_kept_on_success,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData
    from matplotlib.figure import Figure


def _gene_table(adata: AnnData, key: str) -> pd.DataFrame:
    import pandas as pd

    info = _summary(adata, key)
    if "salient_genes" not in info:
        raise KeyError(
            f"adata.uns[{key!r}]['salient_genes'] not found. Run `scdl.tl.contrastive(adata, "
            f"key_added={key!r}, ...)` first, or pass n_genes=0 to plot the embeddings only."
        )
    return pd.DataFrame(info["salient_genes"])


@doc_show_save
@keeps_rng
def contrastive(
    adata: AnnData,
    *,
    key: str = "X_scdl_salient",
    shared_key: str | None = None,
    color: str | Sequence[str] | None = None,
    layer: str | None = None,
    palette: str | Sequence[str] | dict | None = None,
    n_genes: int = 20,
    n_neighbors: int = 15,
    random_state: int = 0,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """UMAPs of the shared and the salient space side by side, and the top salient genes.

    One row of panels per ``color`` key: the shared space of all cells on the left, the
    salient space of the target cells (those with a non-zero salient code) on the right, and
    a bar chart of the ``n_genes`` top salient genes on the far right. What separates cells
    in the shared space but not in the salient one (e.g. cell type) is shared with the
    background; what structures the salient space is specific to the target cells.

    UMAPs are computed the first time and cached in ``adata.obsm[f"{shared_key}_umap"]`` and
    ``adata.obsm[f"{key}_umap"]`` (NaN rows for non-target cells), with what each was
    computed from (``n_neighbors``, ``random_state``, a fingerprint of the space) in
    ``adata.uns`` under the same keys (``["params"]``), the only fields this function writes;
    later calls reuse them while the spaces and settings are unchanged.

    The figure has several panels per row, so unlike the one-panel plots it takes no ``ax``.

    Parameters
    ----------
    adata
        AnnData processed by :func:`scdl.tl.contrastive`.
    key, shared_key
        obsm keys of the salient and the shared space (``key_added`` and ``shared_key`` of
        :func:`scdl.tl.contrastive`); ``uns[key]`` holds the ranked genes and, with
        ``shared_key=None``, the shared space's key.
    color
        obs column(s) or gene(s) to colour by, e.g. ``["cell_type", "condition", "ISG15"]``.
        Default: the ``groupby`` column recorded in ``uns[key]``. A numeric colour has one
        scale over both panels.
    layer
        Layer a gene's values are read from; ``None`` uses ``adata.raw`` when it is set (as
        scanpy's ``use_raw`` default: every gene, log-normalised, not scaled), else
        ``adata.X``.
    palette
        Colours of a categorical ``color`` (as :func:`scanpy.pl.embedding` takes them), the
        same in both panels; ``None`` uses ``adata.uns[f"{color}_colors"]`` or scanpy's
        default.
    n_genes
        Top salient genes in the bar panel; ``0`` leaves the panel out.
    n_neighbors, random_state
        For the neighbour graphs and UMAPs (``random_state=None`` uses 0, as
        :func:`scdl.pl.embedding`).
    %(show_save)s

    %(returns_figure)s

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> scdl.tl.contrastive(adata, groupby="condition", background="ctrl")
    >>> scdl.pl.contrastive(adata, color="cell_type")
    """
    import matplotlib.pyplot as plt

    from scdl.data import check_positive_int

    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes != 0:
        check_positive_int(n_genes, "n_genes (or 0: the embeddings only)")
    if shared_key is None:
        params = _summary(adata, key).get("params", {})
        shared_key = params.get("shared_key", "X_scdl_shared")
    for k in (key, shared_key):
        if k not in adata.obsm:
            raise KeyError(
                f"{k!r} is not in adata.obsm (available: {list(adata.obsm)}). Run "
                "`scdl.tl.contrastive` first or pass the keys it wrote (key=, shared_key=)."
            )
    color = _colors(adata, key, color, layer)
    table = _gene_table(adata, key).head(n_genes) if n_genes else None

    # a cell without values (NaN rows, e.g. from an outer-join concat) is refused by name,
    # not read as a target cell
    salient = check_embedding(adata, key, purpose="pl.contrastive")
    check_embedding(adata, shared_key, purpose="pl.contrastive")
    is_target = np.any(salient != 0, axis=1)
    if not is_target.any():
        raise ValueError(f"adata.obsm[{key!r}] is zero for every cell: no target cells to plot.")
    if is_target.sum() < 4 or adata.n_obs < 4:  # as pl.embedding: UMAP's spectral start fails
        raise ValueError(
            f"{int(is_target.sum())} target cells (of {adata.n_obs}): a UMAP needs at least 4. "
            "Plot the shared space alone with "
            f"`scdl.pl.embedding(adata, basis={shared_key!r})`, or fit the model on more target "
            "cells."
        )
    check_scanpy_options(adata, {"palette": palette})  # read only when drawing
    check_writable(adata)  # the UMAPs are cached in it: a backed view failed after computing them
    shared_umap_key, salient_umap_key = f"{shared_key}_umap", f"{key}_umap"
    umap = {"n_neighbors": n_neighbors, "random_state": random_state}
    with umaps_kept_on_success(adata, shared_umap_key, salient_umap_key):
        cached_umap(
            adata, shared_umap_key, np.asarray(adata.obsm[shared_key], dtype=np.float32), **umap
        )
        cached_umap(
            adata, salient_umap_key, salient.astype(np.float32, copy=False), rows=is_target, **umap
        )

        import pandas as pd

        tmp = _plot_data(adata, color, shared_umap_key, salient_umap_key, layer)
        tmp_target = tmp[is_target].copy()
        longest = 0
        for c in tmp.obs.columns:
            if isinstance(tmp.obs[c].dtype, pd.CategoricalDtype):
                # the legend beside the salient panel serves both panels: every category,
                # the background's too (the subset had dropped those without target cells)
                cats = tmp.obs[c].cat.categories
                tmp_target.obs[c] = tmp_target.obs[c].cat.set_categories(cats)
                longest = max([longest, *(len(str(x)) for x in cats)])  # cats may be empty

        nrows = len(color)
        # columns: shared, salient, room for the legend (as wide as its longest name), gene bars
        legend_width = min(1.6, max(0.55, 0.065 * longest + 0.2))
        ratios = [1, 1, legend_width] + ([0.8] if table is not None else [])
        height = max(3.6 * nrows, 0.22 * (n_genes or 0) + 1.2)
        with figures_closed_on_failure():
            fig = plt.figure(figsize=(4.2 * sum(ratios), height))
            gs = fig.add_gridspec(nrows, len(ratios), width_ratios=ratios, wspace=0.3)
            for i, c in enumerate(color):
                _space_panels(fig, gs[i, 0], gs[i, 1], tmp, tmp_target, c, palette)
            if table is not None:
                _gene_bars(fig.add_subplot(gs[:, 3]), table)
        return finish(
            fig, show=show, save=save, return_fig=return_fig, default_name=f"contrastive_{key}"
        )


def _summary(adata: AnnData, key: str) -> dict:
    """``uns[key]`` as ``tl.contrastive`` writes it (a dict), or an empty one."""
    info = adata.uns.get(key, {})
    if not isinstance(info, dict):
        raise KeyError(
            f"adata.uns[{key!r}] is a {type(info).__name__}, not the summary "
            f"`scdl.tl.contrastive(adata, key_added={key!r}, ...)` writes."
        )
    return info


def _colors(adata: AnnData, key: str, color, layer: str | None) -> list:
    if color is None:
        params = _summary(adata, key).get("params", {})
        color = [params["groupby"]] if params.get("groupby") else [None]
    else:
        color = color_keys(color)
    if layer is not None and layer not in adata.layers:
        layers = [k for k in adata.layers.keys() if isinstance(k, str)]  # 0.13 lists X as None
        raise KeyError(f"layer={layer!r} is not in adata.layers (layers: {layers}).")
    names, where = _gene_names(adata, layer)
    for c in color:
        if c is not None and c not in adata.obs.columns and c not in names:
            raise KeyError(
                f"color={c!r} is neither a column of adata.obs (columns: "
                f"{list(adata.obs.columns)}) nor a gene in {where}."
            )
        if c is not None and c not in adata.obs.columns and (names == c).sum() > 1:
            raise ValueError(
                f"color={c!r} names {int((names == c).sum())} genes of {where}: make the "
                "names unique first (`var_names_make_unique()`)."
            )
    return color


def _gene_names(adata: AnnData, layer: str | None):
    """The gene names a colour is read from, and where: scanpy's default reads ``.raw``
    when it is set and no layer is given."""
    if layer is None and adata.raw is not None:
        return adata.raw.var_names, "adata.raw.var_names"
    return adata.var_names, "adata.var_names"


def _plot_data(
    adata: AnnData, color: list, shared_umap_key: str, salient_umap_key: str, layer
) -> AnnData:
    """A private AnnData to plot from: scanpy would otherwise store palettes in the user's uns.
    Genes become columns of its obs (one column each, read without densifying the matrix)."""
    import anndata
    import pandas as pd
    import scanpy as sc

    keys = [c for c in dict.fromkeys(color) if c is not None]
    # obs columns read directly: scanpy's obs_df refuses any duplicated var name, even when
    # only obs columns are asked for (genes are checked for duplicates in _colors)
    obs = adata.obs[[c for c in keys if c in adata.obs.columns]].copy()
    genes = [c for c in keys if c not in adata.obs.columns]
    if genes:
        names, _ = _gene_names(adata, layer)
        at = [int(np.flatnonzero(names == g)[0]) for g in genes]  # unique (_colors)
        if layer is None and adata.raw is not None:
            from scipy import sparse

            cols = adata.raw.X[:, at]  # a few columns: dense is small
            cols = cols.toarray() if sparse.issparse(cols) else np.asarray(cols)
            values = pd.DataFrame(cols, columns=genes)
        else:
            values = sc.get.obs_df(adata[:, at], keys=genes, layer=layer)
        for c in genes:
            obs[c] = values[c].to_numpy()
    obs = obs[keys]
    for c in obs.columns:
        if obs[c].dtype.kind not in "biuf":
            obs[c] = obs[c].astype("category")  # same categories, same colours in both panels
    tmp = anndata.AnnData(obs=obs)
    tmp.obsm["shared"] = np.asarray(adata.obsm[shared_umap_key])
    tmp.obsm["salient"] = np.asarray(adata.obsm[salient_umap_key])
    for c in obs.columns:
        if f"{c}_colors" in adata.uns:
            tmp.uns[f"{c}_colors"] = list(adata.uns[f"{c}_colors"])
    return tmp


def _space_panels(fig, cell_shared, cell_salient, tmp, tmp_target, c, palette) -> None:
    """The shared space of every cell and the salient space of the target cells, by ``c``."""
    import pandas as pd
    import scanpy as sc

    label = f" · {c}" if c is not None else ""
    scale = {}
    if c is not None and tmp.obs[c].dtype.kind in "biuf":  # one scale for both panels
        values = tmp.obs[c].to_numpy(dtype=float)
        scale = {"vmin": float(np.nanmin(values)), "vmax": float(np.nanmax(values))}
    categorical = c is not None and isinstance(tmp.obs[c].dtype, pd.CategoricalDtype)
    sc.pl.embedding(
        tmp,
        basis="shared",
        color=c,
        ax=fig.add_subplot(cell_shared),
        show=False,
        frameon=False,
        title="shared space" + label,
        legend_loc="none",
        palette=palette if categorical else None,  # stored in tmp's uns for the second panel
        **scale,
    )
    palette = None
    if categorical:
        # the target subset lacks some categories: keep each category's colour (scanpy reads
        # a stored palette longer than the categories, e.g. after merging some, by position)
        categories = tmp.obs[c].cat.categories
        colors = list(tmp.uns[f"{c}_colors"])[: len(categories)]
        palette = dict(zip(categories, colors, strict=True))
    sc.pl.embedding(
        tmp_target,
        basis="salient",
        color=c,
        ax=fig.add_subplot(cell_salient),
        show=False,
        frameon=False,
        title="salient space (target cells)" + label,
        palette=palette,
        legend_loc="right margin",
        **scale,
    )


def _gene_bars(ax, table: pd.DataFrame) -> None:
    from matplotlib.patches import Patch

    up = table["lfc_mean"].to_numpy() > 0
    y = np.arange(len(table))[::-1]
    ax.barh(y, table["score"].to_numpy(), color=np.where(up, "#c0392b", "#2e6da4"))
    ax.set_yticks(y, table["gene"].astype(str).tolist(), fontsize=8)
    ax.set_xlabel("mean |log2 FC|, with vs without salient code")
    ax.set_title(f"top {len(table)} salient genes")
    ax.legend(
        handles=[
            Patch(color="#c0392b", label="up in target"),
            Patch(color="#2e6da4", label="down in target"),
        ],
        frameon=False,
        fontsize=7,
        ncols=2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
