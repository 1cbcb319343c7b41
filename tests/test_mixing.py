"""The Unknown call's mixing check on real cells (Kang 2k reference, Kang 1.5k query: the same
study processed by another pipeline): a type the reference lacks has no reference neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from conftest import read_shared

from scdl.models._mixing import MIN_REFERENCE_SHARE, build_sketch, reference_share
from scdl.models._novelty import cluster_cells, log_normalize

REMOVED = "CD4 T cells"  # called CD4T in the Kang 2k file


@pytest.fixture(scope="module")
def kang_pair():
    ref = read_shared("kang_pbmc_2k_celltypes.h5ad")
    query = read_shared("kang_pbmc_1.5k.h5ad")
    genes = ref.var_names.intersection(query.var_names)
    ref, query = ref[:, genes].copy(), query[:, genes].copy()
    hv = sc.pp.highly_variable_genes(ref, flavor="seurat_v3", n_top_genes=2000, inplace=False)
    keep = genes[hv["highly_variable"].to_numpy()]
    ref, query = ref[:, keep].copy(), query[:, keep].copy()
    x_query = log_normalize(query.X)
    (clusters,) = cluster_cells(x_query)
    return ref, query, x_query, clusters


def flagged(ref, x_query, clusters) -> np.ndarray:
    sketch = build_sketch(log_normalize(ref.X))
    return reference_share(x_query, clusters, sketch) < MIN_REFERENCE_SHARE


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


def test_sketch_is_deterministic_and_small_queries_are_skipped(kang_pair):
    ref, _, x_query, clusters = kang_pair
    x_ref = log_normalize(ref.X)
    one, two = build_sketch(x_ref), build_sketch(x_ref)
    assert all(np.array_equal(one[k], two[k]) for k in one)
    n_sketch, n_pcs = one["sketch_cells"].shape
    assert n_pcs == 30 and 0.4 * ref.n_obs < n_sketch <= min(2000, ref.n_obs), n_sketch
    share = reference_share(x_query[:50], clusters[:50], one)
    assert np.isnan(share).all()
