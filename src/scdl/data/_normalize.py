"""log1p of counts per 10,000 on sparse matrices, without densifying them."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def log_normalize_counts(x, dtype=np.float64) -> sparse.csr_matrix:
    """log1p(counts per 10k) of a sparse or dense count block, as CSR of ``dtype``.

    Computed in float64 (each count times ``1e4 / its cell's total``), then cast; cells with
    no counts stay zero.
    """
    x = sparse.csr_matrix(x, dtype=np.float64)
    scale = 1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1.0)
    out = sparse.diags(scale) @ x
    out.data = np.log1p(out.data)
    return out if dtype == np.float64 else out.astype(dtype)
