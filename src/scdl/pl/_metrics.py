"""``scdl.pl.integration_metrics``: batch correction, bio conservation and total per embedding."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ._utils import doc_show_save, finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_COLUMNS = ("Batch correction", "Bio conservation", "Total")


@doc_show_save
def integration_metrics(
    results: Any,
    *,
    key: str = "scdl_integration_metrics",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """Grouped bars of the scib-metrics summary scores per embedding.

    Parameters
    ----------
    results
        The DataFrame returned by :func:`scdl.tl.integration_metrics` (or by scib-metrics'
        ``Benchmarker.get_results``), or an AnnData holding it in ``uns[key]``.
    key
        uns key when ``results`` is an AnnData.
    ax
        Axes to draw on, in a layout of your own (pass ``show=False`` and show the layout
        when it is complete: shown, it is closed); the figure holding it is returned.
    %(show_save)s

    %(returns_figure)s

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> scdl.tl.integrate(adata, batch_key="sample")
    >>> scdl.tl.integration_metrics(adata, batch_key="sample", label_key="cell_type")
    >>> scdl.pl.integration_metrics(adata)
    """
    import pandas as pd
    from anndata import AnnData

    if isinstance(results, AnnData):
        if key not in results.uns:
            raise KeyError(f"adata.uns[{key!r}] not found; run scdl.tl.integration_metrics first.")
        results = results.uns[key]
    if not isinstance(results, pd.DataFrame):
        raise TypeError(
            f"results is a {type(results).__name__}; pass the DataFrame returned by "
            "scdl.tl.integration_metrics (or an AnnData holding it in uns[key])."
        )
    missing = [c for c in _COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(
            f"results lacks the column(s) {missing}; pass the DataFrame returned by "
            "scdl.tl.integration_metrics, which holds "
            f"{list(_COLUMNS)}."
        )
    # scib-metrics' own Benchmarker.get_results() holds a "Metric Type" row of words
    df = results.drop(index="Metric Type", errors="ignore").loc[:, list(_COLUMNS)].astype(float)
    n = len(df)
    if n == 0:
        raise ValueError("The results table has no rows: there is no embedding to draw.")
    width = 0.8 / n
    own = ax is None
    fig, ax = new_axes(ax, figsize=(1.6 + 1.4 * len(_COLUMNS) + 0.3 * n, 3.5))
    x = np.arange(len(_COLUMNS))
    colors = _palette(n)
    for i, (name, row) in enumerate(df.iterrows()):
        bars = ax.bar(
            x + (i - (n - 1) / 2) * width, row.to_numpy(), width, label=str(name), color=colors[i]
        )
        if n <= 5:  # beyond, the values overlap: the table holds them
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [c.replace(" ", "\n") for c in _COLUMNS])  # two words: no overlap
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (scib-metrics)")
    ax.legend(frameon=False, fontsize=8, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    if own:
        fig.tight_layout()
    return finish(
        fig, show=show, save=save, return_fig=return_fig, default_name="integration_metrics"
    )


def _palette(n: int) -> list:
    """``n`` distinct colours: matplotlib's 10 first, then scanpy's palettes of 20, 28 and
    102 (its categorical defaults), so no two embeddings share a colour."""
    from matplotlib import rcParams
    from scanpy.plotting import palettes

    for colors in (
        rcParams["axes.prop_cycle"].by_key()["color"],
        palettes.default_20,
        palettes.default_28,
        palettes.default_102,
    ):
        if n <= len(colors):
            return list(colors[:n])
    return [palettes.default_102[i % 102] for i in range(n)]
