"""The cluster novelty behind the Unknown call (scdl.models._novelty), on real cells: Kang 2k
reference, Kang 1.5k query (the same study, other processing), forced calls by logistic
regression on the reference. A query cluster that merges two known types has their mixture as
its mean: compared with the mixture of its cells' predicted types it is known; compared with
its majority type alone (the rule before) it looked new. A reference label that covers two
states has a mean like neither: a query cluster of one state is compared with the nearest of
the label's prototypes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import kang_reference_query
from sklearn.linear_model import LogisticRegression

from scdl.models._novelty import (
    _mean_sd,
    _type_centroids,
    cluster_cells,
    cluster_novelty,
    log_normalize,
)
from scdl.models._novelty_calibration import calibrate_threshold
from scdl.models._prototypes import type_prototypes


@pytest.fixture(scope="module")
def kang():
    ref, query = kang_reference_query()
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x_ref = log_normalize(ref.X)
    x = log_normalize(query.X)
    calibration = calibrate_threshold(x_ref, codes)
    stats = _mean_sd(x_ref)
    return {
        "x": x,
        "reference_types": ref.obs["cell_type"].astype(str).to_numpy(),
        "truth": query.obs["cell_type"].astype(str).to_numpy(),
        "predicted": LogisticRegression(C=0.01, max_iter=500).fit(x_ref, codes).predict(x),
        "centroids": _type_centroids(x_ref, codes, int(codes.max()) + 1),
        "calibration": calibration,
        # the rule of the mixture tests below: types compared by their means alone
        "calibration_means": calibrate_threshold(x_ref, codes, prototypes=False),
        # as the model keeps them: over the reference's clusters, compared on the same genes
        "prototypes": type_prototypes(
            x_ref, codes, cluster_cells(x_ref, stats=stats)[0], stats, calibration[2]
        ),
    }


def test_a_cluster_of_two_known_types_is_known(kang):
    x, truth = kang["x"], kang["truth"]
    both = np.isin(truth, ["B cells", "CD14+ Monocytes"])
    clusters = (~both).astype(int)  # B cells and CD14 monocytes merged into cluster 0
    threshold, _, genes = kang["calibration_means"]
    novelty = {
        mixture: cluster_novelty(
            x,
            clusters,
            kang["predicted"],
            kang["centroids"],
            genes,
            stats=_mean_sd(x),
            mixture=mixture,
        )[0][both][0]
        for mixture in (True, False)
    }
    assert novelty[True] < threshold, (novelty, threshold)  # known
    assert novelty[False] > threshold, (novelty, threshold)  # the majority rule called it new


def test_the_query_clusters_match_their_types(kang):
    """On the query's own clusters, the known types stay below the threshold."""
    x = kang["x"]
    threshold, _, genes = kang["calibration"]
    (clusters,) = cluster_cells(x)
    score = cluster_novelty(
        x, clusters, kang["predicted"], kang["centroids"], genes, prototypes=kang["prototypes"]
    )[0]
    assert (score > threshold).mean() <= 0.05, (score > threshold).mean()


def test_query_clusters_search_exactly_up_to_the_cap_then_approximately(kang, monkeypatch):
    """Brute force grows with the square of the cells (most of a 100,000-cell ``tl.annotate``
    on one core, ~100 times that at a million): above ``QUERY_EXACT_NEIGHBORS_MAX_CELLS`` the
    query's graph is scanpy's own search. Below 8,192 cells scanpy's own is the same exact
    search, so the clusters do not move."""
    import scanpy as sc

    import scdl._neighbors as neighbors

    seen, real = [], sc.pp.neighbors
    monkeypatch.setattr(
        sc.pp, "neighbors", lambda *a, **kw: seen.append(kw.get("transformer")) or real(*a, **kw)
    )
    x = kang["x"]
    (exact,) = cluster_cells(x)
    monkeypatch.setattr(neighbors, "QUERY_EXACT_NEIGHBORS_MAX_CELLS", x.shape[0] - 1)
    (capped,) = cluster_cells(x)
    assert seen == ["sklearn", None]
    np.testing.assert_array_equal(exact, capped)


def test_a_state_its_type_label_covers_is_known(kang):
    """Kang 2k's FCGR3A+Mono label also covers most IFN-beta-stimulated CD14 monocytes (the
    scGen repository's labels), so its mean profile mixes two states. The query's own FCGR3A
    monocytes form clusters of one state: one of them most of the way to the threshold from
    the label's mean (each rule against its own calibration), all of them near one of its
    prototypes."""
    x, truth = kang["x"], kang["truth"]
    (clusters,) = cluster_cells(x)
    fcgr3a = [
        c
        for c in np.unique(clusters)
        if (clusters == c).sum() >= 50
        and np.mean(truth[clusters == c] == "FCGR3A+ Monocytes") > 0.9
    ]
    assert len(fcgr3a) >= 1
    ratios = {}
    for rule, protos in (("means", None), ("prototypes", kang["prototypes"])):
        threshold, _, genes = kang["calibration_means" if protos is None else "calibration"]
        score = cluster_novelty(
            x, clusters, kang["predicted"], kang["centroids"], genes, prototypes=protos
        )[0]
        ratios[rule] = max(score[clusters == c][0] for c in fcgr3a) / threshold
    assert ratios["prototypes"] < 0.4 < 0.6 < ratios["means"], ratios
    # the label's states are among its prototypes, one profile per gene each
    profiles, types = kang["prototypes"]
    names = list(np.unique(kang["reference_types"]))
    assert (types == names.index("FCGR3A+Mono")).sum() >= 2
    assert profiles.shape == (len(types), x.shape[1])


def test_stray_calls_do_not_make_a_mixture(kang):
    """A cluster of B cells called mostly CD4 T, a few as dendritic cells and monocytes (as a
    new type's calls scatter): below MIXTURE_MIN_SHARE the stray types stay out, and the
    cluster is compared with CD4 T cells alone, as by the majority rule."""
    from scdl.models._novelty import MIXTURE_MIN_SHARE

    x, truth = kang["x"], kang["truth"]
    b = truth == "B cells"
    clusters = (~b).astype(int)
    names = list(np.unique(kang["reference_types"]))
    predicted = kang["predicted"].copy()
    called = np.full(b.sum(), names.index("CD4T"))
    called[: int(0.15 * b.sum())] = names.index("Dendritic")
    called[int(0.15 * b.sum()) : int(0.25 * b.sum())] = names.index("FCGR3A+Mono")
    predicted[b] = called
    assert np.bincount(called).max() / b.sum() >= MIXTURE_MIN_SHARE
    _, _, genes = kang["calibration_means"]
    scores = [
        cluster_novelty(
            x, clusters, predicted, kang["centroids"], genes, stats=_mean_sd(x), mixture=m
        )[0][b][0]
        for m in (True, False)
    ]
    np.testing.assert_allclose(scores[0], scores[1])


def test_pooled_halvings_steady_the_threshold_of_a_one_batch_reference():
    """Without batches the threshold comes from random halvings of the reference; one
    halving's percentile rests on a few dozen clusters and depends on the draw. Pooling four
    halvings' clusters gives a percentile among theirs, and the threshold moves less from
    one set of halvings to the next."""
    ref, _ = kang_reference_query()
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x = log_normalize(ref.X)
    # types compared by their means: what pooling steadies is the same under either rule
    kw = {"prototypes": False}
    one = [calibrate_threshold(x, codes, seed=s, n_halvings=1, **kw)[0] for s in range(4)]
    pooled = [calibrate_threshold(x, codes, seed=s, n_halvings=4, **kw)[0] for s in (0, 4, 8)]
    assert min(one) <= pooled[0] <= max(one), (one, pooled)  # halvings 0-3 together
    assert np.std(pooled) < 0.5 * np.std(one[:3]), (one, pooled)
    assert calibrate_threshold(x, codes, seed=0)[1] == "split-half"


def test_batches_of_other_types_calibrate_on_halves_with_a_warning():
    """Batches that hold different types (sorted populations, one run each) cannot be left
    out in turn: the other batches lack the played types, and no cluster (or only another
    composition) is scored, which gave an infinite threshold. Halves are used, with a warning;
    batches that share their types (Kang's two conditions) are left out as before."""
    import warnings

    ref, _ = kang_reference_query()
    types = ref.obs["cell_type"].astype(str).to_numpy()
    codes = np.unique(types, return_inverse=True)[1]
    x = log_normalize(ref.X)
    lymphoid = np.isin(types, ["CD4T", "CD8T", "NK", "B"])
    condition = (ref.obs["condition"].astype(str) == "stimulated").to_numpy()
    halves = calibrate_threshold(x, codes, n_halvings=1, prototypes=False)
    for batches in (lymphoid, lymphoid * 2 + condition):  # two sorts; and split by condition
        with pytest.warns(UserWarning, match="batches hold different cell types"):
            sorted_runs = calibrate_threshold(
                x, codes, batches.astype(int), n_halvings=1, prototypes=False
            )
        assert sorted_runs[1] == "split-half" and np.isfinite(sorted_runs[0])
        assert sorted_runs[0] == halves[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        by_condition = calibrate_threshold(x, codes, condition.astype(int), prototypes=False)
    assert by_condition[1] == "leave-one-batch-out" and np.isfinite(by_condition[0])


def test_a_reference_of_many_batches_holds_out_a_few(monkeypatch):
    """Each part held out costs a clustering of it (two with prototypes): a reference of 24
    donors holds out ``MAX_HELD_OUT_BATCHES`` folds of whole donors, not each of the 24."""
    import scdl.models._novelty_calibration as calibration

    ref, _ = kang_reference_query()
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x = log_normalize(ref.X)
    donors = np.random.default_rng(0).integers(0, 24, ref.n_obs)
    assert np.bincount(donors).min() >= 20
    sizes = []
    real = calibration.cluster_cells
    monkeypatch.setattr(
        calibration, "cluster_cells", lambda x, **kw: sizes.append(x.shape[0]) or real(x, **kw)
    )
    threshold, how, _ = calibrate_threshold(x, codes, donors, min_cells=20, prototypes=False)
    assert how == "leave-one-batch-out" and np.isfinite(threshold)
    assert len(sizes) == calibration.MAX_HELD_OUT_BATCHES < 24


def test_many_small_donors_are_held_out_in_folds_of_every_donor():
    """A reference of many small donors (an atlas' batch key) is held out in folds that hold
    every donor, of about equal cells: only donors of 50 or more cells were held out before,
    so 40 donors of ~40-60 cells held out a few donors of ~50 cells (noisy clusters, a lax
    threshold), and 60 donors of ~30 cells fell back to random halves without a word."""
    import warnings

    from scdl.models._novelty_calibration import MAX_HELD_OUT_BATCHES, held_out_parts

    ref, _ = kang_reference_query()
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x = log_normalize(ref.X)
    donors = np.random.default_rng(0).integers(0, 60, ref.n_obs)
    assert np.bincount(donors).max() < 50
    parts = held_out_parts(donors, 50, 0)
    assert len(parts) == MAX_HELD_OUT_BATCHES
    assert (np.sum(parts, axis=0) == 1).all()  # every cell held out once
    for part in parts:  # whole donors
        assert not np.isin(np.unique(donors[part]), donors[~part]).any()
    sizes = np.sum(parts, axis=1)
    assert sizes.max() <= 1.2 * sizes.min(), sizes
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        threshold, how, _ = calibrate_threshold(x, codes, donors, prototypes=False)
    assert how == "leave-one-batch-out" and np.isfinite(threshold)
    # one large batch beside nine of 20 cells: the small ones are held out together
    lopsided = np.r_[np.zeros(1500, int), np.repeat(np.arange(1, 10), 20)]
    sizes = sorted(int(part.sum()) for part in held_out_parts(lopsided, 50, 0))
    assert len(sizes) >= 3 and sizes[-1] == 1500 and min(sizes) >= 50, sizes


def test_batches_too_small_to_leave_out_are_said():
    """With a batch key but fewer than two batches of 50 cells, the call is calibrated on
    random halves, and the user who registered the batches is told so."""
    ref, _ = kang_reference_query()
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x = log_normalize(ref.X)
    batches = np.zeros(ref.n_obs, int)
    batches[:30], batches[30:60] = 1, 2  # one large batch and two of 30 cells
    with pytest.warns(UserWarning, match="too small to leave one out"):
        threshold, how, _ = calibrate_threshold(x, codes, batches, n_halvings=1)
    assert how == "split-half"
    assert threshold == calibrate_threshold(x, codes, n_halvings=1)[0]


def test_a_rare_type_missing_from_a_small_batch_is_not_another_composition():
    """Fine labels (each type split into states of a few cells) and donors drawn at random:
    a donor lacks some rare states by chance alone, which is not the sorted populations the
    composition check is for; a type is counted missing from a part only where the part would
    hold 3 or more of its cells at the reference's composition."""
    from scdl.models._novelty_calibration import _types_shared

    ref, _ = kang_reference_query()
    types = ref.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    fine = np.char.add(types.astype(str), rng.integers(0, 40, len(types)).astype(str))
    codes = np.unique(fine, return_inverse=True)[1]
    donors = rng.integers(0, 10, len(types))
    shared = [_types_shared(codes, donors != d, donors == d) for d in range(10)]
    assert all(shared)
    # a held-out donor does lack types the others hold: the old rule refused most donors
    lacking = [np.isin(codes[donors != d], codes[donors == d]).mean() for d in range(10)]
    assert min(lacking) < 0.9
    # sorted populations are still another composition
    lymphoid = np.isin(types, ["CD4T", "CD8T", "NK", "B"])
    assert not _types_shared(codes, lymphoid, ~lymphoid)


def test_prototypes_of_a_large_reference_come_from_a_sample(monkeypatch):
    """Beyond ``PROTOTYPE_MAX_CELLS`` the prototypes are found on a random sample of that many
    cells (the clustering's exact graph costs cells squared), each sampled cell keeping its own
    label; clusters the caller passes for the whole reference are not used then."""
    import scdl.models._novelty as novelty
    from scdl.models._prototypes import type_prototypes as direct

    ref, _ = kang_reference_query()
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x = log_normalize(ref.X)
    genes = calibrate_threshold(x, codes, n_halvings=1, prototypes=False)[2]
    monkeypatch.setattr(novelty, "PROTOTYPE_MAX_CELLS", 800)
    whole = cluster_cells(x, seed=3)[0]
    profiles, types = novelty.reference_prototypes(x, codes, genes, seed=3, clusters=whole)
    rows = np.sort(np.random.default_rng(3).choice(x.shape[0], 800, False))
    sub = x[rows]
    clusters = cluster_cells(sub, seed=3, stats=_mean_sd(sub))[0]
    expected = direct(sub, codes[rows], clusters, _mean_sd(sub), genes)
    np.testing.assert_array_equal(types, expected[1])
    np.testing.assert_allclose(profiles, expected[0])
    assert len(types) > 0
