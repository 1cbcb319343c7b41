"""The neighbour search behind scdl's own graphs (``tl.cluster``, ``pl.embedding``'s UMAP).

scanpy searches exactly (scikit-learn, brute force) below 8,192 cells and with pynndescent's
approximate search above. pynndescent is compiled by numba on its first call in a process: on
one core that first ``tl.cluster`` of 14,000 cells took 82-87 s, of which the compile was most,
and exact search on a latent of tens of dimensions costs a second or two at that size. Up to
``EXACT_NEIGHBORS_MAX_CELLS`` cells the search is exact; above, where brute force grows with the
square of the cells, scanpy's default.
"""

from __future__ import annotations

#: the most cells searched exactly: scikit-learn's brute force on 30 dimensions took ~2 s at
#: 14,000 cells and ~20 s at 50,000 on one core (benchmarks/README.md, "Clustering")
EXACT_NEIGHBORS_MAX_CELLS = 20_000


def knn_transformer(n_cells: int) -> str | None:
    """``transformer`` for ``scanpy.pp.neighbors``: ``"sklearn"`` (exact) up to
    ``EXACT_NEIGHBORS_MAX_CELLS`` cells, else ``None`` (scanpy's choice)."""
    return "sklearn" if n_cells <= EXACT_NEIGHBORS_MAX_CELLS else None
