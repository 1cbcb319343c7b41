"""The matrix a step reads (``adata.X`` or a layer, checked), and reading it a block of rows at
a time (a backed AnnData's matrix is never read whole, and a check of a large in-memory one
never copies it whole), or whole where a step needs all of it."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

#: rows per block of a sparse matrix (10,000 cells hold far less than 10,000 x genes values)
ROW_BLOCK = 10_000

#: values per block of a dense matrix (~80 MB in float32): 10,000 rows of 14,000 genes in
#: float64 were 1.1 GB a block, and a check's copies of it several times that
DENSE_BLOCK_VALUES = 20_000_000


def row_blocks(x: Any, n_rows: int | None = None, *, size: int | None = None) -> Iterator[Any]:
    """Consecutive row slices ``x[start:stop]`` of at most ``size`` rows (default
    :data:`scdl.data.ROW_BLOCK`), covering the first ``n_rows`` rows (default: all of them).

    Works on anything sliced by rows: a dense or sparse in-memory matrix (each slice as
    ``x[a:b]`` gives it: a view of a dense array, a copy of a sparse one's rows) or a backed
    AnnData's on-disk matrix (each slice read from disk, a sparse one staying sparse). A
    dense matrix's default blocks hold at most 20 million values (``DENSE_BLOCK_VALUES``).
    """
    n_rows = x.shape[0] if n_rows is None else n_rows
    if size is None:
        # scipy's and anndata's backed sparse matrices carry a format; dense ones do not
        dense = not (sparse.issparse(x) or hasattr(x, "format")) and len(x.shape) == 2
        size = (
            max(1, min(ROW_BLOCK, DENSE_BLOCK_VALUES // max(1, x.shape[1]))) if dense else ROW_BLOCK
        )
    for start in range(0, n_rows, size):
        yield x[start : min(start + size, n_rows)]


def read_columns(x: Any, cols: np.ndarray, *, row_totals: bool = False) -> Any:
    """``x[:, cols]`` in memory: an in-memory matrix indexed directly; a backed AnnData's
    matrix read a block of rows at a time, keeping those columns of each (anndata reads a
    backed sparse matrix whole to index its columns). ``row_totals``: also each row's sum
    over every column (float64), taken in the same pass: ``(columns, totals)``."""

    def totals(m) -> np.ndarray:  # float64: float16 sums overflow above 65,504
        return np.asarray(m.sum(axis=1, dtype=np.float64)).ravel()

    if sparse.issparse(x) or isinstance(x, np.ndarray) or getattr(x, "format", None) == "csc":
        # the totals first: scipy's float64 sum copies the matrix, not to be held beside out
        sums = totals(x) if row_totals else None
        out = x[:, cols]  # a backed CSC matrix reads only those columns
        return (out, sums) if row_totals else out
    parts, sums = [], []
    for block in row_blocks(x):
        parts.append(block[:, cols])
        if row_totals:
            sums.append(totals(block))
    if any(sparse.issparse(p) for p in parts):
        out = sparse.vstack([sparse.csr_matrix(p) for p in parts], format="csr")
    else:
        out = np.vstack(parts)
    return (out, np.concatenate(sums)) if row_totals else out


def in_memory(x: Any) -> Any:
    """``x`` as an in-memory matrix: a backed AnnData's on-disk matrix read whole as it is
    stored (a sparse one stays sparse); an in-memory dense or sparse matrix as it is."""
    from scipy import sparse

    if sparse.issparse(x) or isinstance(x, np.ndarray):
        return x
    return x[:]


def get_matrix(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error if it is missing or a
    dask array of sparse blocks (which numpy's checks cannot read)."""
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "adata.X is empty (None). Put raw counts in adata.X or pass `layer=` naming "
                "the layer that holds them."
            )
        return _not_sparse_dask(adata.X, "adata.X")
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a string or None, got {type(layer).__name__}.")
    if layer not in adata.layers:
        # anndata >= 0.13 lists None (X itself) among the layers' keys
        avail = [k for k in adata.layers.keys() if isinstance(k, str)]
        hint = difflib.get_close_matches(layer, avail, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers (available: {avail or 'none'}).{extra} "
            "Pass `layer=None` to use adata.X."
        )
    return _not_sparse_dask(adata.layers[layer], f"adata.layers[{layer!r}]")


def _not_sparse_dask(x, where: str):
    """Refuse a dask array of sparse blocks (anndata's lazy readers give one for sparse data):
    its blocks reach numpy's checks as objects, failing with a message that names neither."""
    meta = getattr(x, "_meta", None)
    if hasattr(x, "compute") and meta is not None and sparse.issparse(meta):
        raise TypeError(
            f"{where} is a dask array of sparse blocks, which scdl does not read block by "
            f"block: load it into memory first, `{where} = {where}.compute()`, or open the "
            "file with `anndata.read_h5ad(path, backed='r')` to keep it on disk."
        )
    return x
