"""A query's genes put into a reference's order, the genes it lacks padded with zeros."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scdl._warnings import warn_user

if TYPE_CHECKING:
    from anndata import AnnData

#: below this share of the reference's genes a mapped query is warned of (scvi-tools' level)
MIN_REFERENCE_GENES = 0.8


def pad_to_genes(adata: AnnData, genes: pd.Index) -> AnnData:
    """A new AnnData with ``genes`` in their order: the query's own columns where it has
    them, zeros for the others (also in every layer).

    As scvi-tools' ``prepare_query_anndata`` pads, except that the zeros are sparse and of
    each matrix's own dtype (scvi-tools makes them from a dense float64 block of every cell by
    every missing gene, and the query becomes float64), and ``uns``, ``obsm``, ``obsp`` and
    ``raw`` are kept. ``varm`` and ``varp`` are dropped (they have no values for the padded
    genes); in ``var`` the padded genes' values are missing (a boolean column becomes
    pandas' nullable ``"boolean"``, which ``.h5ad`` files hold). ``adata`` is not modified.

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
    present = genes.isin(adata.var_names)
    if not present.any():
        raise ValueError(
            f"The query holds none of the reference's {len(genes)} genes (query genes: "
            f"{list(map(str, adata.var_names[:5]))}, reference genes: "
            f"{list(map(str, genes[:5]))}): check that both name genes the same way (symbols "
            "or Ensembl IDs, the same species)."
        )
    if present.mean() < MIN_REFERENCE_GENES:
        warn_user(
            f"The query holds {int(present.sum())} of the reference's {len(genes)} genes "
            f"({present.mean():.0%}); the {int((~present).sum())} others are set to zero, "
            "which may place its cells less well.",
            UserWarning,
        )
    missing = genes[~present]

    def padded(x):
        zeros = sparse.csr_matrix((adata.n_obs, len(missing)), dtype=x.dtype)
        if sparse.issparse(x):
            return sparse.hstack([x, zeros], format="csr" if x.format != "csc" else "csc")
        return np.hstack([np.asarray(x), zeros.toarray()])  # dense stays dense: the user's form

    var = pd.concat([adata.var, pd.DataFrame(index=missing)])
    for column, dtype in adata.var.dtypes.items():  # True/False/NaN as object: h5ad refuses it
        if pd.api.types.is_bool_dtype(dtype):
            var[column] = var[column].astype("boolean")
    out = ad.AnnData(
        X=padded(adata.X) if adata.X is not None else None,
        obs=adata.obs.copy(),
        var=var,
        uns=adata.uns.copy(),
        obsm=dict(adata.obsm),
        obsp=dict(adata.obsp),
        # anndata 0.13 lists X among the layers, as layers[None]
        layers={k: padded(v) for k, v in adata.layers.items() if k is not None},
    )
    if adata.raw is not None:
        out.raw = adata.raw.to_adata()
    return out[:, genes].copy()
