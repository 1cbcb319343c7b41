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

#: labels that are the text of a missing value, as `.astype(str)`, pandas and R write it
_NA_TEXT = frozenset({"nan", "na", "<na>", "none", "null", ""})


def check_reference_labels(adata: AnnData, labels_key: str, *, from_registry: bool) -> None:
    """Refuse labels of one type or holding ``"Unknown"``; warn for missing values written as
    text, numbers, ``"/"`` in a name and categories without cells. A model loaded onto new
    data (``from_registry``) is checked only as a categorical column."""
    labels = check_categorical(
        adata,
        labels_key,
        arg="labels_key",
        min_categories=1 if from_registry else 2,
        too_few="give the reference cells of at least two types: a classifier tells types apart.",
    )
    if not from_registry and (labels.astype(str) == UNKNOWN).any():
        raise ValueError(
            f"adata.obs[{labels_key!r}] holds the label {UNKNOWN!r}, the name the "
            "annotator gives cells unlike every reference type: the two could not be "
            "told apart. If these cells are unlabelled (scANVI's unlabeled_category), "
            f"leave them out of the reference: `ref = ref[ref.obs[{labels_key!r}] != "
            f"{UNKNOWN!r}].copy()`; if it is a cell type, rename it."
        )
    missing_text = sorted(
        {str(v) for v in labels.dropna().unique() if str(v).strip().lower() in _NA_TEXT}
    )
    if missing_text and not from_registry:
        n_cells = int(labels.astype(str).isin(missing_text).sum())
        warn_user(
            f"adata.obs[{labels_key!r}] labels {n_cells} cells {missing_text}, the text "
            "of a missing value (NaN turned into text by `.astype(str)` or a CSV): they "
            "are trained as a cell type of that name. If they are unlabelled, leave them "
            f"out: `ref = ref[~ref.obs[{labels_key!r}].astype(str).isin({missing_text!r})]"
            ".copy()`.",
            UserWarning,
        )
    values = labels.dropna().unique()
    numbers = [v for v in values if not isinstance(v, str)]
    if numbers and not from_registry:
        example = numbers[0].item() if hasattr(numbers[0], "item") else numbers[0]
        warn_user(
            f"adata.obs[{labels_key!r}] holds numbers (e.g. {example!r}): predictions "
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
            "types it has never seen (a probability column each, near 0). Drop them "
            f"before setup: `adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}]"
            ".cat.remove_unused_categories()`.",
            UserWarning,
        )
