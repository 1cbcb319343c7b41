"""The Unknown call's second check: query clusters that the reference does not reach.

The cluster novelty score (:mod:`scdl.models._novelty`) compares a query cluster with the one
type it is predicted as; a new type that resembles that type (NK cells called CD8 T cells,
CD4 T cells called CD8 T cells) passes it. This check asks instead whether the reference
holds cells like the cluster's at all:

1. after training, the reference's ``MIXING_GENES`` most variable genes (log-normalised) are
   standardised by its own mean and sd; a PCA is fitted on a random half of its cells, and
   at most ``SKETCH_CELLS`` of the other half are projected (the *sketch*, stored in the
   model: the loadings, the centre and the sketch cells' coordinates). Cells the PCA was not
   fitted on sit in it as the query's cells do, so the two are comparable;
2. the query's genes are standardised by the *query's* own mean and sd (which removes a shift
   shared by the whole query) and projected the same way;
3. sketch and query cells are balanced (the larger side subsampled to the smaller's size),
   and for each query cell the share of reference cells among its ``MIXING_NEIGHBORS`` nearest
   neighbours in both is counted: about 0.5 where the reference has cells like it, near 0
   where it has none. A cluster's *reference share* is the mean over its cells;
4. the cluster's cells are ``"Unknown"`` when the share is below ``MIN_REFERENCE_SHARE`` or
   the novelty check passes, and the mixing deficit, ``(0.5 - share) / (0.5 -
   MIN_REFERENCE_SHARE)`` (1 at that floor), plus the novelty over its threshold exceed
   ``UNKNOWN_EVIDENCE`` (:func:`scdl.models._novelty.unknown_clusters`); for a query whose
   cells mix poorly as a whole, shares are read relative to a lower level than 0.5
   (:func:`mixing_level`): divided by level / 0.5, so the floor scales with it.

The sketch cells are kept at every depth level of :mod:`scdl.models._depth` (the reference's
counts thinned, each level standardised by its own statistics), and the caller places the
query beside the level nearest its depth. A query that lacks reference types is filled to the
reference's composition first (:mod:`scdl.models._composition`): its statistics, and the
pool's query side, which then gets sketch cells of each type as pseudo-query cells.

The threshold is fixed, not fitted per model: a reference's own halves mix perfectly (share
~0.5), so the reference cannot tell how far below 0.5 a known type under a shift drops. It was
chosen over the four splits of ``benchmarks/annotation.py`` (as the novelty score's margin)
and checked over five random sketches (benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scdl._warnings import warn_user

from ._adaptation import AUTO_BELOW_SHARE
from ._composition import type_moments
from ._depth import DEPTH_LEVELS, level_fraction, thin_counts, type_depths
from ._novelty import _mean_sd, log_normalize, type_shares

#: neighbours counted per query cell
MIXING_NEIGHBORS = 30
#: principal components of the sketch
MIXING_PCS = 30
#: reference cells kept in the sketch
SKETCH_CELLS = 2_000
#: reference cells the sketch's PCA is fitted on (densified: at most this many)
PCA_FIT_CELLS = 5_000
#: genes the sketch's PCA uses: the reference's most variable (log1p CP10k), so that a large
#: vocabulary of mostly flat genes does not drown the types' genes once all are standardised
MIXING_GENES = 2_000
#: the mixing check's floor: a cluster whose mean reference share is below it is Unknown unless
#: its novelty says it is like its type (0.5: fully mixed; see UNKNOWN_EVIDENCE). Bound by the
#: least-mixed known query cluster of the benchmark's splits (0.159), not fitted on the reference
MIN_REFERENCE_SHARE = 0.15
#: the share of a query cell whose reference holds cells like it (balanced sides, fully mixed)
MIXED_SHARE = 0.5
#: a query whose cells' median share is below this is shifted as a whole
#: (:func:`mixing_level`); ``adapt_to_query="auto"``'s cut, not fitted again
SHIFTED_BELOW_SHARE = AUTO_BELOW_SHARE
#: how far a shifted query's level moves from :data:`MIXED_SHARE` towards the share of its
#: known clusters: halfway. All the way also forgave most of a large population the reference
#: lacks, whose cells lower the query's median too (benchmarks/README.md, stop 48)
SHIFTED_LEVEL_WEIGHT = 0.5
#: queries with fewer cells are too small to measure mixing on (no cell is flagged by it)
MIN_QUERY_CELLS = 100
#: share of the sketch's loadings (squared) the query's genes must carry for the check: the
#: sketch cells' coordinates use every gene, a query's only those it holds
MIN_SKETCH_COVERAGE = 0.9


def _standardised_dense(x_log, rows: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    block = x_log[rows]
    block = block.toarray() if sparse.issparse(block) else np.asarray(block)
    return ((block - mean) / sd).astype(np.float32)


def build_sketch(counts, *, seed: int = 0, x_log=None, labels=None) -> dict[str, np.ndarray]:
    """The reference sketch (step 1 of the module notes) from the reference's counts (cells x
    vocabulary genes). Returns ``sketch_loadings`` (genes x PCs), ``sketch_center`` (genes),
    ``sketch_cells`` (levels x sketch cells x PCs: the same cells at each depth level) and
    ``sketch_depth`` (the reference's median count per cell over the vocabulary, per label
    code of ``labels`` when given) and ``sketch_composition`` (the share of each label code;
    empty without ``labels``), float32; with ``labels`` also ``sketch_labels`` (the sketch
    cells' label codes), ``sketch_moments`` (the reference's per-type mean and variance over the
    vocabulary, :func:`~scdl.models._composition.type_moments`) and ``sketch_level_moments``
    (the same per depth level over the genes the PCs load: levels x 2 x types x genes), else
    empty. ``x_log``: the counts' :func:`log_normalize`, when the caller has it."""
    from sklearn.decomposition import PCA

    # scipy's sparse matrices cannot hold float16 (a dense half-precision X is valid counts)
    counts = sparse.csr_matrix(counts, dtype=np.float32 if counts.dtype == np.float16 else None)
    x_log = log_normalize(counts) if x_log is None else x_log
    n, n_genes = x_log.shape
    mean, sd = (v.astype(np.float32) for v in _mean_sd(x_log))
    rng = np.random.default_rng(seed)
    half = rng.random(n) < 0.5
    fit_rows, sketch_rows = np.flatnonzero(half), np.flatnonzero(~half)
    if len(fit_rows) > PCA_FIT_CELLS:
        fit_rows = np.sort(rng.choice(fit_rows, PCA_FIT_CELLS, replace=False))
    if len(sketch_rows) > SKETCH_CELLS:
        sketch_rows = np.sort(rng.choice(sketch_rows, SKETCH_CELLS, replace=False))
    genes = np.arange(n_genes)
    if n_genes > MIXING_GENES:  # by sd (floored: ties among flat genes go by their order)
        genes = np.sort(np.argsort(-sd, kind="stable")[:MIXING_GENES])
    n_pcs = min(MIXING_PCS, len(fit_rows) - 1, len(genes) - 1)
    typed = {"sketch_labels": np.zeros(0, np.float32),
             "sketch_moments": np.zeros((0, 0, 0), np.float32),
             "sketch_level_moments": np.zeros((0, 0, 0, 0), np.float32)}  # fmt: skip
    if n_pcs < 2 or len(sketch_rows) < 2:
        return {"sketch_loadings": np.zeros((0, 0), np.float32),
                "sketch_center": np.zeros(0, np.float32),
                "sketch_cells": np.zeros((0, 0, 0), np.float32),
                "sketch_depth": np.zeros(0, np.float32),
                "sketch_composition": type_shares(n, labels), **typed}  # fmt: skip
    sub = x_log[:, genes]
    fit = _standardised_dense(sub, fit_rows, mean[genes], sd[genes])
    pca = PCA(n_pcs, random_state=seed).fit(fit)
    # over the whole vocabulary: the genes left out weigh 0
    loadings = np.zeros((n_genes, n_pcs), dtype=np.float32)
    loadings[genes] = pca.components_.T
    center = np.zeros(n_genes, dtype=np.float32)
    center[genes] = pca.mean_
    levels = [project(x_log[sketch_rows], loadings, center, stats=(mean, sd))]
    codes = None if labels is None else np.asarray(labels).astype(int).ravel()
    n_types = 0 if codes is None else int(codes.max()) + 1
    # the type moments per level, over the genes the PCs load (as the caller finds them)
    used = np.flatnonzero(np.any(loadings != 0, axis=1))
    full = None if codes is None else type_moments(x_log, codes, n_types)
    moments = [] if full is None else [full[:, :, used]]  # level 0: the vocabulary's, sliced
    # thinner levels: each standardised by the thinned reference's own statistics (the query
    # is standardised by its own), estimated on the cells the sketch was drawn from
    rows = np.union1d(fit_rows, sketch_rows)
    at = np.searchsorted(rows, sketch_rows)
    for level in range(1, DEPTH_LEVELS):
        thinned = log_normalize(thin_counts(counts[rows], level_fraction(level), seed + level))
        stats = _mean_sd(thinned)
        levels.append(project(thinned[at], loadings, center, stats=stats))
        if codes is not None:
            moments.append(type_moments(thinned[:, used], codes[rows], n_types))
    if codes is not None:
        typed = {"sketch_labels": codes[sketch_rows].astype(np.float32),
                 "sketch_moments": full,
                 "sketch_level_moments": np.stack(moments)}  # fmt: skip
    return {
        "sketch_loadings": loadings,
        "sketch_center": center,
        "sketch_cells": np.stack(levels).astype(np.float32),
        "sketch_depth": type_depths(counts, labels),
        "sketch_composition": type_shares(n, labels),
        **typed,
    }


def project(x_log, loadings, center, present=None, stats=None) -> np.ndarray:
    """Query cells in the sketch's PCA, genes standardised by the query's own mean and sd
    (``stats``, computed when not given; sparse input stays sparse; genes the query does not
    hold count as 0)."""
    mean, sd = stats if stats is not None else _mean_sd(x_log)
    keep = np.ones(len(mean)) if present is None else np.asarray(present, dtype=float)
    w = loadings * (keep / sd)[:, None]
    return np.asarray(x_log @ w) - (keep * mean / sd) @ loadings - center @ loadings


def reference_share(
    x_log,
    clusters: np.ndarray | None,
    sketch: dict[str, np.ndarray],
    present=None,
    *,
    seed: int = 0,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    level: int = 0,
    fill: np.ndarray | None = None,
    warn: bool = True,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Per cell, its cluster's mean share of reference cells among the neighbours of its cells
    (steps 2-3 of the module notes; ``clusters=None``: the cell's own share, before any
    average over a cluster); NaN for every cell when the model has no sketch, the
    query has fewer than ``MIN_QUERY_CELLS`` cells or lacks genes carrying more than 10% of
    the sketch's loadings (with a warning). ``stats``: the query's per-gene mean and sd, when
    the caller has them; ``level``: the sketch's depth level to compare with
    (:func:`scdl.models._depth.match_depth`; a sketch saved with one level has only 0);
    ``fill``: pseudo-cells per label code that fill the query to the reference's composition
    (:func:`scdl.models._composition.fill_counts`; used when the sketch has its labels);
    ``weights``: per query cell, its weight towards the reference's composition
    (:func:`scdl.models._composition.composition_weights`): the pool's query side holds each
    cell in proportion to it; ``warn=False``: no warning for a query lacking the sketch's
    genes."""
    from sklearn.neighbors import NearestNeighbors

    n = x_log.shape[0]
    ref = np.asarray(sketch["sketch_cells"], dtype=np.float32)
    ref = ref[None] if ref.ndim == 2 else ref  # a sketch saved with one level
    if ref.shape[1] < 2 or n < MIN_QUERY_CELLS:
        return np.full(n, np.nan)
    if present is not None:
        coverage = sketch_coverage(sketch, present)
        if coverage < MIN_SKETCH_COVERAGE:
            if warn:
                warn_user(
                    f"The query's genes carry {coverage:.0%} of the reference sketch's "
                    f"principal components (at least {MIN_SKETCH_COVERAGE:.0%} needed): the "
                    "Unknown call's mixing check is skipped and only the cluster novelty check "
                    "is made. Pass a query that holds the model's genes to have both.",
                    UserWarning,
                )
            return np.full(n, np.nan)
    ref = ref[min(level, len(ref) - 1)]
    q = project(x_log, sketch["sketch_loadings"], sketch["sketch_center"], present, stats)
    rng = np.random.default_rng(seed)
    side, own_rows = q, np.arange(n)  # the pool's query side, and which query cell each is
    labels = np.asarray(sketch.get("sketch_labels", np.zeros(0)), dtype=int)
    if fill is not None and fill.sum() > 0 and len(labels) == len(ref):
        ref, side, own_rows = _filled_sides(ref, labels, q, np.asarray(fill), rng)
    elif weights is not None:
        own_rows = _weighted_rows(q, np.asarray(weights, dtype=np.float64), rng)
        side = q[own_rows]
    m = min(len(ref), len(side))  # balanced: the same number of reference and query neighbours
    ref = ref[np.sort(rng.choice(len(ref), m, replace=False))] if len(ref) > m else ref
    servers = _subsample(side, m, rng) if len(side) > m else np.arange(m)
    k = min(MIXING_NEIGHBORS, 2 * m - 1)
    pool = np.vstack([ref, side[servers]]).astype(np.float32)
    is_ref = np.r_[np.ones(m, dtype=bool), np.zeros(len(servers), dtype=bool)]
    _, ind = NearestNeighbors(n_neighbors=k + 1).fit(pool).kneighbors(q.astype(np.float32))
    own = np.full(n, -1)  # a query cell in the pool is not its own neighbour
    real = own_rows[servers] >= 0
    own[own_rows[servers][real]] = m + np.flatnonzero(real)
    order = np.argsort(ind == own[:, None], axis=1, kind="stable")[:, :k]
    share = is_ref[np.take_along_axis(ind, order, axis=1)].mean(1)
    return share if clusters is None else cluster_means(share, clusters)


def mixing_level(novelty: np.ndarray, threshold: float, share: np.ndarray, median: float) -> float:
    """The reference share that counts as fully mixed for this query.

    :data:`MIXED_SHARE` unless the query's cells mix poorly as a whole (``median``, the median
    of their own shares, below :data:`SHIFTED_BELOW_SHARE`, as data of another lab or chemistry
    give; a large population the reference lacks lowers it too); then halfway from it towards
    the median share of the query's cells in clusters the novelty check finds known (a known
    type under the same shift), at most :data:`MIXED_SHARE`. A shifted query with fewer than
    :data:`MIN_QUERY_CELLS` such cells keeps :data:`MIXED_SHARE`. ``novelty`` and ``share``
    are per cell (their cluster's); NaN where not measured.
    """
    if not median < SHIFTED_BELOW_SHARE:  # NaN too: no share measured
        return MIXED_SHARE
    novelty, share = np.asarray(novelty, np.float64), np.asarray(share, np.float64)
    known = np.isfinite(share) & (novelty <= threshold)
    if known.sum() < MIN_QUERY_CELLS:  # too few to gauge the shift by
        return MIXED_SHARE
    known_level = min(MIXED_SHARE, float(np.median(share[known])))
    return MIXED_SHARE + SHIFTED_LEVEL_WEIGHT * (known_level - MIXED_SHARE)


def sketch_coverage(sketch: dict[str, np.ndarray], present=None) -> float:
    """The share of the sketch's loadings (squared) on the genes ``present`` (``None``: all, 1);
    NaN for a model without a sketch. The mixing check needs :data:`MIN_SKETCH_COVERAGE`."""
    energy = (np.asarray(sketch["sketch_loadings"], dtype=np.float64) ** 2).sum(1)
    if energy.size == 0 or energy.sum() == 0:
        return float("nan")
    if present is None:
        return 1.0
    return float(energy[np.asarray(present, dtype=bool)].sum() / energy.sum())


def cluster_means(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Per cell, the mean of ``values`` over the cells of its cluster."""
    _, inv = np.unique(clusters, return_inverse=True)
    return (np.bincount(inv, weights=values) / np.bincount(inv))[inv]


def _subsample(points: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` of the rows of ``points``, drawn from the rows sorted by their values rather than
    by position, so the cells drawn (and the calls) do not depend on the query's cell order;
    their positions, in that sorted order (the pool's order breaks neighbour ties)."""
    canonical = np.lexsort(points.T[::-1])  # by the first coordinate, ties by the next
    return canonical[np.sort(rng.choice(len(points), m, replace=False))]


def _weighted_rows(points: np.ndarray, weights: np.ndarray, rng) -> np.ndarray:
    """Rows of ``points`` kept in proportion to their ``weights`` (cells of equal weight, i.e.
    of one predicted type, subsampled together; the heaviest all kept), sorted."""
    rows = []
    for w in np.unique(weights):
        idx = np.flatnonzero(weights == w)
        keep = int(round(len(idx) * w / weights.max()))
        if keep > 0:
            rows.append(idx[_subsample(points[idx], keep, rng)])
    return np.sort(np.concatenate(rows)) if rows else np.arange(len(points))


def _filled_sides(ref, labels, q, fill, rng):
    """The pool's two sides for a query filled to the reference's composition: one half of the
    sketch is the reference side, the other gives each type's pseudo-query cells (``fill``
    per label code); where that half holds too few, the query's cells and every type's
    pseudo-cells are cut by the same factor. Returns the reference side, the query side and,
    per query-side cell, its query row (-1 for a pseudo-cell)."""
    half = rng.permutation(len(ref))
    own_half, other = half[: len(ref) // 2], half[len(ref) // 2 :]
    held = np.bincount(labels[other], minlength=len(fill))[: len(fill)]
    wanted = np.flatnonzero((fill > 0) & (held > 0))  # a type the half lacks cannot be filled
    if len(wanted) == 0:
        return ref, q, np.arange(len(q))
    cut = min(1.0, min(held[t] / fill[t] for t in wanted))
    pseudo = [
        rng.choice(other[labels[other] == t], int(round(cut * fill[t])), replace=False)
        for t in wanted
    ]
    pseudo = np.concatenate(pseudo).astype(int)
    rows = _subsample(q, max(1, int(round(cut * len(q)))), rng)
    side = np.vstack([q[rows], ref[pseudo]])
    return ref[own_half], side, np.r_[rows, np.full(len(pseudo), -1)]
