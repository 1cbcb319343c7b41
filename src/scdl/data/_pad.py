"""A query's genes put into a reference's order, the genes it lacks padded with zeros."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scdl._warnings import warn_user

from ._genes import LOW_GENE_OVERLAP, gene_columns

if TYPE_CHECKING:
    from anndata import AnnData


def pad_to_genes(adata: AnnData, genes: pd.Index) -> AnnData:
    """A new AnnData with ``genes`` in their order: the query's own columns where it has
    them, zeros for the others (also in every layer).

    As scvi-tools' ``prepare_query_anndata`` pads, except that each matrix keeps its own
    dtype and format (scvi-tools makes the zeros from a dense float64 block of every cell by
    every missing gene, and the query becomes float64), and ``uns``, ``obsm``, ``obsp`` and
    ``raw`` are kept. ``varm`` and ``varp`` are dropped (they have no values for the padded
    genes); in ``var`` the padded genes' values are missing (a boolean column becomes
    pandas' nullable ``"boolean"``, which ``.h5ad`` files hold). Genes are matched as the
    models match them (:func:`scdl.data.gene_columns`); below ``LOW_GENE_OVERLAP`` of
    ``genes`` in the query, a warning says so. ``adata`` is not modified.

    Parameters
    ----------
    adata
        The query, with unique gene names.
    genes
        The reference's genes, in its order.

    Returns
    -------
    The padded copy, ``len(genes)`` genes.

    Raises
    ------
    ValueError
        The query holds none of ``genes``.
    """
    import anndata as ad

    genes = pd.Index(genes)
    # the models' matching: with none found, its error names an identifier or species fix
    col, present = gene_columns(adata, genes, min_overlap=0.0, what="reference", lower_hint="")
    if present.mean() < LOW_GENE_OVERLAP:
        warn_user(
            f"The query holds {int(present.sum())} of the reference's {len(genes)} genes "
            f"({present.mean():.0%}); the {int((~present).sum())} others are set to zero, "
            "which may place its cells less well.",
            UserWarning,
        )
    # one 0/1 matrix takes each gene the query holds to its reference column: padding and
    # ordering in one product, one new copy of each matrix, in its own dtype and format
    sel = sparse.csr_matrix(
        (np.ones(int(present.sum())), (col[present], np.flatnonzero(present))),
        shape=(adata.n_vars, len(genes)),
    )

    def moved(x):
        out = x @ sel.astype(x.dtype)
        return out.asformat(x.format) if sparse.issparse(x) else np.asarray(out)

    var = adata.var.iloc[col[present]].set_axis(genes[present]).reindex(genes)
    for column, dtype in adata.var.dtypes.items():  # True/False/NaN as object: h5ad refuses it
        if pd.api.types.is_bool_dtype(dtype):
            var[column] = var[column].astype("boolean")
    out = ad.AnnData(
        X=None if adata.X is None else moved(adata.X),
        obs=adata.obs.copy(),
        var=var,
        uns=copy.deepcopy(dict(adata.uns)),
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        obsp={k: v.copy() for k, v in adata.obsp.items()},
        # anndata 0.13 lists X among the layers, as layers[None]
        layers={k: moved(v) for k, v in adata.layers.items() if k is not None},
    )
    if adata.raw is not None:  # Raw copies the matrix once
        out.raw = ad.AnnData(X=adata.raw.X, var=adata.raw.var, obs=adata.obs[[]])
    return out
