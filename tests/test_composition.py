"""The Unknown call on a query of one population (scdl.models._composition), on real cells: Kang
2k reference, Kang 1.5k query (the same study, other processing), forced calls by logistic
regression on the reference. Standardised by its own statistics, a sorted population's mean is
its own profile and every cluster looks new; filled to the reference's composition it does
not."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import kang_reference_query, read_shared
from sklearn.linear_model import LogisticRegression

from scdl.models._composition import (
    composition_weights,
    filled_stats,
    query_fill,
    shift_is_plausible,
    shifted_query_weights,
    sketch_stats,
)
from scdl.models._mixing import MIN_REFERENCE_SHARE, build_sketch, reference_share
from scdl.models._novelty import (
    NOVELTY_RESOLUTION,
    _mean_sd,
    _type_centroids,
    cluster_cells,
    cluster_novelty,
    log_normalize,
)
from scdl.models._novelty_calibration import calibrate_threshold

POPULATIONS = ["B cells", "CD4 T cells"]  # Kang 1.5k's names


@pytest.fixture(scope="module")
def kang():
    ref, query = kang_reference_query()
    return {"query": query, "x": log_normalize(query.X), **reference(ref)}


def reference(ref) -> dict:
    """What the model keeps of a reference: the sketch, the novelty check's calibration, and
    (standing in for the model's forced calls) a logistic regression."""
    codes = np.unique(ref.obs["cell_type"].astype(str), return_inverse=True)[1]
    x_ref = log_normalize(ref.X)
    # scored below by the types' means: the threshold of that rule
    threshold, _, genes = calibrate_threshold(x_ref, codes, prototypes=False)
    return {
        "clf": LogisticRegression(C=0.01, max_iter=500).fit(x_ref, codes),
        "sketch": build_sketch(ref.X, labels=codes),
        "novelty": (threshold, genes, _type_centroids(x_ref, codes, int(codes.max()) + 1)),
    }


def test_a_mixed_query_is_left_as_it_is(kang):
    assert query_fill(kang["clf"].predict(kang["x"]), kang["sketch"]) is None


@pytest.mark.parametrize("population", POPULATIONS)
def test_one_population_is_known_once_filled(kang, population):
    rows = (kang["query"].obs["cell_type"] == population).to_numpy()
    x = kang["x"][rows]
    predicted = kang["clf"].predict(x)
    sketch = kang["sketch"]
    threshold, genes, centroids = kang["novelty"]
    # as before: the query's own statistics
    (clusters,) = cluster_cells(x)
    novel = cluster_novelty(x, clusters, predicted, centroids, genes)[0] > threshold
    apart = reference_share(x, clusters, sketch) < MIN_REFERENCE_SHARE
    assert novel.mean() >= 0.5 and apart.mean() >= 0.5, (novel.mean(), apart.mean())
    # filled to the reference's composition
    fill = query_fill(predicted, sketch)
    assert fill is not None
    assert shift_is_plausible(x, predicted, sketch, fill, centroids, genes)
    stats, part = filled_stats(x, predicted, sketch["sketch_moments"], *fill)
    assert 0 < part < 0.5  # one type of five
    (clusters,) = cluster_cells(x, resolutions=(NOVELTY_RESOLUTION * part,))
    novel = cluster_novelty(x, clusters, predicted, centroids, genes, stats=stats)[0] > threshold
    stats = sketch_stats(x, predicted, sketch, fill, _mean_sd(x))
    share = reference_share(x, clusters, sketch, stats=stats, fill=np.round(fill[0]))
    apart = share < MIN_REFERENCE_SHARE
    assert novel.mean() <= 0.15 and apart.mean() <= 0.15, (novel.mean(), apart.mean())


@pytest.fixture(scope="module")
def kang_samples():
    """Kang 1.5k: one sample (ctrl101) the reference, the three others the query; every query
    type is a reference type and the reference's every type is in the query."""
    import scanpy as sc

    cells = read_shared("kang_pbmc_1.5k.h5ad")
    ref = cells[cells.obs["sample"] == "ctrl101"]
    hv = sc.pp.highly_variable_genes(ref, flavor="seurat_v3", n_top_genes=2000, inplace=False)
    genes = ref.var_names[hv["highly_variable"].to_numpy()]
    query = cells[cells.obs["sample"] != "ctrl101", genes].copy()
    return {"query": query, "x": log_normalize(query.X), **reference(ref[:, genes].copy())}


@pytest.mark.parametrize("population", POPULATIONS)
def test_a_query_dominated_by_one_type_is_known_once_weighted(kang_samples, population):
    """The query with one type at 80% of its cells and the other cells drawn at random (every
    type kept): read with its own statistics many of its cells look new; weighted to the
    reference's composition, few do. The mixed query is not weighted."""
    data = kang_samples
    sketch = data["sketch"]
    threshold, genes, centroids = data["novelty"]
    composition = sketch["sketch_composition"]
    assert composition_weights(data["clf"].predict(data["x"]), composition) is None
    truth = data["query"].obs["cell_type"].to_numpy()
    dominant, other = np.flatnonzero(truth == population), np.flatnonzero(truth != population)
    rng = np.random.default_rng(0)
    rows = np.sort(np.r_[dominant, rng.choice(other, len(dominant) // 4, replace=False)])
    x = data["x"][rows]
    predicted = data["clf"].predict(x)
    mine = truth[rows] == population

    def flagged(stats=None, weights=None):
        (clusters,) = cluster_cells(x)
        score = cluster_novelty(x, clusters, predicted, centroids, genes, stats=stats)[0]
        share = reference_share(x, clusters, sketch, stats=stats, weights=weights)
        return (score > threshold)[mine].mean(), (share < MIN_REFERENCE_SHARE)[mine].mean()

    novel, apart = flagged()
    assert max(novel, apart) >= 0.5, (novel, apart)
    weights = composition_weights(predicted, composition)
    assert weights is not None and query_fill(predicted, sketch) is None
    novel, apart = flagged(_mean_sd(x, weights), weights)
    assert novel <= 0.15 and apart <= 0.15, (novel, apart)


def test_composition_weights_only_for_a_dominated_query_holding_every_type():
    """Weights bring the predicted composition to the reference's (mean 1); none for a query
    close to it, one not dominated by a type, one lacking a type (it is filled instead), a
    code beyond the reference's types, or a reference without shares."""
    shares = np.array([0.3, 0.4, 0.3])
    dominated = np.repeat([0, 1, 2], [160, 20, 20])  # 80% of type 0
    weights = composition_weights(dominated, shares)
    np.testing.assert_allclose(weights.mean(), 1.0)
    reweighted = np.bincount(dominated, weights=weights) / len(dominated)
    np.testing.assert_allclose(reweighted, shares)
    assert composition_weights(np.repeat([0, 1, 2], [80, 60, 60]), shares) is None  # close
    # far from the reference's, but no type holds half of it: a new population could be the
    # excess of one of the two large types
    far = np.repeat([0, 1, 2, 3], [90, 90, 10, 10])
    assert composition_weights(far, np.full(4, 0.25)) is None
    assert composition_weights(np.repeat([0, 1], [160, 40]), shares) is None  # type 2 absent
    assert composition_weights(np.repeat([0, 1, 2, 3], [160, 20, 20, 5]), shares) is None
    assert composition_weights(dominated, np.zeros(3)) is None


def test_shifted_query_weights_read_the_reference_composition_unless_it_is_dominated():
    """A shifted query's weights bring any predicted composition to the reference's (mean 1,
    each weight at most 10); none for a query lacking a type (it is filled instead), a code
    beyond the reference's types, or a reference one type dominates."""
    shares = np.array([0.3, 0.4, 0.3])
    calls = np.repeat([0, 1, 2], [20, 50, 130])
    weights = shifted_query_weights(calls, shares)
    np.testing.assert_allclose(weights.mean(), 1.0)
    np.testing.assert_allclose(np.bincount(calls, weights=weights) / len(calls), shares)
    assert weights.max() <= 10
    assert shifted_query_weights(np.repeat([0, 1], [100, 100]), shares) is None  # 2 absent
    assert shifted_query_weights(np.repeat([0, 1, 2, 3], [60, 60, 60, 5]), shares) is None
    assert shifted_query_weights(calls, np.array([0.6, 0.2, 0.2])) is None  # dominated
    assert shifted_query_weights(calls, np.zeros(3)) is None


@pytest.fixture(scope="module")
def cross_lab():
    """Kang 2k (reference) and 1,500 cells of PBMC 7k (query: another lab, donors and 10x
    run; CD8 T cells 6% of the reference, 37% of the query) on the genes both hold, in common
    type names; Kang's dendritic cells stay in the reference only."""
    kang_names = {"CD4T": "CD4 T", "CD8T": "CD8 T", "B": "B", "NK": "NK", "CD14+Mono": "Mono",
                  "FCGR3A+Mono": "Mono", "Dendritic": "DC"}  # fmt: skip
    pbmc_names = {"CD4+ T-cells": "CD4 T", "CD8+ T-cells": "CD8 T", "B-cells": "B",
                  "NK cells": "NK", "Monocytes": "Mono"}  # fmt: skip
    ref = read_shared("kang_pbmc_2k_celltypes.h5ad")
    query = read_shared("pbmc_7k_200genes.h5ad")
    genes = ref.var_names.intersection(query.var_names)
    query = query[query.obs["cell_type"].astype(str).isin(pbmc_names), genes]
    rows = np.sort(np.random.default_rng(0).choice(query.n_obs, 1500, replace=False))
    query = query[rows].copy()
    ref = ref[:, genes].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].map(kang_names).astype(str)
    query.obs["cell_type"] = query.obs["cell_type"].map(pbmc_names).astype(str)
    return {"query": query, "x": log_normalize(query.X), "ref": ref, **reference(ref)}


def test_a_shifted_query_read_at_the_reference_composition_looks_less_new(cross_lab):
    """Another lab's query mixes poorly with the reference as a whole; read with its own
    statistics (its own composition), known types' clusters look new far more often than
    read at the reference's composition (its statistics alone weighted)."""
    data = cross_lab
    sketch = data["sketch"]
    threshold, genes, centroids = data["novelty"]
    x = data["x"]
    predicted = data["clf"].predict(x)
    assert np.median(reference_share(x, None, sketch)) < 0.3  # shifted as a whole
    weights = shifted_query_weights(predicted, sketch["sketch_composition"])
    assert weights is not None and query_fill(predicted, sketch) is None
    (clusters,) = cluster_cells(x)

    def flagged(stats=None):
        score = cluster_novelty(x, clusters, predicted, centroids, genes, stats=stats)[0]
        share = reference_share(x, clusters, sketch, stats=stats)
        return (score > threshold).mean(), float(np.median(share))

    (novel, share), (novel_w, share_w) = flagged(), flagged(_mean_sd(x, weights))
    assert novel >= 0.15 and novel_w <= 0.75 * novel, (novel, novel_w)
    assert share_w > share, (share, share_w)


def test_an_annotator_reads_another_labs_query_at_the_reference_composition(cross_lab):
    """The model's call: the query mixes poorly as a whole, is read as shifted (the median
    that decided it recorded), and few of its cells (every type known) are Unknown: 1.8%,
    against 14.2% for the same model reading the query's own statistics (stop 74's code)."""
    import scvi

    from scdl.models import CellTypeTransformer

    scvi.settings.seed = 0
    ref = cross_lab["ref"].copy()
    CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = CellTypeTransformer(ref)
    model.train(max_epochs=10, enable_progress_bar=False)
    calls, _ = model.annotate_cells(cross_lab["query"].copy())
    assert calls.attrs["composition_read"] == "shifted"
    assert calls.attrs["median_reference_share"] < 0.3
    assert calls["is_unknown"].mean() <= 0.08, calls["is_unknown"].mean()
