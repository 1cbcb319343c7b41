"""The classical baseline embedding, beside which every learned one is shown."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl._rng import keeps_torch_threads
from scdl._warnings import scanpy_scratch

if TYPE_CHECKING:
    from anndata import AnnData


@scanpy_scratch()
@keeps_torch_threads
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
        :func:`scdl.data.input_kind`), or fewer than 2 cells, or a size below 1.
    """
    import anndata
    import scanpy as sc
    from scipy import sparse

    from ._arguments import check_positive_int
    from ._lognorm import input_kind
    from ._rows import get_matrix, in_memory

    check_positive_int(n_comps, "n_comps")
    check_positive_int(n_top_genes, "n_top_genes")
    _check_cells(adata)
    _check_genes(adata.n_vars)
    kind, _ = input_kind(adata, layer)
    x = get_matrix(adata, layer)
    x = in_memory(x)
    # a private copy for scanpy, as a sparse matrix (its normalize_total fails on csr_array)
    x = sparse.csr_matrix(x, copy=True) if sparse.issparse(x) else np.array(x)
    if x.dtype == np.float16:  # scanpy's normalize_total sums in it: overflow above 65,504
        x = x.astype(np.float32)
    tmp = anndata.AnnData(X=x)
    tmp.var_names = adata.var_names
    if kind == "counts":
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    if tmp.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, subset=True)
    _check_values(tmp.X, "the data's genes")
    n_comps = max(1, min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=0)
    return tmp.obsm["X_pca"]


@scanpy_scratch()
@keeps_torch_threads
def genes_pca(
    adata: AnnData,
    genes: list[str],
    *,
    layer: str | None = None,
    n_comps: int = 50,
    kind: str | None = None,
) -> np.ndarray:
    """PCA of log1p(counts per 10,000) of ``genes`` alone, each cell normalised by its total
    over all its genes.

    The values of ``sc.pp.normalize_total`` + ``sc.pp.log1p`` on the whole matrix followed by
    the subset to ``genes`` and ``sc.pp.pca``, but only ``genes``' columns are ever copied: the
    matrix is read a block of rows at a time (:func:`scdl.data.row_blocks`; a backed AnnData's
    matrix from disk), each block's row totals taken and its columns of ``genes`` kept.
    Log-normalised input (:func:`scdl.data.input_kind`) is used as it is. ``adata`` is not
    modified.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts (or log-normalised counts) in ``X`` or ``layer``.
    genes
        Names in ``adata.var_names`` (unique there), e.g. the genes a model was trained on.
    layer
        Layer with the data; ``None`` uses ``adata.X``.
    n_comps
        Principal components (fewer when the data has fewer cells or genes).
    kind
        ``"counts"`` or ``"log1p"`` when the caller has already called
        :func:`scdl.data.input_kind` (saves a pass over the matrix); ``None``: checked here.

    Returns
    -------
    Array of shape (cells, ``n_comps``).

    Raises
    ------
    KeyError
        A gene of ``genes`` is not in ``adata.var_names``, or ``layer`` is missing.
    ValueError, TypeError
        The data are neither counts nor log-normalised counts (as
        :func:`scdl.data.input_kind`), or fewer than 2 cells, or ``n_comps`` below 1, or
        ``adata.var_names`` has duplicates, or every value of ``genes`` is 0.
    """
    import anndata
    import scanpy as sc
    from scipy import sparse

    from ._arguments import check_positive_int
    from ._lognorm import input_kind
    from ._rows import get_matrix, row_blocks

    check_positive_int(n_comps, "n_comps")
    _check_cells(adata)
    _check_genes(len(genes))

    if not adata.var_names.is_unique:  # a name of two columns matches neither
        raise ValueError(
            "genes_pca matches genes by name, but adata.var_names has duplicates. Call "
            "`adata.var_names_make_unique()` first."
        )
    cols = adata.var_names.get_indexer(genes)
    if (cols < 0).any():
        missing = [g for g, c in zip(genes, cols, strict=True) if c < 0][:5]
        raise KeyError(
            f"genes_pca: {missing} (of {int((cols < 0).sum())} genes) are not in "
            "adata.var_names. Pass genes the AnnData holds."
        )
    if kind is None:
        kind, _ = input_kind(adata, layer)
    parts, totals = [], []
    for block in row_blocks(get_matrix(adata, layer)):
        # a row block of a sparse or backed matrix is a copy, of a dense one a view; either
        # way its column subset below is new memory, normalised in place
        parts.append(sparse.csr_matrix(block[:, cols], dtype=np.float32))
        if kind == "counts":
            # float64 sums: a float16 matrix sums in float16, overflowing above 65,504 counts
            totals.append(np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())
    sub = sparse.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
    # canonical, as a sparse product would leave it: the PCA's sums then run in one order
    sub.sort_indices()
    if kind == "counts":
        total = np.concatenate(totals)
        scale = np.where(total > 0, 1e4 / np.maximum(total, 1e-12), 0.0).astype(np.float32)
        sub.data *= np.repeat(scale, np.diff(sub.indptr))
        np.log1p(sub.data, out=sub.data)
    _check_values(sub, f"the {len(genes)} genes")
    tmp = anndata.AnnData(X=sub)
    n_comps = max(1, min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=0)
    return tmp.obsm["X_pca"]


def _check_values(x, what: str) -> None:
    """ARPACK fails on a matrix of zeros (its starting vector is zero): said first."""
    from scipy import sparse

    if not (x.nnz if sparse.issparse(x) else np.count_nonzero(x)):
        raise ValueError(
            f"Every value of {what} is 0 in every cell: a PCA has nothing to find. Pass the "
            "layer that holds their counts."
        )


def _check_genes(n_genes: int) -> None:
    if n_genes < 2:
        raise ValueError(
            f"A PCA needs at least 2 genes; {n_genes} given. Pass more genes (the PCA of one "
            "gene is the gene itself)."
        )


def _check_cells(adata: AnnData) -> None:
    if adata.n_obs < 2:
        raise ValueError(
            f"A PCA needs at least 2 cells; adata holds {adata.n_obs}. Pass more cells."
        )
