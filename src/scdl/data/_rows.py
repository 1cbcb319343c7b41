"""Reading a matrix a block of rows at a time (a backed AnnData's matrix is never read whole, and
a check of a large in-memory one never copies it whole), or whole where a step needs all of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: rows per block: 10,000 cells of 30,000 genes are ~1.2 GB dense (float32), far less sparse
ROW_BLOCK = 10_000


def row_blocks(x: Any, n_rows: int | None = None, *, size: int | None = None) -> Iterator[Any]:
    """Consecutive row slices ``x[start:stop]`` of at most ``size`` rows (default
    :data:`scdl.data.ROW_BLOCK`), covering the first ``n_rows`` rows (default: all of them).

    Works on anything sliced by rows: a dense or sparse in-memory matrix (each slice as
    ``x[a:b]`` gives it: a view of a dense array, a copy of a sparse one's rows) or a backed
    AnnData's on-disk matrix (each slice read from disk, a sparse one staying sparse).
    """
    n_rows = x.shape[0] if n_rows is None else n_rows
    size = ROW_BLOCK if size is None else size
    for start in range(0, n_rows, size):
        yield x[start : min(start + size, n_rows)]


def in_memory(x: Any) -> Any:
    """``x`` as an in-memory matrix: a backed AnnData's on-disk matrix read whole as it is
    stored (a sparse one stays sparse); an in-memory dense or sparse matrix as it is."""
    from scipy import sparse

    if sparse.issparse(x) or isinstance(x, np.ndarray):
        return x
    return x[:]
