"""The Unknown call on a query of one population (scdl.models._composition), on real cells: Kang
2k reference, Kang 1.5k query (the same study, other processing), forced calls by logistic
regression on the reference. Standardised by its own statistics, a sorted population's mean is
its own profile and every cluster looks new; filled to the reference's composition it does
not."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import kang_reference_query
from sklearn.linear_model import LogisticRegression

from scdl.models._composition import filled_stats, query_fill, shift_is_plausible, sketch_stats
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
