"""Features other than gene expression beside the genes (``var["feature_types"]``, as
``sc.read_10x_h5(gex_only=False)`` keeps antibodies, hashtags and peaks): scdl reads every
column of X as a gene, so it says where others are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from scdl._warnings import warn_user

if TYPE_CHECKING:
    from anndata import AnnData


#: 10x's name of gene features in ``var["feature_types"]`` (scanpy's ``read_10x_h5`` keeps
#: only these by default)
GENE_EXPRESSION = "Gene Expression"


def feature_types_of(adata: AnnData) -> pd.Series:
    """``var["feature_types"]`` as text, missing values left out (empty without the column)."""
    var = getattr(adata, "var", None)
    if var is None or "feature_types" not in var:
        return pd.Series(dtype=object)
    return var["feature_types"].dropna().astype(str)


def has_other_features(types: pd.Series) -> bool:
    """Whether ``types`` mark gene expression and something else beside it."""
    return bool((types == GENE_EXPRESSION).any() and (types != GENE_EXPRESSION).any())


def warn_other_features(adata: AnnData, *, among=None) -> None:
    """Say, in a warning, that ``var["feature_types"]`` marks features other than gene
    expression (antibodies, hashtags, peaks, as ``sc.read_10x_h5(gex_only=False)`` reads
    them): scdl reads every column of X as a gene (selection, normalisation, matching).
    Missing values are not counted; with ``among`` (a model's genes), only those features
    whose names it reads."""
    types = feature_types_of(adata)
    if not has_other_features(types):
        return
    other = types[types != GENE_EXPRESSION]
    if among is not None:
        other = other[other.index.isin(pd.Index(among))]
    other = other.value_counts()
    if len(other):
        warn_user(
            f"adata.var['feature_types'] marks {int(other.sum())} features other than "
            f"{GENE_EXPRESSION!r} ({other.to_dict()}); they are read as genes (gene selection, "
            "normalisation, matching by name). Pass gene expression only: "
            "`adata[:, adata.var['feature_types'] == 'Gene Expression'].copy()`.",
            UserWarning,
        )
