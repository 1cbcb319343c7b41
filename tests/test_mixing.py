"""The Unknown call's mixing check on real cells (Kang 2k reference, Kang 1.5k query: the same
study processed by another pipeline): a type the reference lacks has no reference neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import kang_reference_query

from scdl.models._depth import integer_counts, match_depth, thin_counts
from scdl.models._mixing import (
    MIN_REFERENCE_SHARE,
    MIXING_NEIGHBORS,
    build_sketch,
    mixing_level,
    reference_share,
)
from scdl.models._novelty import cluster_cells, log_normalize, unknown_score

REMOVED = "CD4 T cells"  # called CD4T in the Kang 2k file


@pytest.fixture(scope="module")
def kang_pair():
    ref, query = kang_reference_query()
    x_query = log_normalize(query.X)
    (clusters,) = cluster_cells(x_query)
    return ref, query, x_query, clusters


def flagged(ref, x_query, clusters, counts=None) -> np.ndarray:
    """The check's flags; with the query's ``counts``, at its depth (as the model does)."""
    sketch = build_sketch(ref.X)
    level, thinned = match_depth(counts, sketch["sketch_depth"])
    if thinned is not None:
        x_query = log_normalize(thinned)
    share = reference_share(x_query, clusters, sketch, level=level)
    return share < MIN_REFERENCE_SHARE


def test_a_type_the_reference_lacks_is_flagged(kang_pair):
    ref, query, x_query, clusters = kang_pair
    lacks = ref[ref.obs["cell_type"].astype(str) != "CD4T"]
    unknown = flagged(lacks, x_query, clusters)
    is_removed = (query.obs["cell_type"] == REMOVED).to_numpy()
    assert unknown[is_removed].mean() >= 0.6, unknown[is_removed].mean()


def test_known_types_under_a_processing_shift_are_not(kang_pair):
    ref, _, x_query, clusters = kang_pair
    unknown = flagged(ref, x_query, clusters)
    assert unknown.mean() <= 0.05, unknown.mean()


def test_a_shallower_query_is_placed_beside_a_reference_as_shallow(kang_pair):
    """At a quarter of the depth (10x chemistries differ by that much) a query's known types
    lose their reference neighbours unless the sketch cells are as shallow: with the query's
    counts the check picks that level, without them it compares unlike depths."""
    ref, query, _, _ = kang_pair
    shallow = thin_counts(query.X, 0.25, seed=1)
    x_shallow = log_normalize(shallow)
    (clusters,) = cluster_cells(x_shallow)
    unmatched = flagged(ref, x_shallow, clusters).mean()
    matched = flagged(ref, x_shallow, clusters, counts=shallow).mean()
    assert matched <= 0.05 < 0.1 < unmatched, (matched, unmatched)
    # a deeper query is thinned to the reference's depth instead: the same outcome
    thin_ref = ref.copy()
    thin_ref.X = thin_counts(ref.X, 0.25, seed=2)
    x_query = log_normalize(query.X)
    (clusters,) = cluster_cells(x_query)
    assert flagged(thin_ref, x_query, clusters, counts=query.X).mean() <= 0.05


def test_counts_are_recovered_from_log_normalised_data(kang_pair):
    _, query, _, _ = kang_pair
    counts = query.X.tocsr().astype(np.float32)
    counts = counts[np.asarray(counts.sum(1)).ravel() > 0]
    scaled = counts.multiply(1e4 / counts.sum(1)).tocsr()  # expm1 of log1p(CP10k)
    np.testing.assert_array_equal(integer_counts(scaled).toarray(), counts.toarray())
    np.testing.assert_array_equal(integer_counts(counts).toarray(), counts.toarray())
    scaled.data *= np.random.default_rng(0).uniform(0.5, 1.5, scaled.nnz)  # not counts at all
    assert integer_counts(scaled) is None


def test_sketch_is_deterministic_and_small_queries_are_skipped(kang_pair):
    ref, _, x_query, clusters = kang_pair
    one, two = build_sketch(ref.X), build_sketch(ref.X)
    assert all(np.array_equal(one[k], two[k]) for k in one)
    n_levels, n_sketch, n_pcs = one["sketch_cells"].shape
    assert n_levels == 5 and n_pcs == 30, one["sketch_cells"].shape
    assert 0.4 * ref.n_obs < n_sketch <= min(2000, ref.n_obs), n_sketch
    share = reference_share(x_query[:50], clusters[:50], one)
    assert np.isnan(share).all()


def test_mixing_level_moves_only_for_a_query_shifted_as_a_whole():
    """The share counted as fully mixed: 0.5 unless the cells' median share is below 0.3, then
    halfway towards the share of the clusters the novelty check finds known; a shifted query
    with too few such cells (< 100), or no share at all, keeps 0.5."""
    novelty = np.r_[np.full(150, 0.1), np.full(50, 0.9)]  # 150 known-looking cells, 50 new
    share = np.r_[np.full(150, 0.2), np.full(50, 0.02)]
    assert mixing_level(novelty, 0.5, share, median=0.2) == pytest.approx(0.35)
    assert mixing_level(novelty, 0.5, share, median=0.45) == 0.5
    assert mixing_level(novelty, 0.05, share, median=0.2) == 0.5  # every cluster new
    assert mixing_level(novelty[51:], 0.5, share[51:], median=0.2) == 0.5  # 99 known
    assert mixing_level(novelty, 0.5, share, median=np.nan) == 0.5
    # a known level above full mixing is not taken beyond it
    assert mixing_level(novelty, 0.5, np.full(200, 0.7), median=0.2) == 0.5


def test_unknown_score_reads_shares_relative_to_the_level():
    """A share s read against level L scores as s * 0.5 / L against 0.5 (the floor scales
    with the level); a level that is not a positive share is refused."""
    novelty, share = np.array([0.2, 0.5, 1.2]), np.array([0.05, 0.1, 0.3])
    at = unknown_score(novelty, 0.4, share, MIN_REFERENCE_SHARE, 1.6, 0.3)
    same = unknown_score(novelty, 0.4, share * 0.5 / 0.3, MIN_REFERENCE_SHARE, 1.6)
    np.testing.assert_allclose(at, same)
    # a cluster at the scaled floor has a deficit of exactly 1
    floor = MIN_REFERENCE_SHARE * 0.3 / 0.5
    assert unknown_score([0.0], 0.4, [floor], MIN_REFERENCE_SHARE, None, 0.3)[0] == 1.0
    with pytest.raises(ValueError, match="level"):
        unknown_score(novelty, 0.4, share, MIN_REFERENCE_SHARE, 1.6, 0.0)
    # the NaN a call without the mixing check records reads as 0.5
    nan_level = unknown_score(novelty, 0.4, share, MIN_REFERENCE_SHARE, 1.6, np.nan)
    np.testing.assert_array_equal(
        nan_level, unknown_score(novelty, 0.4, share, MIN_REFERENCE_SHARE, 1.6)
    )


def test_the_share_does_not_depend_on_the_order_of_the_cells(kang_pair):
    """The query side of the pool is drawn from the cells sorted by their values: the same cells
    in another order get the same shares (drawn by position, 37 of 450 CellBench cells turned
    Unknown in one order and not in another)."""
    ref, _, x_query, _ = kang_pair
    sketch = build_sketch(ref.X)
    assert x_query.shape[0] > len(np.asarray(sketch["sketch_cells"])[-1])  # a subsampled side
    share = reference_share(x_query, None, sketch)
    order = np.random.default_rng(0).permutation(x_query.shape[0])
    moved = np.abs(reference_share(x_query[order], None, sketch) - share[order])
    # float32 sums in another order move the projection by ~1e-4: a neighbour may change
    assert moved.max() <= 1 / MIXING_NEIGHBORS + 1e-6 and (moved > 0).mean() < 0.03, (
        moved.max(),
        moved.mean(),
    )
