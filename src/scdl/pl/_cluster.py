"""``scdl.pl.cluster_resolution``: the resolution scan behind ``tl.cluster(resolution="auto")``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ._utils import doc_show_save, finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_show_save
def cluster_resolution(
    adata: AnnData,
    *,
    key: str = "scdl_cluster",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """Plot the silhouette width and number of clusters of each scanned Leiden resolution, with the
    chosen one marked.

    Parameters
    ----------
    adata
        AnnData clustered by ``scdl.tl.cluster(adata, resolution="auto", key_added=key)``
        (reads ``uns[key]["scan"]``).
    key
        ``key_added`` of the cluster call.
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
    >>> scdl.tl.cluster(adata, resolution="auto")
    >>> scdl.pl.cluster_resolution(adata)
    """

    from matplotlib.ticker import MaxNLocator

    info = adata.uns.get(key)
    if not isinstance(info, dict) or "silhouette" not in info.get("scan", {}):
        raise KeyError(
            f"adata.uns[{key!r}]['scan'] with a silhouette scan not found. Run "
            f"`scdl.tl.cluster(adata, resolution='auto', key_added={key!r})` first."
        )
    scan = info["scan"]
    res = np.asarray(scan["resolution"], dtype=float)
    stab = np.asarray(scan["silhouette"], dtype=float)
    k = np.asarray(scan["n_clusters"])
    chosen = float(info["resolution"])

    own = ax is None
    fig, ax = new_axes(ax, figsize=(5, 3.5))
    ax.plot(res, stab, marker="o", color="C0")
    ax.set_xlabel("Leiden resolution")
    ax.set_ylabel("mean silhouette width", color="C0")
    ax.axvline(chosen, color="0.5", linestyle="--", linewidth=1)
    ax2 = ax.twinx()
    ax2.step(res, k, where="mid", color="C1")
    ax2.set_ylabel("clusters", color="C1")
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 clusters
    ax2.grid(False)  # a second, misaligned grid under scanpy's style
    for r, s, n in zip(res, stab, k, strict=True):
        ax.annotate(str(int(n)), (r, s), textcoords="offset points", xytext=(0, 5), fontsize=7)
    best = float(res[np.nanargmax(stab)]) if np.isfinite(stab).any() else chosen
    # the rule keeps a finer resolution near the best (see tl.cluster): say so, or the
    # dashed line reads as the silhouette's peak
    note = "" if np.isclose(best, chosen) else f"\n(best silhouette at {best:g}; see tl.cluster)"
    ax.set_title(f"Resolution scan ({key}): chosen {chosen:g}{note}")
    if own:
        fig.tight_layout()
    return finish(
        fig, show=show, save=save, return_fig=return_fig, default_name=f"cluster_resolution_{key}"
    )
