"""Sequencing depth in the Unknown call's mixing check: a query meets the reference at its depth.

The mixing check (:mod:`scdl.models._mixing`) standardises a query by its own statistics,
which removes a shift of every gene's level but not one of noise: a query sequenced at a
quarter of the reference's depth (10x chemistries differ by that much) has noisier cells, and
its known types lose most of their reference neighbours. So after training the model keeps
its reference sketch as it would look at lower depths: the counts binomially thinned to 1/2,
1/4, ... (``DEPTH_LEVELS`` levels, level 0 being the reference itself), each level
standardised by its own statistics. A query is compared with the level nearest its depth
(within a factor of sqrt(2)); a query deeper than the reference by more than that is thinned
to the reference's depth instead. (The cluster novelty check compares cluster means, where
depth's noise largely averages out: matching its type profiles' depth as well moved its
Unknown rate by at most two points over 16 thinned splits, once up and once down, so it is
not done.)

Depths are compared type by type, each query cell against the reference's median for the type
it is predicted as: cell types differ in depth (in Kang et al.'s PBMCs monocytes carry six to
eight times the counts of T cells on 2,000 variable genes), so a query's overall median would
follow its composition, not its chemistry.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scdl.data import whole_counts

#: depth levels of the reference kept by the model: its own, then halved at each level
DEPTH_LEVELS = 5


def thin_counts(x, fraction: float, seed: int) -> sparse.csr_matrix:
    """Binomial thinning: each count kept with probability ``fraction`` (CSR float32)."""
    x = sparse.csr_matrix(x, dtype=np.float32, copy=True)
    if fraction < 1.0:
        rng = np.random.default_rng(seed)
        x.data = rng.binomial(np.rint(x.data).astype(np.int64), fraction).astype(np.float32)
        x.eliminate_zeros()
    return x


def level_fraction(level: int) -> float:
    """Share of the reference's counts kept at a depth level."""
    return 2.0**-level


def type_depths(counts, labels=None) -> np.ndarray:
    """Median count per cell, per label code (one value without ``labels``; a code without
    cells takes the overall median), float32."""
    totals = np.asarray(counts.sum(1), dtype=np.float64).ravel()
    overall = np.median(totals)
    if labels is None:
        return np.array([overall], dtype=np.float32)
    labels = np.asarray(labels).astype(int).ravel()
    out = np.full(labels.max() + 1, overall)
    for code in np.unique(labels):
        out[code] = np.median(totals[labels == code])
    return out.astype(np.float32)


#: counts whose non-zero values are ones less often than this are amplified reads (full-length
#: protocols such as Smart-seq2 count each molecule's copies): their totals count copies, not
#: molecules, so depths are not compared with another protocol's and a deep query is not
#: thinned (its reads keep their amplification noise: the cells then look unlike the
#: reference). Ones are 33-73% of the values of every UMI set here, CEL-seq2 at 27,000 UMIs
#: per cell included, and about 1% of simulated Smart-seq2 reads (../shared/data holds no real
#: full-length data: a file with more single reads is read as molecules, as before this check)
AMPLIFIED_BELOW_ONES = 0.1


def looks_amplified(counts) -> bool:
    """Whether the counts' non-zero values are ones less often than
    :data:`AMPLIFIED_BELOW_ONES` (amplified reads, not molecules)."""
    values = sparse.csr_matrix(counts).data
    values = values[values > 0]
    return bool(values.size) and float(np.mean(values == 1)) < AMPLIFIED_BELOW_ONES


def integer_counts(x) -> sparse.csr_matrix | None:
    """Counts behind a query matrix: ``x`` itself when it holds integers; for ``expm1`` of
    log-normalised data (each cell scaled to one total), each cell divided by its smallest
    non-zero value (one count) when that gives integers; else ``None`` (depth unknown)."""
    x = sparse.csr_matrix(x)
    if x.nnz == 0:
        return None
    if np.all(x.data == np.rint(x.data)):
        return x
    # the smallest value of each cell as its one count, over the model's genes only (a query
    # read from log1p values has its counts already where its genes showed them: see
    # AnnotatorInputMixin._query_matrix; this reads what that left on the CP10k scale)
    filled = np.diff(x.indptr) > 0
    units = np.ones(x.shape[0])
    units[filled] = np.minimum.reduceat(x.data, x.indptr[:-1][filled])
    return whole_counts(x, units, min_share=0.99)


def depth_ratio(totals, depths, calls=None) -> float:
    """The median over cells of each cell's total count against ``depths`` (the reference's
    median per type, :func:`type_depths`) for its predicted type (``calls``, label codes;
    without them, against the median of ``depths``); NaN without cells or depths."""
    totals = np.asarray(totals, dtype=np.float64).ravel()
    depths = np.asarray(depths, dtype=np.float64).ravel()
    if totals.size == 0 or depths.size == 0 or np.any(depths <= 0):
        return float("nan")
    if calls is not None and depths.size > 1:
        expected = depths[np.clip(np.asarray(calls, dtype=int), 0, depths.size - 1)]
    else:
        expected = np.full(len(totals), np.median(depths))
    return float(np.median(totals / expected))


def match_depth(counts, depths, *, n_levels: int = DEPTH_LEVELS, calls=None, seed: int = 0):
    """The depth level a query is compared at, and its counts thinned to the reference's depth
    when it is deeper by more than sqrt(2) (else ``None``).

    The depth ratio is the median over the query's cells of each cell's total count against
    ``depths`` (the reference's median per type, :func:`type_depths`) for its predicted type
    (``calls``, label codes; without them, against the median of ``depths``). Level 0 and
    ``None`` when the query's counts (``None``) or the reference's depth (empty) are unknown.
    """
    depths = np.asarray(depths, dtype=np.float64).ravel()
    if counts is None or depths.size == 0 or np.any(depths <= 0) or n_levels < 1:
        return 0, None
    ratio = depth_ratio(np.asarray(counts.sum(1), dtype=np.float64).ravel(), depths, calls)
    if ratio <= 0:
        return 0, None
    if ratio > np.sqrt(2.0):
        return 0, thin_counts(counts, 1.0 / ratio, seed)
    return int(np.clip(np.rint(-np.log2(ratio)), 0, n_levels - 1)), None


#: a query cell with fewer counts than this in the model's genes is not typed (at most: less
#: where the reference or the query itself is shallow): the usual floor of imaging panels' QC
#: (squidpy's Xenium tutorial filters cells under 10 counts)
MIN_TYPED_COUNTS = 10.0


def min_typed_counts(depths, totals) -> float:
    """The fewest counts in the model's genes a query cell is typed by: 10, or 1/16 (the
    lowest depth level the model keeps) of the shallowest reference type's median (``depths``)
    or of the query's own median over its cells with counts (``totals``), whichever is least.
    Relative to the query, a shallow query (an imaging panel, a query lacking most of the
    model's genes) keeps its cells; slivers and near-empty droplets among deeper cells are
    left out."""
    fraction = level_fraction(DEPTH_LEVELS - 1)
    lows = [MIN_TYPED_COUNTS]
    depths = np.asarray(depths, dtype=np.float64).ravel()
    if depths.size and np.all(depths > 0):
        lows.append(float(depths.min()) * fraction)
    totals = np.asarray(totals, dtype=np.float64).ravel()
    if (totals > 0).any():
        lows.append(float(np.median(totals[totals > 0])) * fraction)
    return min(lows)


def rows_emptied(x: sparse.csr_matrix, rows: np.ndarray) -> sparse.csr_matrix:
    """``x`` with the counts of the cells in ``rows`` (a boolean mask) removed (a copy)."""
    x = sparse.csr_matrix(x, copy=True)
    x.data[np.repeat(rows, np.diff(x.indptr))] = 0
    x.eliminate_zeros()
    return x
