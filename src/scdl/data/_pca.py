"""The classical baseline embedding, beside which every learned one is shown."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData


def unintegrated_pca(
    adata: AnnData, *, layer: str | None = None, n_comps: int = 50, n_top_genes: int = 2000
) -> np.ndarray:
    """The classical baseline: PCA of log-normalised counts of highly variable genes.

    Counts per 10,000 and ``log1p`` (scanpy), then the ``n_top_genes`` highly variable genes
    (when there are more genes), then ``n_comps`` principal components (fewer when the data
    has fewer cells or genes). Log-normalised input (log1p of counts normalised to a constant
    total, :func:`scdl.data.input_kind`, which says so once) is used as it is. Computed on a
    temporary object; ``adata`` is not modified.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts (or log-normalised counts) in ``X`` or
        ``layer``.
    layer
        Layer with the data; ``None`` uses ``adata.X``.
    n_comps
        Principal components.
    n_top_genes
        Highly variable genes kept before the PCA.

    Returns
    -------
    Array of shape (cells, ``n_comps``), e.g. for ``adata.obsm["X_pca"]``.

    Raises
    ------
    ValueError, KeyError, TypeError
        ``layer`` is missing, or the data are neither counts nor log-normalised counts (as
        :func:`scdl.data.input_kind`).
    """
    import anndata
    import scanpy as sc
    from scipy import sparse

    from ._checks import get_matrix
    from ._lognorm import input_kind

    kind, _ = input_kind(adata, layer)
    x = get_matrix(adata, layer)
    if not (sparse.issparse(x) or isinstance(x, np.ndarray)):  # a backed AnnData's matrix
        x = x[:]  # read into memory as stored (sparse stays sparse)
    # a private copy for scanpy, as a sparse matrix (its normalize_total fails on csr_array)
    x = sparse.csr_matrix(x, copy=True) if sparse.issparse(x) else np.array(x)
    tmp = anndata.AnnData(X=x)
    tmp.var_names = adata.var_names
    if kind == "counts":
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    if tmp.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, subset=True)
    n_comps = min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1)
    sc.pp.pca(tmp, n_comps=n_comps, random_state=0)
    return tmp.obsm["X_pca"]
