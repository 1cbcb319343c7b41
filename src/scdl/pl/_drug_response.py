"""``scdl.pl.drug_response``: predicted drug sensitivity per group of cells."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from scdl._warnings import warn_user

from ._utils import MAX_NUMERIC_GROUPS, doc_show_save, finish, panel_axes, response_wording

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _table(adata: AnnData, key: str, value: str) -> pd.DataFrame:
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
    info = adata.uns.get(key)
    listed = info.get("drugs") if isinstance(info, dict) else None
    if isinstance(listed, pd.DataFrame) and set(map(str, listed.index)) != set(map(str, table)):
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] does not hold the drugs adata.uns[{key!r}] lists (it was "
            "overwritten since, e.g. by a call with another key_added): run "
            f"`scdl.tl.drug_response(adata, model=..., key_added={key!r})` again."
        )
    return table


def _predicted(key: str) -> tuple[str, str]:
    """How :func:`resolve_drugs` names the drugs a ``tl.drug_response`` call predicted."""
    return (
        f"{key!r} call's predicted",
        f"Predict it: `scdl.tl.drug_response(adata, model=..., drugs=[...], key_added={key!r})`.",
    )


def _response_scale(adata: AnnData, key: str, drugs: list[str]) -> tuple[np.ndarray, str, bool]:
    """The drugs' bulk medians, the response's name, and whether higher means sensitive."""
    info = adata.uns.get(key, {})
    # "bulk": the model's columns alone, which a concat with uns_merge="same" keeps
    table = next((info[k] for k in ("bulk", "drugs") if k in info), None)
    if table is None:
        raise KeyError(
            f"adata.uns[{key!r}]['bulk'] not found (the bulk medians). Run "
            "`scdl.tl.drug_response` first; after `anndata.concat`, concatenate with "
            "uns_merge='same' (parts predicted by one model share it); or plot "
            "value='probability'."
        )
    name, high = response_wording(info.get("params", {}))
    return table.loc[drugs, "bulk_median"].to_numpy(), name, high


@doc_show_save
def drug_response(
    adata: AnnData,
    *,
    groupby: str | None = None,
    drugs: str | Sequence[str] | pd.Index | np.ndarray | None = None,
    key: str = "scdl_drug",
    kind: Literal["heatmap", "violin", "roc"] = "heatmap",
    labels: str | None = None,
    value: Literal["probability", "response"] = "probability",
    n_drugs: int = 20,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """Predicted sensitivity to each drug per group of cells (cluster, sample, cell line).

    Parameters
    ----------
    adata
        AnnData processed by :func:`scdl.tl.drug_response` (reads ``obsm[key]``,
        ``obsm[f"{key}_prob"]`` and ``uns[key]``; writes nothing).
    groupby
        obs column of the groups (e.g. ``"leiden"``); needed for the heatmap and violins.
        Cells without a group (NaN) are left out.
    drugs
        Drug name(s) to show; ``None``: the ``n_drugs`` drugs whose group means differ
        most (for ``kind="roc"``: whose mean sensitive probability differs most between the
        cells ``labels`` marks sensitive and the others).
    key
        ``key_added`` of :func:`scdl.tl.drug_response`.
    kind
        ``"heatmap"``: groups x drugs, the group mean; ``"violin"``: one panel per drug,
        the distribution over the cells of each group; ``"roc"``: against per-cell truth
        (``labels``), the ROC curve of the sensitive probability for each drug, AUROC in the
        legend.
    labels
        For ``kind="roc"``: name of an obs column of per-cell truth, boolean or 0/1, True (1)
        marking the sensitive cells (e.g. after ``adata.obs["sensitive"] =
        ~adata.obs["survived_treatment"]``, ``labels="sensitive"``); ``kind="roc"`` is
        chosen when it is given.
    value
        ``"probability"``: the sensitive probability (red = likely more sensitive than the
        median cell line); ``"response"``: the predicted response (e.g. ln IC50) minus the
        drug's median over the bulk lines in the heatmap (red = more sensitive: below the
        median, or above it for a response where higher means sensitive), the response
        itself in the violins with the median as a line. The ROC
        always scores the sensitive probability.
    n_drugs
        Drugs shown when ``drugs`` is ``None``.
    ax
        Axes to draw into (a layout of your own): one Axes for the heatmap or the ROC, one
        per drug for the violins. ``None``: a new figure.
    %(show_save)s

    %(returns_figure)s

    Examples
    --------
    After :func:`scdl.tl.drug_response` (whose example trains the model on GDSC):

    >>> import scdl
    >>> scdl.tl.drug_response(adata, model=model, drugs=["Gefitinib", "Erlotinib"])
    >>> scdl.pl.drug_response(adata, groupby="cell_line")  # any obs column of groups
    >>> scdl.pl.drug_response(adata, groupby="cell_line", kind="violin", value="response")
    """

    from scdl.data import check_categorical, check_positive_int, resolve_drugs

    check_positive_int(n_drugs, "n_drugs")

    if labels is not None:
        kind = "roc"
    if kind not in ("heatmap", "violin", "roc"):
        raise ValueError(f"kind={kind!r} is not one of 'heatmap', 'violin', 'roc'.")
    if value not in ("probability", "response"):
        raise ValueError(f"value={value!r} is not one of 'probability', 'response'.")
    if kind == "roc":
        return _roc(
            adata, labels, drugs, key, n_drugs, ax=ax, show=show, save=save, return_fig=return_fig
        )
    if groupby is None:
        raise ValueError(f"kind={kind!r} needs `groupby`, an obs column of groups of cells.")
    # cells without a group are left out, as pl.annotation does
    column = check_categorical(  # numbers: codes, not a per-cell measurement
        adata,
        groupby,
        arg="groupby",
        min_categories=0,  # an empty column: no groups to draw
        missing_ok=True,
        max_numbers=MAX_NUMERIC_GROUPS,
    ).astype("category")
    groups = column.astype(str)
    table = _table(adata, key, value)
    # in the column's category order (as scanpy's plots), not sorted as strings (0, 1, 10, 2)
    order = [str(c) for c in column.cat.categories if (column == c).any()]
    means = table.groupby(groups.to_numpy(), observed=True).mean().reindex(order)
    # cells with predictions: an outer-join concat adds rows of NaN, which the means skip
    sizes = groups[table.notna().any(axis=1).to_numpy()].value_counts().reindex(order, fill_value=0)
    if drugs is None:
        spread = means.max(axis=0) - means.min(axis=0)
        drugs = spread.sort_values(ascending=False, kind="stable").index[:n_drugs].tolist()
    else:
        drugs = resolve_drugs(drugs, list(table.columns), source=_predicted(key))
    scale = _response_scale(adata, key, drugs) if value == "response" else None
    if kind == "heatmap":
        fig = _heatmap(means[drugs], scale, value, groupby, sizes, ax)
    else:
        fig = _violins(table, groups, means.index.tolist(), drugs, scale, value, ax)
    return finish(
        fig, show=show, save=save, return_fig=return_fig, default_name=f"drug_response_{key}_{kind}"
    )


def _heatmap(means: pd.DataFrame, scale, value: str, groupby: str, sizes: pd.Series, ax=None):
    """Groups x drugs: mean sensitive probability, or mean prediction minus the bulk median."""
    import matplotlib.pyplot as plt

    drugs, names = means.columns.tolist(), means.index.tolist()
    data = means.to_numpy()
    if value == "probability":
        cmap, vmin, vmax = "RdBu_r", 0.0, 1.0
        # calibrated on bulk lines: on cells a score (the class notes)
        label = "mean sensitive score (P < median line on bulk)\n(red: more sensitive)"
    else:
        median, name, high = scale
        data = data - median
        lim = float(np.nanmax(np.abs(data))) or 1.0
        cmap, vmin, vmax = "RdBu_r" if high else "RdBu", -lim, lim
        label = f"mean predicted {name} - bulk median\n(red: more sensitive)"
    if ax is None:
        fig, ax = plt.subplots(
            figsize=(0.35 * len(drugs) + 2.5, 0.35 * len(names) + 1.8), layout="constrained"
        )
    else:
        fig, (ax,) = panel_axes(ax, 1)
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(drugs)), drugs, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), [f"{g} (n={sizes[g]})" for g in names], fontsize=8)
    ax.set_ylabel(groupby)
    ax.grid(False)  # scanpy's style draws a grid through every cell
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    return fig


def _violins(table, groups, names: list, drugs: list, scale, value: str, ax=None):
    """One panel per drug: the per-cell values of each group, with the reference line."""
    import matplotlib.pyplot as plt

    ncols = min(4, len(drugs))
    nrows = int(np.ceil(len(drugs) / ncols))
    if ax is None:
        fig, grid = plt.subplots(
            nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False, layout="constrained"
        )
        axes = list(grid.ravel())
    else:  # the user's axes: each panel labels its own y axis
        fig, axes = panel_axes(ax, len(drugs))
        ncols = 1
    for i, drug in enumerate(drugs):
        ax = axes[i]
        vals = [table.loc[(groups == g).to_numpy(), drug].to_numpy() for g in names]
        ax.violinplot(vals, showmedians=True)
        ref = 0.5 if value == "probability" else scale[0][i]
        ax.axhline(
            ref,
            color="grey",
            lw=0.8,
            ls="--",
            label="0.5" if value == "probability" else "median line",
        )
        long = max(len(str(g)) for g in names) > 6 or len(names) > 6
        ax.set_xticks(range(1, len(names) + 1), names, rotation=90 if long else 0, fontsize=8)
        ax.set_title(drug, fontsize=9)
        if value == "probability":  # one scale for every panel
            ax.set_ylim(0, 1)
        if i % ncols == 0:
            ax.set_ylabel(
                "P(more sensitive than\nthe median line)"
                if value == "probability"
                else f"predicted {scale[1]}\n({'higher' if scale[2] else 'lower'}: more sensitive)"
            )
    axes[0].legend(fontsize=7, loc="best")
    for extra in axes[len(drugs) :]:
        extra.set_visible(False)
    return fig


def _roc(adata, labels, drugs, key, n_drugs, *, ax, show, save, return_fig):
    """ROC of the sensitive probability against per-cell truth, one curve per drug."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    from scdl.data import check_obs_key, resolve_drugs

    if labels is None:
        raise ValueError("kind='roc' needs `labels`, an obs column of per-cell truth (bool).")
    truth = check_obs_key(adata, labels, arg="labels")
    values = set(pd.unique(truth.dropna()).tolist()) if truth.notna().any() else set()
    if truth.isna().any() or not values <= {0, 1} or len(values) != 2:
        raise ValueError(
            f"obs[{labels!r}] must hold both True (1, sensitive) and False (0) and no missing "
            f"values, got {sorted(map(str, values))[:5]}; e.g. `adata.obs['sensitive'] = "
            "adata.obs['condition'] == 'untreated'`."
        )
    truth = truth.astype(bool).to_numpy()
    table = _table(adata, key, "probability")
    predicted = table.notna().all(axis=1).to_numpy()
    if not predicted.all():  # rows of NaN, e.g. cells added by an outer-join concat
        warn_user(
            f"{int((~predicted).sum())} of {len(predicted)} cells have no predictions in "
            f"adata.obsm[{key + '_prob'!r}] (NaN, e.g. cells added by an outer-join concat): "
            "they are left out of the ROC.",
            UserWarning,
        )
        truth, table = truth[predicted], table[predicted]
        if len(set(truth.tolist())) != 2:
            raise ValueError(
                f"The cells with predictions hold only one value of obs[{labels!r}]: an ROC "
                "needs sensitive and non-sensitive cells."
            )
    if drugs is None:  # as for the groups: the drugs whose means differ most
        gap = (table[truth].mean() - table[~truth].mean()).abs()
        drugs = gap.sort_values(ascending=False, kind="stable").index[:n_drugs].tolist()
    else:
        drugs = resolve_drugs(drugs, table.columns, source=_predicted(key))
    auroc = {d: roc_auc_score(truth, table[d].to_numpy()) for d in drugs}
    drugs = sorted(drugs, key=lambda d: -auroc[d])  # the legend reads best first
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 4.0), layout="constrained")
    else:
        fig, (ax,) = panel_axes(ax, 1)
    for drug in drugs:
        fpr, tpr, _ = roc_curve(truth, table[drug].to_numpy())
        ax.plot(fpr, tpr, lw=1.2, label=f"{drug} (AUROC {auroc[drug]:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({labels})")
    if len(drugs) > 6:  # beside the axes: inside, a long legend hid the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7, loc="lower right")
    return finish(
        fig, show=show, save=save, return_fig=return_fig, default_name=f"drug_response_{key}_roc"
    )
