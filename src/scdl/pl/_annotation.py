"""``scdl.pl.annotation`` and ``scdl.pl.attributions``: how sure the annotator is, and why."""

from __future__ import annotations

import os
import textwrap
from typing import TYPE_CHECKING

import numpy as np

from ._utils import MAX_NUMERIC_GROUPS, doc_show_save, finish, panel_axes, response_wording

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_show_save
def annotation(
    adata: AnnData,
    *,
    key: str = "scdl_cell_type",
    groupby: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """Confidence per predicted cell type and, where true labels exist, a confusion matrix.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`scdl.tl.annotate`.
    key
        ``key_added`` of that call.
    groupby
        obs column of known labels (e.g. an earlier manual annotation) to compare with: adds
        a confusion matrix (rows: known label, normalised to fractions; columns: predicted)
        titled with the share of labelled cells whose call has the label's name (when any
        known label is named as a predicted type); cells without a label (NaN) are left
        out of it.
    ax
        Axes to draw into (a layout of your own): one Axes, or two with ``groupby`` (the
        confidence panel, then the confusion matrix). ``None``: a new figure.
    %(show_save)s

    %(returns_figure)s

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc_heldout()
    >>> scdl.tl.annotate(adata)
    >>> scdl.pl.annotation(adata, groupby="cell_type")
    """
    import pandas as pd

    from scdl.data import check_categorical, check_obs_key

    if key not in adata.obs.columns:
        raise KeyError(
            f"adata.obs[{key!r}] not found. Run `scdl.tl.annotate(adata, key_added={key!r})` "
            "first, or pass the key it wrote as `key=`."
        )
    pred = check_obs_key(adata, key, arg="key")
    if f"{key}_confidence" not in adata.obs.columns:
        raise KeyError(
            f"adata.obs[{key + '_confidence'!r}] not found: the plot reads the confidence that "
            "`scdl.tl.annotate` writes beside its per-cell calls. Pass `key=` the `key_added` "
            "of that call (a majority-voting column has no confidence; show it with "
            "`sc.pl.embedding(adata, color=...)`)."
        )
    conf = check_obs_key(adata, f"{key}_confidence", arg="key", missing_ok=True)
    conf = conf.to_numpy(dtype=float)
    truth = None
    if groupby is not None:  # unlabelled cells (NaN) are left out of the matrix, as scanpy's
        truth = check_categorical(  # numbers: codes, not a per-cell measurement
            adata,
            groupby,
            arg="groupby",
            min_categories=0,  # an empty column is said below
            missing_ok=True,
            max_numbers=MAX_NUMERIC_GROUPS,
        )
        if truth.isna().all():
            raise ValueError(f"adata.obs[{groupby!r}] has no values: nothing to compare with.")
    pred = pred.astype("category")  # a column written back as strings is fine too
    types = [c for c in pred.cat.categories if (pred == c).any()]
    n_panels = 1 if truth is None else 2
    own_figure = ax is None
    n_rows = len(types) if truth is None else max(len(types), truth.nunique())
    # grows with the number of types (a fixed size squeezed 30 types into a line)
    height = max(4.2, 0.3 * n_rows + 1.8)
    fig, axes = panel_axes(
        ax, n_panels, figsize=(max(5.5, 0.3 * len(types) + 3.0) * n_panels, height)
    )
    ax = axes[0]
    cells = [conf[(pred == t).to_numpy()] for t in types]
    # cells without a count in the model's genes have no confidence (NaN): counted, not drawn
    data = [d[np.isfinite(d)] for d in cells]
    ax.boxplot(data, showfliers=False, **_horizontal())
    for i, d in enumerate(data, start=1):
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(d))
        ax.scatter(d, i + jitter, s=3, alpha=0.4, color="tab:blue")
    ax.set_yticks(range(1, len(types) + 1), [f"{t} ({len(d)})" for t, d in zip(types, cells)])
    ax.invert_yaxis()  # first type on top, as in the matrix beside it
    ax.set_xlabel("confidence (top probability)")
    ax.set_title("Predicted cell types")
    if truth is not None:
        ax = axes[1]
        labelled = truth.notna().to_numpy()
        known, called = truth[labelled].astype(str), pred[labelled].astype(str)
        # rows: the known types; columns: the same types in the same order (a known type
        # never predicted keeps its empty column), then types only predicted. A correct call
        # sits on the diagonal even when the label sets differ
        rows = _categories(truth)
        order = list(dict.fromkeys([*rows, *map(str, types)]))
        # as arrays: crosstab aligns Series on their index, which fails on duplicated obs
        # names (two samples' barcodes concatenated without index_unique)
        counts = pd.crosstab(
            known.to_numpy(), called.to_numpy(), rownames=[None], colnames=[None]
        ).reindex(index=rows, columns=order, fill_value=0)
        table = counts.div(counts.sum(axis=1), axis=0)
        im = ax.imshow(table.to_numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)  # scanpy's style draws a grid through every cell
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=60, ha="right")
        ax.set_yticks(range(table.shape[0]), [f"{t} ({n})" for t, n in counts.sum(axis=1).items()])
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            if v >= 0.05:
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 0.6 else "black",
                )
        ax.set_xlabel("predicted")
        ax.set_ylabel(groupby)
        shared = set(map(str, known.unique())) & set(map(str, types))
        if shared:
            agree = (known.to_numpy() == called.to_numpy()).mean()  # over the labelled cells
            ax.set_title(f"Agreement {agree:.1%}")
        else:  # e.g. "B cells" against "B": a rate of 0% would read as every call wrong
            ax.set_title(f"No {groupby} label is named as a predicted type: compare by row")
        fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of row")
    if own_figure:  # a user's layout is theirs to arrange
        fig.tight_layout()
    return finish(
        fig, show=show, save=save, return_fig=return_fig, default_name=f"annotation_{key}"
    )


@doc_show_save
def attributions(
    attributions: pd.DataFrame,
    *,
    n_top: int = 10,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """Top genes driving each cell type's prediction, or a drug's predicted response (bar
    chart per type or drug; bars of positive attributions orange, negative purple).

    Parameters
    ----------
    attributions
        Output of :meth:`scdl.models.CellTypeTransformer.gene_attributions` or
        :meth:`scdl.models.DrugResponseModel.gene_attributions` (columns ``label``, ``gene``,
        ``attribution``, ``rank``).
    n_top
        Genes per panel: the ``n_top`` best ranked (for a cell type the most positive, for a
        drug the largest in size).
    ncols
        Panels per row (of a new figure).
    ax
        Axes to draw into (a layout of your own): one per label of ``attributions``, in their
        order (one Axes for one label). ``None``: a new figure.
    %(show_save)s

    %(returns_figure)s

    Examples
    --------
    >>> import scdl
    >>> model = scdl.pretrained.load("pbmc_kang2018")
    >>> adata = scdl.datasets.kang_pbmc_heldout()
    >>> scdl.pl.attributions(model.gene_attributions(adata), n_top=8)
    """
    import matplotlib.pyplot as plt

    from scdl.data import check_positive_int

    check_positive_int(n_top, "n_top")
    check_positive_int(ncols, "ncols")
    need = {"label", "gene", "attribution"}
    if not need.issubset(getattr(attributions, "columns", [])):
        raise ValueError(
            f"`attributions` must be the DataFrame of model.gene_attributions() with columns "
            f"{sorted(need)}."
        )
    labels = list(dict.fromkeys(attributions["label"]))
    if not labels:
        raise ValueError(
            "`attributions` has no rows: gene_attributions() found no cell of the requested "
            "types. Pass cells that are called as those types, or another `label=`."
        )
    own_figure = ax is None
    if own_figure:
        ncols = min(ncols, len(labels))
        nrows = int(np.ceil(len(labels) / ncols))
        fig, grid = plt.subplots(
            nrows, ncols, figsize=(3.2 * ncols, 0.28 * n_top * nrows + 1.2), squeeze=False
        )
        axes = list(grid.ravel())
    else:
        fig, axes = panel_axes(ax, len(labels))
    for ax, label in zip(axes, labels):
        part = attributions[attributions["label"] == label]
        if "rank" in part.columns:
            part = part.nsmallest(n_top, "rank")
        else:
            part = part.nlargest(n_top, "attribution")
        # orange / purple: told apart with any colour vision (red / green are not)
        colors = np.where(part["attribution"].to_numpy() >= 0, "#e66101", "#5e3c99")
        ax.barh(part["gene"][::-1], part["attribution"][::-1], color=colors[::-1])
        ax.set_title(textwrap.fill(str(label), 24), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[len(labels) :]:
        ax.set_axis_off()
    drug = "mean_input" in attributions.columns  # DrugResponseModel.gene_attributions
    response, high = response_wording(attributions.attrs)
    up, down = ("sensitive", "resistant") if high else ("resistant", "sensitive")
    if not own_figure:  # the user's figure holds other panels: each of ours says it alone
        for ax in axes:
            ax.set_xlabel(f"contribution to {response}" if drug else "contribution to the logit")
        return finish(fig, show=show, save=save, return_fig=return_fig, default_name="attributions")
    if drug:
        fig.supxlabel(
            f"mean contribution to the predicted {response} (integrated gradients, from a "
            f"typical line)\n< 0 (purple): towards {down}; > 0 (orange): towards {up}"
        )
    else:
        fig.supxlabel(
            "mean contribution to the type's logit (integrated gradients)\n"
            "> 0 (orange): towards the type; < 0 (purple): away from it"
        )
    fig.tight_layout()
    return finish(fig, show=show, save=save, return_fig=return_fig, default_name="attributions")


def _horizontal() -> dict:
    """``boxplot``'s horizontal option: matplotlib 3.10 added ``orientation`` and deprecated
    ``vert`` (removed in 3.13)."""
    import matplotlib

    version = tuple(int(v) for v in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if version >= (3, 10) else {"vert": False}


def _categories(values) -> list[str]:
    """The values' categories in their order (a categorical's own), as strings."""
    values = values.astype("category")
    return [str(c) for c in values.cat.categories if (values == c).any()]
