"""The private AnnData a ``tl`` function trains on, so the user's object stays clean."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl.data import get_matrix, read_columns, warn_empty_cells

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData


def unique_gene_names(adata: AnnData) -> pd.Index:
    """``adata.var_names``, duplicates suffixed ``-1``, ``-2``, ... as
    ``var_names_make_unique`` does, for the tool's own AnnData (the user's is not renamed)."""
    import warnings

    from anndata.utils import make_index_unique

    if adata.var_names.is_unique:
        return adata.var_names
    with warnings.catch_warnings():  # check_unique_var_names has said it
        warnings.simplefilter("ignore", UserWarning)
        return make_index_unique(adata.var_names.copy())


def training_adata(
    adata: AnnData,
    genes: pd.Index,
    *,
    layer: str | None,
    obs_keys: Sequence[str],
) -> AnnData:
    """Counts of ``genes`` (float32) with only ``obs_keys``: scvi-tools' registration then
    writes its ``_scvi_*`` columns here, not into the user's AnnData.

    Cells without counts in ``genes`` (empty cells, or cells whose few counts lie in other
    genes) are kept, with one warning.
    """
    import anndata
    from scipy import sparse

    # a backed matrix is read a block of rows at a time: its column index read it whole
    x = read_columns(get_matrix(adata, layer), unique_gene_names(adata).get_indexer(genes))
    if isinstance(x, sparse.sparray) or (sparse.issparse(x) and x.format != "csr"):
        # scvi-tools registers scipy's sparse matrices only, and minibatches gather rows:
        # from CSC ~40x slower (this is the tool's own copy, so the user cannot convert it)
        x = sparse.csr_matrix(x)
    out = anndata.AnnData(
        X=x,
        obs=adata.obs[list(dict.fromkeys(obs_keys))].copy(),
    )
    out.obs_names = adata.obs_names
    out.var_names = genes
    if out.X.dtype != np.float32:
        out.X = out.X.astype(np.float32)
    n_empty = int(np.count_nonzero(np.asarray(out.X.sum(axis=1)).ravel() == 0))
    if n_empty:
        warn_empty_cells(
            n_empty,
            out.n_obs,
            f"in the {len(genes)} genes trained on (`n_top_genes` sets how many)",
            # they hold counts in other genes: a filter on all genes drops none of them
            fix="Raise `n_top_genes`, or pass `n_top_genes=None` to train on every expressed "
            "gene (then only cells without any count stay empty, and "
            "`sc.pp.filter_cells(adata, min_counts=1)` drops them).",
        )
    return out
