"""log1p of counts per 10,000 on sparse matrices, without densifying them."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def log_normalize_counts(x, dtype=np.float64, *, share_index: bool = False) -> sparse.csr_matrix:
    """log1p(counts per 10k) of a sparse or dense count block, as CSR of ``dtype``.

    Computed in float64 (each count times ``1e4 / its cell's total``), then cast; cells with
    no counts stay zero. Works on one float64 copy of the values (the indices are shared
    until the result is built): about twice the memory of ``x`` beside it, not 3.5 times.
    """
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        if not x.has_canonical_format:  # duplicate entries: summed, as a product would
            x = x.copy()
            x.sum_duplicates()
        data = x.data.astype(np.float64)
        x64 = sparse.csr_matrix((data, x.indices, x.indptr), shape=x.shape)
    else:
        x64 = sparse.csr_matrix(np.asarray(x), dtype=np.float64)
        data = x64.data
    scale = 1e4 / np.maximum(np.asarray(x64.sum(1)).ravel(), 1.0)
    data *= np.repeat(scale, np.diff(x64.indptr))
    np.log1p(data, out=data)
    values = data if dtype == np.float64 else data.astype(dtype)
    if share_index and sparse.issparse(x) and values.all():  # no zero to eliminate
        return sparse.csr_matrix((values, x64.indices, x64.indptr), shape=x64.shape)
    out = sparse.csr_matrix((values, x64.indices.copy(), x64.indptr.copy()), shape=x64.shape)
    out.eliminate_zeros()  # stored zeros of the counts, as the product with a diagonal drops
    return out
