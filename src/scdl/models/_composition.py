"""The Unknown call on a query whose composition differs from the reference's (a sorted population).

Both Unknown checks standardise the query by its own per-gene mean and sd, which removes a
shift the whole query shares (a stimulation, a chemistry) when the query holds the reference's
types in similar shares. A query of one sorted population has its own profile as its mean, so
every cluster looked new. When the query's forced calls leave out a reference type (its
predicted share is below ``MIN_SHARE_RATIO`` times its reference share), the query is *filled*
to the reference's composition before its statistics are taken:

1. the shift the query shares is estimated per gene as the median, each present type weighted
   by its cells, of the query's type mean minus the reference's type mean;
2. every type is topped up with pseudo-cells to the scale of the most over-represented type
   (``T = max(query cells of t / reference share of t)``, each type to ``T`` times its
   reference share); a type's pseudo-cells have the reference type's mean plus the shift and
   the reference's within-type variance;
3. the query's per-gene mean and sd are those of its cells and the pseudo-cells together. The
   clusters are made at the resolution times the query's share of that whole (Leiden's
   modularity: a part of a graph clustered alone at resolution ``r * m_part / m`` splits as it
   would inside the whole graph), and the mixing check's pool gets sketch cells of each type on
   the query's side in the same numbers (:func:`scdl.models._mixing.reference_share`).

A query whose present types do not look like their reference types before any shift is
removed is not filled (:func:`shift_is_plausible`: a population unlike the reference's types,
e.g. cell lines against blood, is not a shift). The limit: a query of one population cannot
tell a shift from a new type close to a known one, so a sorted population of such a type is
read as that type under a shift and is not called Unknown.

A query holding every reference type in at least that share is not filled, but its mean
still follows its composition: in a sample dominated by one type (60-80% of its cells) that
type's profile is the mean, and its clusters looked new to both checks. Such a query is
*weighted* to the reference's composition (:func:`composition_weights`): each cell by its
type's reference share over its predicted share, in the query's mean and sd and in the mixing
check's pool (its query side holds each type's cells in proportion to their weight). A
population the reference lacks, called as its nearest known type, inflates that type's
predicted share by about its own, and weighting reads it as part of that type (its cells weigh
less in the pool, where they no longer find each other). So a query is weighted only when it
looks dominated rather than joined by a new population: one predicted type holds at least
half of it (:data:`MIN_DOMINANT_SHARE`), and its predicted composition is further (total
variation) from the reference's than the reference's largest type's share (a new population
up to that size, called as one type, moves it less). On the benchmark's 43 leave-one-type-out
queries the two together leave every call as it was (the largest share alone changed one: a
new donor's B cells, 16% of it, called CD4 T cells, which were then 47% of the calls, were all
missed); on queries of every split enriched in one type they remove about half the known cells
called Unknown (benchmarks/README.md). The limit: a population the reference lacks is missed
when it is called as the type that dominates the query, whether it is a small part of a
dominated query or itself makes half of one. A fill refused as above, or a model saved before
the fill, keeps the query's own statistics.

A query *shifted as a whole* (its cells' median share of reference neighbours in the mixing
check below ``SHIFTED_BELOW_SHARE``, measured on its unadapted calls: another lab, donors or
chemistry) that is neither filled nor weighted as above has its statistics, not the mixing
check's pool, read at the reference's composition too (:func:`shifted_query_weights`). Its own
mean stands in for the reference's mean under the shift only at the reference's composition;
another lab's donors hold the types in other shares (CD8 T cells 6% of Kang 2k, 37% of PBMC
7k), and that difference moved its known types' clusters away from their profiles. Every cell
stays in the pool, so a population the reference lacks still finds only itself there. Not for a
reference dominated by one type: its query mixes poorly because of the reference's make-up, and
weighting it up made a population the reference lacks, called as the dominant type, weigh as
that type does (benchmarks/README.md, stop 75).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ._novelty import _cosine_to, composition_shift

#: a reference type whose predicted share in the query is below this times its reference share
#: is absent, and the query is filled (the four benchmark splits' full and leave-one-type-out
#: queries hold every type at >= 0.15 of its share; a sorted population's others are near 0)
MIN_SHARE_RATIO = 0.1
#: a type with fewer predicted cells is absent too
MIN_TYPE_CELLS = 5
#: a query is filled only if its types' means, before any shift is removed, are at most this
#: far (1 - cosine) from their reference types', cell-weighted (on the benchmark splits' single
#: types: known ones 0.00-0.52, the stimulated ones highest; a type the reference lacks and
#: unlike its types 0.82-0.90; see benchmarks/README.md)
MAX_UNSHIFTED_NOVELTY = 0.6
_STD_FLOOR = 0.1  # as _novelty._mean_sd
#: a query is weighted to the reference's composition only when one predicted type holds at
#: least this share of its cells (a sample dominated by one type; see the module notes)
MIN_DOMINANT_SHARE = 0.5


def composition_weights(predicted: np.ndarray, shares: np.ndarray) -> np.ndarray | None:
    """Per cell, the weight that brings a query dominated by one type to the reference's
    composition (its type's reference share over its predicted share, mean 1), or ``None``
    where the query is not weighted: unless every reference type is present (else
    :func:`fill_counts` fills it), one predicted type holds at least
    :data:`MIN_DOMINANT_SHARE` of the cells, and the predicted composition is further (total
    variation) from the reference's than the reference's largest type's share (the module
    notes say why)."""
    weights = reference_weights(predicted, shares)
    if weights is None:
        return None
    shares = np.asarray(shares, dtype=np.float64).ravel()
    shares, predicted = shares / shares.sum(), np.asarray(predicted, dtype=int).ravel()
    dominated = np.bincount(predicted).max() >= MIN_DOMINANT_SHARE * len(predicted)
    if not dominated or composition_shift(predicted, shares) <= shares.max():
        return None
    return weights


def shifted_query_weights(predicted: np.ndarray, shares: np.ndarray) -> np.ndarray | None:
    """Per cell, the weight that reads a query shifted as a whole (another lab or chemistry:
    its cells mix poorly with the reference's) at the reference's composition, in its
    statistics only (:func:`reference_weights`); ``None`` where a type is absent, or where
    the reference is dominated by one type (:data:`MIN_DOMINANT_SHARE`): there the query's
    poor mixing comes from the reference's make-up rather than a shift, and a population the
    reference lacks, called as the dominant type, would weigh as much as that type's share
    (benchmarks/README.md, stop 75)."""
    shares = np.asarray(shares, dtype=np.float64).ravel()
    if not shares.sum() > 0 or shares.max() >= MIN_DOMINANT_SHARE * shares.sum():
        return None
    return reference_weights(predicted, shares)


def reference_weights(predicted: np.ndarray, shares: np.ndarray) -> np.ndarray | None:
    """Per cell, its predicted type's reference share over its predicted share (mean 1): the
    weights that read the query at the reference's composition; ``None`` where a reference type
    is absent from the calls (:func:`fill_counts` fills it instead) or a call has no share.
    Each type holds at least ``MIN_SHARE_RATIO`` of its reference share, so no weight exceeds
    ``1 / MIN_SHARE_RATIO``."""
    shares = np.asarray(shares, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=int).ravel()
    n = len(predicted)
    if n == 0 or not shares.sum() > 0 or fill_counts(predicted, shares)[0].sum() > 0:
        return None
    shares = shares / shares.sum()
    counts = np.bincount(predicted, minlength=len(shares)).astype(np.float64)
    if counts[len(shares) :].sum() > 0:  # a code the reference's composition lacks: absent
        return None
    present = counts > 0  # every type with a share (fill_counts); one without has no weight
    weights = np.divide(shares * n, counts, out=np.zeros_like(shares), where=present)
    weights = weights[predicted]
    return weights / weights.mean()


def type_moments(x_log, labels: np.ndarray, n_types: int) -> np.ndarray:
    """Per-type mean and within-type variance of ``x_log`` (cells x genes), as an array
    ``(2, n_types, genes)`` float32 (zeros for a type without cells)."""
    labels = np.asarray(labels).astype(int).ravel()
    n = len(labels)
    keep = labels < n_types  # a code beyond n_types adds to no type
    onehot = sparse.csr_matrix(
        (np.ones(keep.sum()), (labels[keep], np.flatnonzero(keep))), shape=(n_types, n)
    )
    counts = np.maximum(np.asarray(onehot.sum(1)).ravel(), 1)[:, None]
    x = sparse.csr_matrix(x_log)
    mean = np.asarray((onehot @ x).todense(), dtype=np.float64) / counts
    sq = np.asarray((onehot @ x.multiply(x)).todense(), dtype=np.float64) / counts
    return np.stack([mean, np.maximum(sq - mean**2, 0.0)]).astype(np.float32)


def fill_counts(predicted: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-cells per type that fill the query to the reference's composition (step 2 of the
    module notes; all zero when no type is absent) and the mask of the types it holds."""
    shares = np.asarray(shares, dtype=np.float64).ravel()
    n = len(predicted)
    counts = np.bincount(np.asarray(predicted, dtype=int), minlength=len(shares))
    counts = counts[: len(shares)].astype(np.float64)
    known = shares > 0
    present = known & (counts >= MIN_TYPE_CELLS) & (counts >= MIN_SHARE_RATIO * shares * n)
    if n == 0 or not present.any() or present[known].all():
        return np.zeros(len(shares)), present
    scale = (counts[known] / shares[known]).max()
    return np.where(known, np.maximum(scale * shares - counts, 0.0), 0.0), present


def filled_stats(x_log, predicted, moments, pseudo, present, genes=None):
    """Per-gene mean and sd of the query's cells with ``pseudo`` cells per type (step 3), and
    the query's share of the whole. ``moments``: :func:`type_moments` of the reference (over
    ``genes`` of ``x_log`` when given, else all); ``pseudo``, ``present``: :func:`fill_counts`."""
    x = sparse.csr_matrix(x_log if genes is None else x_log[:, genes])
    n = x.shape[0]
    means, variances = (np.asarray(m, dtype=np.float64) for m in moments)
    q_means = type_moments(x, predicted, len(pseudo))[0].astype(np.float64)
    counts = np.bincount(np.asarray(predicted, dtype=int), minlength=len(pseudo))[: len(pseudo)]
    # the shared shift: per gene, the cell-weighted median over present types
    diff = (q_means - means)[present]
    w = counts[present].astype(np.float64)
    order = np.argsort(diff, axis=0)
    cum = np.cumsum(w[order], axis=0)
    pick = np.argmax(cum >= 0.5 * w.sum(), axis=0)
    shift = np.take_along_axis(diff, order, axis=0)[pick, np.arange(diff.shape[1])]
    shifted = means + shift
    total = n + pseudo.sum()
    first = (np.asarray(x.sum(0), dtype=np.float64).ravel() + pseudo @ shifted) / total
    second = np.asarray(x.multiply(x).sum(0), dtype=np.float64).ravel()
    second = (second + pseudo @ (variances + shifted**2)) / total
    sd = np.maximum(np.sqrt(np.maximum(second - first**2, 0.0)), _STD_FLOOR)
    return (first, sd), n / total


def query_fill(predicted: np.ndarray, sketch: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`fill_counts` for a query's forced calls against the model's sketch, or ``None``
    when nothing is absent or the sketch lacks the type moments (a model saved before them)."""
    moments = sketch.get("sketch_moments")
    if moments is None or moments.size == 0:
        return None
    pseudo, present = fill_counts(predicted, sketch["sketch_composition"])
    return (pseudo, present) if pseudo.sum() > 0 else None


def sketch_stats(x_log, predicted, sketch: dict, fill, stats, level: int = 0):
    """``stats`` (the query's mean and sd) with the sketch's genes filled at depth ``level``
    (:func:`filled_stats` on the sketch's per-level type moments), for the mixing check."""
    moments = np.asarray(sketch["sketch_level_moments"])
    moments = moments[min(level, len(moments) - 1)]
    genes = np.flatnonzero(np.any(np.asarray(sketch["sketch_loadings"]) != 0, axis=1))
    (mean_g, sd_g), _ = filled_stats(x_log, predicted, moments, *fill, genes=genes)
    mean, sd = (np.array(v, dtype=np.float64) for v in stats)
    mean[genes], sd[genes] = mean_g, sd_g
    return mean, sd


def shift_is_plausible(x_log, predicted, sketch, fill, centroids, genes, present=None):
    """Whether the types the query holds (``fill[1]``) match their reference types before any
    shift is removed: the novelty (1 - cosine over ``genes``) of each one's query mean,
    standardised by the reference's own mean and sd (from the sketch's type moments),
    averaged over them weighted by their cells, is at most ``MAX_UNSHIFTED_NOVELTY``. A query
    that fails is unlike the reference's types, not a shifted sample of them."""
    shares = np.asarray(sketch["sketch_composition"], dtype=np.float64)
    means, variances = (np.asarray(m, dtype=np.float64) for m in sketch["sketch_moments"])
    mean = shares @ means
    sd = np.maximum(np.sqrt(np.maximum(shares @ (variances + means**2) - mean**2, 0)), _STD_FLOOR)
    held = np.flatnonzero(fill[1])
    z = (type_moments(x_log, predicted, len(shares))[0][held] - mean) / sd
    cos = _cosine_to(z, np.asarray(centroids, dtype=np.float64)[held], genes, present)
    cells = np.bincount(np.asarray(predicted, dtype=int), minlength=len(shares))[held]
    return bool((1.0 - np.diag(cos)) @ cells / cells.sum() <= MAX_UNSHIFTED_NOVELTY)


def composition_warning(shift: float, how: str | None) -> str:
    """The warning for a query whose predicted composition is ``shift`` (total variation)
    away from the reference's; ``how`` the call read it: ``"filled"`` (a type absent),
    ``"weighted"`` (:func:`composition_weights`), ``"shifted"`` (its statistics alone at the
    reference's composition, :func:`shifted_query_weights`), ``"unlike"`` (a fill refused by
    :func:`shift_is_plausible`) or ``"own"`` (its own statistics: a model saved before the
    fill, or a query neither rule applies to)."""
    if how == "shifted":
        return (
            f"{shift:.0%} of the query's cells would have to change type for its predicted "
            "composition to match the reference's, and its cells mix poorly with the "
            "reference's as a whole (another lab or chemistry): the Unknown call reads its "
            "statistics at the reference's composition. A population the reference lacks that "
            "is called as an over-represented type weighs less there, and is then harder to "
            "tell from that type; its cells still have to find reference cells like them to be "
            "called known."
        )
    if how == "unlike":
        return (
            f"{shift:.0%} of the query's cells would have to change type for its predicted "
            "composition to match the reference's, and the types it is called as do not look "
            "like the reference's even before any shift is removed (e.g. cells of another "
            "tissue): the call reads the query's own statistics, and cells unlike every "
            "reference type are 'Unknown'. Their forced calls (`label_forced`) name the nearest "
            "reference type, not what they are."
        )
    if how == "weighted":
        risk = (
            "every reference type is in it, so the call weighs its cells to the reference's "
            "composition. A population the reference lacks that is called as an "
            "over-represented type weighs less there too, and can be called that type instead "
            "of 'Unknown'. Annotate it together with cells of the other types to have it checked"
        )
        return (
            f"{shift:.0%} of the query's cells would have to change type for its predicted "
            f"composition to match the reference's (e.g. a sample dominated by one type; or, "
            "where its cells are of many types, strong ambient RNA pulling their calls towards "
            f"the most abundant ones: remove it first, e.g. with SoupX or CellBender): {risk}."
        )
    risk = (
        "the call fills the query to the reference's composition from its forced calls, so it "
        "cannot tell a population the reference lacks but resembles a known type from that "
        "type shifted: such a population can be called the type it resembles instead of "
        "'Unknown' (one unlike every type still is). Annotate it together with cells of the "
        "other types to have it checked"
        if how == "filled"
        else "the call removes what the whole query shares, so for such a query it can call "
        "known types 'Unknown'. Annotate it together with cells of the other types, or use the "
        "forced calls (`unknown=False` in `scdl.tl.annotate`, or the `label_forced` column)"
    )
    return (
        f"{shift:.0%} of the query's cells would have to change type for its predicted "
        f"composition to match the reference's (e.g. a sorted population): {risk}."
    )
