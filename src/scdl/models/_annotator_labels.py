"""The reference labels :class:`~scdl.models.CellTypeTransformer` trains on, checked before
registering: refused where a call could not be told apart from them, warned where the trained
model would name types unexpectedly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scdl._warnings import warn_user
from scdl.data import check_categorical, warn_slashed_names

from ._annotator_predict import UNKNOWN

if TYPE_CHECKING:
    from anndata import AnnData

#: labels that are the text of a missing value, as `.astype(str)`, pandas and R write it, or
#: that references write for cells without a type (scANVI's `unlabeled_category`)
_NA_TEXT = frozenset(
    {"nan", "na", "<na>", "none", "null", "", "n/a", "#n/a"}
    | {"unassigned", "unlabeled", "unlabelled", "unannotated", "unclassified", "undefined"}
    | {"?", "-", "--", ".", "unk", "ambiguous", "undetermined", "not assigned", "not_assigned"}
)
#: fewer reference cells than this make a type's thresholds and prototypes rest on noise
MIN_TYPE_CELLS = 10
#: above this share of the reference (and twice the next type's size) one type sets what a
#: query's make-up is compared with: on a query of other make-up, rarer types' cells find few
#: reference neighbours (benchmarks/README.md, "A reference dominated by one type")
DOMINANT_TYPE_SHARE = 0.5


def check_reference_labels(adata: AnnData, labels_key: str, *, from_registry: bool) -> None:
    """Refuse labels of one type or holding ``"Unknown"``; warn for missing values written as
    text, numbers, ``"/"`` in a name and categories without cells. A model loaded onto new
    data (``from_registry``) is checked only as a categorical column."""
    _refuse_missing_labels(adata, labels_key, from_registry=from_registry)
    labels = check_categorical(
        adata,
        labels_key,
        arg="labels_key",
        min_categories=1 if from_registry else 2,
        too_few="give the reference cells of at least two types: a classifier tells types apart.",
    )
    # any case or spacing: " Unknown" and "Unknown" look the same in a legend; a category
    # without cells counts too: scvi-tools registers every category, so the model would carry
    # a type of that name and tl.annotate could not write its calls beside it
    values = labels.cat.categories if hasattr(labels, "cat") else labels.dropna().unique()
    clash = [str(v) for v in values if str(v).strip().casefold() == UNKNOWN.casefold()]
    if not from_registry and clash:
        if not (labels.astype(str) == clash[0]).any():
            raise ValueError(
                f"adata.obs[{labels_key!r}] has the category {clash[0]!r} (no cell holds it), "
                "the name the annotator gives cells unlike every reference type: the model "
                "would carry a type of that name beside its own call. " + _drop_unused(labels_key)
            )
        raise ValueError(
            f"adata.obs[{labels_key!r}] holds the label {clash[0]!r}, the name the "
            "annotator gives cells unlike every reference type: the two could not be "
            "told apart. If these cells are unlabelled (scANVI's unlabeled_category), "
            f"leave them out of the reference: `ref = ref[ref.obs[{labels_key!r}] != "
            f"{clash[0]!r}].copy()`; if it is a cell type, rename it."
        )
    # a type named by no text cannot be a column of the probabilities tl.annotate writes
    # (anndata cannot write a DataFrame column named "" to .h5ad) nor an entry of a legend
    blank = [str(v) for v in values if not str(v).strip()]
    if not from_registry and blank:
        n_blank = int((labels.astype(str) == blank[0]).sum())
        if not n_blank:
            raise ValueError(
                f"adata.obs[{labels_key!r}] has the empty category {blank[0]!r} (no cell "
                "holds it): the model would carry a type without a name. "
                + _drop_unused(labels_key)
            )
        raise ValueError(
            f"adata.obs[{labels_key!r}] holds the empty label {blank[0]!r} "
            f"({n_blank} cells): a cell type needs a name "
            "(tl.annotate writes a probability column per type, and an .h5ad file cannot hold "
            "a column without one). If these cells are unlabelled, leave them out: `ref = "
            f"ref[ref.obs[{labels_key!r}].astype(str).str.strip() != ''].copy()`; if they are "
            "a type, name it."
        )
    missing_text = sorted(
        {str(v) for v in labels.dropna().unique() if str(v).strip().lower() in _NA_TEXT}
    )
    if missing_text and not from_registry:
        n_cells = int(labels.astype(str).isin(missing_text).sum())
        warn_user(
            f"adata.obs[{labels_key!r}] labels {n_cells} cells {missing_text}, the text "
            "of a missing value (NaN turned into text by `.astype(str)` or a CSV) or of no "
            "label: they are trained as a cell type of that name. If they are unlabelled, "
            f"leave them out: `ref = ref[~ref.obs[{labels_key!r}].astype(str)"
            f".isin({missing_text!r})].copy()`.",
            UserWarning,
        )
    values = labels.dropna().unique()
    numbers = [v for v in values if not isinstance(v, str)]
    if numbers and not from_registry:
        example = numbers[0].item() if hasattr(numbers[0], "item") else numbers[0]
        kind = "booleans" if isinstance(example, bool) else "numbers"
        warn_user(
            f"adata.obs[{labels_key!r}] holds {kind} (e.g. {example!r}): predictions "
            f"name cell types as text ({str(example)!r}, beside {UNKNOWN!r}), so compare "
            f"them with `adata.obs[{labels_key!r}].astype(str)`, or give the types "
            "names before setup.",
            UserWarning,
        )
    if not from_registry:
        warn_slashed_names(
            labels.dropna().unique(),
            what="Cell types",
            written="tl.annotate writes one probability column per type",
            fix=f"Rename them before training, e.g. `adata.obs[{labels_key!r}] = "
            f"adata.obs[{labels_key!r}].astype(str).str.replace('/', '|')`.",
        )
    unused = []
    if hasattr(labels, "cat") and not from_registry:
        seen = set(labels.dropna().unique())
        unused = [str(c) for c in labels.cat.categories if c not in seen]
    if unused:  # scvi-tools registers a categorical's categories, cells or not
        warn_user(
            f"adata.obs[{labels_key!r}] has categories without cells: {unused[:3]}"
            f"{' and more' if len(unused) > 3 else ''}. The model will carry them as "
            "types it has never seen (a probability column each, near 0). "
            + _drop_unused(labels_key),
            UserWarning,
        )
    if not from_registry:
        _warn_near_duplicates(labels, labels_key)
        _warn_small_types(labels, labels_key)
        _warn_dominant_type(labels, labels_key)


def _drop_unused(labels_key: str) -> str:
    """The line that drops a label column's categories without cells, before setup."""
    return (
        "Drop the unused categories before setup: "
        f"`adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].cat.remove_unused_categories()`."
    )


def _refuse_missing_labels(adata: AnnData, labels_key: str, *, from_registry: bool) -> None:
    """Cells without a label: the annotator has no unlabelled category (scANVI's), so they
    are left out of a reference rather than filled; a query's column is not read."""
    if from_registry or not isinstance(labels_key, str):
        # a query loaded onto a model: its labels are checked by check_query; a key of the
        # wrong type: named by check_categorical
        return
    col = adata.obs[labels_key] if labels_key in adata.obs else None
    if col is None or not col.isna().any():
        return  # a missing column is check_categorical's KeyError
    n = int(col.isna().sum())
    raise ValueError(
        f"adata.obs[{labels_key!r}] has {n} cells without a label (missing values). The "
        "annotator trains on labelled cells only (it has no unlabelled category, as scANVI's "
        "`unlabeled_category`), so leave them out of the reference: `ref = ref[ref.obs["
        f"{labels_key!r}].notna()].copy()`; then annotate them as a query with the trained "
        "model."
    )


def _warn_near_duplicates(labels, labels_key: str) -> None:
    """Labels that differ only in case or surrounding spaces ("B cells" and "B cells "), as
    spreadsheets make them, would be trained as two types."""
    groups: dict[str, list[str]] = {}
    for v in labels.dropna().unique():
        groups.setdefault(" ".join(str(v).split()).casefold(), []).append(str(v))
    same = [sorted(g) for g in groups.values() if len(g) > 1]
    if same:
        warn_user(
            f"adata.obs[{labels_key!r}] holds labels that differ only in case or spaces "
            f"({', '.join(' and '.join(map(repr, g)) for g in same[:3])}): they are trained "
            "as different cell types. If they are one type, write them one way first: spaces "
            f"with `adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].astype(str)"
            ".str.strip()`, case by renaming the variants (e.g. `.replace({'CD4 t cells': "
            "'CD4 T cells'})`).",
            UserWarning,
        )


def _warn_small_types(labels, labels_key: str) -> None:
    counts = labels.value_counts()
    small = counts[(counts > 0) & (counts < MIN_TYPE_CELLS)]
    if len(small):
        named = ", ".join(f"{k!s} ({v})" for k, v in small.sort_values().items())
        warn_user(
            f"adata.obs[{labels_key!r}] has cell types of fewer than {MIN_TYPE_CELLS} "
            f"reference cells: {named}. Each is learned from those cells alone, and what "
            "counts as like it (the Unknown call's thresholds) rests on them, which can "
            "turn cells of nearby types Unknown. Merge them into a broader type or leave "
            f"them out: `n = ref.obs[{labels_key!r}].value_counts(); ref = ref[ref.obs["
            f"{labels_key!r}].isin(n.index[n >= {MIN_TYPE_CELLS}])].copy()`.",
            UserWarning,
        )


def _warn_dominant_type(labels, labels_key: str) -> None:
    counts = labels.value_counts()
    share = counts.iloc[0] / counts.sum() if len(counts) > 1 else 0.0
    top, second = counts.index[0], int(counts.iloc[1]) if len(counts) > 1 else 0
    if share <= DOMINANT_TYPE_SHARE or counts.iloc[0] < 2 * second:  # not 51/49 of two types
        return
    warn_user(
        f"adata.obs[{labels_key!r}]: one type, {top!s}, holds {share:.0%} of the reference's "
        "cells. The Unknown call asks whether a query's cells find reference neighbours of "
        "their type; in a query whose make-up differs, cells of the rarer types find few, and "
        "known cells can be called Unknown. To balance the reference, cap each type at the "
        "second largest's size: `keep = ref.obs.sample(frac=1, random_state=0).groupby("
        f"{labels_key!r}, observed=True).head({second}).index; ref = ref[keep].copy()`.",
        UserWarning,
    )
