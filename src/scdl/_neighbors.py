"""The neighbour search behind scdl's own graphs (``tl.cluster``; the UMAPs of ``pl.embedding``
and ``pl.contrastive``) and ``tl.integration_metrics``.

scanpy searches exactly (scikit-learn, brute force) below 8,192 cells and with pynndescent's
approximate search above. pynndescent is compiled by numba on its first call in a process:
about half of a first ``tl.cluster`` of 14,000 cells in a fresh kernel (82-87 s; 43 s with
exact search, one core), while exact search on a representation of tens of dimensions costs
seconds at that size. Up to ``EXACT_NEIGHBORS_MAX_CELLS`` cells the search is exact; above,
where brute force grows with the square of the cells, scanpy's default.
"""

from __future__ import annotations

#: the most cells whose graphs scdl searches exactly: scikit-learn's brute force on 30
#: dimensions took ~2 s at 14,000 cells and ~20 s at 50,000 on one core (benchmarks/README.md,
#: "Clustering"), and tl.cluster searches twice (its representation and the PCA it joins)
EXACT_NEIGHBORS_MAX_CELLS = 20_000
#: the same for tl.integration_metrics (its 90 neighbours for scib-metrics' kBET and LISIs):
#: run once over a benchmark's embeddings, one search each, where exact search stays fast
METRICS_EXACT_NEIGHBORS_MAX_CELLS = 50_000
#: the same for the annotator's query clusters (the Unknown call, majority voting): one search
#: of 15 neighbours on 30 PCs. In a fresh process pynndescent's compile outweighs brute force
#: below ~100,000 cells (``tl.annotate`` of 40,000 cells 17 s exact, 53 s approximate; of
#: 100,000, 87 s and 74 s; benchmarks/README.md), while brute force grows with the square of
#: the cells above
QUERY_EXACT_NEIGHBORS_MAX_CELLS = 100_000


def knn_transformer(n_cells: int, max_exact: int | None = None) -> str | None:
    """``transformer`` for ``scanpy.pp.neighbors``: ``"sklearn"`` (exact) up to ``max_exact``
    cells (``None``: ``EXACT_NEIGHBORS_MAX_CELLS``), else ``None`` (scanpy's choice)."""
    max_exact = EXACT_NEIGHBORS_MAX_CELLS if max_exact is None else max_exact
    return "sklearn" if n_cells <= max_exact else None


def query_knn_transformer(n_cells: int) -> str | None:
    """:func:`knn_transformer` for the annotator's query clusters: exact up to
    ``QUERY_EXACT_NEIGHBORS_MAX_CELLS`` cells."""
    return knn_transformer(n_cells, QUERY_EXACT_NEIGHBORS_MAX_CELLS)
