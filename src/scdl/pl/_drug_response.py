"""``scdl.pl.drug_response``: predicted drug sensitivity per group of cells."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from ._utils import finish

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData
    from matplotlib.figure import Figure


def _table(adata: AnnData, key: str, value: str) -> pd.DataFrame:
    import pandas as pd

    obsm_key = f"{key}_prob" if value == "probability" else key
    if obsm_key not in adata.obsm:
        raise KeyError(
            f"{obsm_key!r} is not in adata.obsm (keys: {list(adata.obsm)}). Run "
            f"`scdl.tl.drug_response(adata, model=..., key_added={key!r})` first, or pass the "
            "key it wrote as `key=`."
        )
    table = adata.obsm[obsm_key]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"adata.obsm[{obsm_key!r}] is not a DataFrame of cells x drugs.")
    return table


def _bulk_median(adata: AnnData, key: str, drugs: list[str]) -> np.ndarray:
    info = adata.uns.get(key, {})
    if "drugs" not in info:
        raise KeyError(
            f"adata.uns[{key!r}]['drugs'] not found (the bulk medians). Run "
            "`scdl.tl.drug_response` first, or plot value='probability'."
        )
    return info["drugs"].loc[drugs, "bulk_median"].to_numpy()


def drug_response(
    adata: AnnData,
    *,
    groupby: str,
    drugs: str | Sequence[str] | None = None,
    key: str = "scdl_drug",
    kind: Literal["heatmap", "violin"] = "heatmap",
    value: Literal["probability", "response"] = "probability",
    n_drugs: int = 20,
    show: bool | None = None,
    save: str | bool | None = None,
) -> Figure | None:
    """Predicted sensitivity to each drug per group of cells (cluster, sample, cell line).

    Parameters
    ----------
    adata
        AnnData processed by :func:`scdl.tl.drug_response` (reads ``obsm[key]``,
        ``obsm[f"{key}_prob"]`` and ``uns[key]``; writes nothing).
    groupby
        obs column of the groups (e.g. ``"leiden"``).
    drugs
        Drug name(s) to show; ``None``: the ``n_drugs`` drugs whose group means differ
        most.
    key
        ``key_added`` of :func:`scdl.tl.drug_response`.
    kind
        ``"heatmap"``: groups x drugs, the group mean; ``"violin"``: one panel per drug,
        the distribution over the cells of each group.
    value
        ``"probability"``: the sensitive probability (red = likely more sensitive than the
        median cell line); ``"response"``: the predicted response (e.g. ln IC50) minus the
        drug's median over the bulk lines in the heatmap (red = below the median, i.e. more
        sensitive), the response itself in the violins with the median as a line.
    n_drugs
        Drugs shown when ``drugs`` is ``None``.
    show, save
        As in scanpy: show the figure, and/or save it (``True`` or a path).

    Returns
    -------
    The Figure, unless it was shown.
    """
    import matplotlib.pyplot as plt

    from scdl.data import check_obs_key
    from scdl.data._drug_inputs import resolve_drugs

    if kind not in ("heatmap", "violin"):
        raise ValueError(f"kind={kind!r} is not one of 'heatmap', 'violin'.")
    if value not in ("probability", "response"):
        raise ValueError(f"value={value!r} is not one of 'probability', 'response'.")
    groups = check_obs_key(adata, groupby, arg="groupby").astype(str)
    table = _table(adata, key, value)
    means = table.groupby(groups.to_numpy(), observed=True).mean()
    if drugs is None:
        spread = means.max(axis=0) - means.min(axis=0)
        drugs = spread.sort_values(ascending=False, kind="stable").index[:n_drugs].tolist()
    else:
        drugs = resolve_drugs(drugs, list(table.columns))
    median = _bulk_median(adata, key, drugs) if value == "response" else None
    names = means.index.tolist()

    if kind == "heatmap":
        data = means[drugs].to_numpy()
        if value == "probability":
            cmap, vmin, vmax, label = "RdBu_r", 0.0, 1.0, "mean sensitive probability"
        else:
            data = data - median
            lim = float(np.nanmax(np.abs(data))) or 1.0
            cmap, vmin, vmax, label = "RdBu", -lim, lim, "mean prediction - bulk median"
        fig, ax = plt.subplots(
            figsize=(0.35 * len(drugs) + 2.5, 0.35 * len(names) + 1.8), layout="constrained"
        )
        im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(drugs)), drugs, rotation=90, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel(groupby)
        fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    else:
        ncols = min(4, len(drugs))
        nrows = int(np.ceil(len(drugs) / ncols))
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False, layout="constrained"
        )
        for i, drug in enumerate(drugs):
            ax = axes[i // ncols, i % ncols]
            vals = [table.loc[(groups == g).to_numpy(), drug].to_numpy() for g in names]
            ax.violinplot(vals, showmedians=True)
            ref = 0.5 if value == "probability" else median[i]
            ax.axhline(ref, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=7)
            ax.set_title(drug, fontsize=9)
            ax.set_ylabel("sensitive probability" if value == "probability" else "prediction")
        for j in range(len(drugs), nrows * ncols):
            axes[j // ncols, j % ncols].set_visible(False)
    return finish(fig, show=show, save=save, default_name=f"drug_response_{key}_{kind}")
