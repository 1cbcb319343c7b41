"""``scdl.tl.map_query`` on real data: a new batch placed in a trained reference's space, the
reference's labels carried across, refusals that leave the query unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import assert_unchanged, snapshot

import scdl
from scdl.models import VAE

#: short trainings: enough to place the query near its types (accuracy 0.8+), in seconds
REF_EPOCHS, QUERY_EPOCHS = 40, 20


@pytest.fixture(scope="module")
def reference(kang):
    """Kang without sample stim107 (three samples), and its VAE."""
    ref = kang[kang.obs["sample"] != "stim107"].copy()
    model = scdl.tl.integrate(ref, batch_key="sample", max_epochs=REF_EPOCHS, progress_bar=False)
    return ref, model


@pytest.fixture
def query(kang):
    """Sample stim107 as a new batch: counts in a layer, log1p CP10k in X (scanpy's layout)."""
    q = kang[kang.obs["sample"] == "stim107"].copy()
    q.layers["counts"] = q.X.copy()
    sc.pp.normalize_total(q, target_sum=1e4)
    sc.pp.log1p(q)
    return q


def test_labels_transfer_and_the_reference_stays(reference, query):
    ref, model = reference
    before = model.get_latent_representation()
    qm = scdl.tl.map_query(
        query,
        model,
        labels_key="cell_type",
        layer="counts",
        max_epochs=QUERY_EPOCHS,
        progress_bar=False,
    )
    called = query.obs["cell_type_mapped"]
    assert isinstance(called.dtype, pd.CategoricalDtype)
    assert set(called.cat.categories) == set(ref.obs["cell_type"].astype(str))
    right = (called.astype(str) == query.obs["cell_type"].astype(str)).to_numpy()
    assert right.mean() > 0.8, right.mean()
    unc = query.obs["cell_type_mapped_uncertainty"].to_numpy()
    assert ((unc >= 0) & (unc <= 1)).all()
    # the vote's disagreement marks the wrong calls: higher on them than on the right ones
    assert unc[~right].mean() > unc[right].mean() + 0.1, (unc[~right].mean(), unc[right].mean())
    assert query.obsm["X_scdl"].shape == (query.n_obs, before.shape[1])
    params = query.uns["X_scdl"]["params"]
    assert params["mapped_onto"] == "reference" and params["max_epochs"] == QUERY_EPOCHS
    assert params["batch_key"] == "sample" and params["layer"] == "counts"
    np.testing.assert_array_equal(model.get_latent_representation(), before)
    assert qm.summary_stats.n_batch == 4
    assert not any(c.startswith("_scvi") for c in query.obs.columns)  # the tool's own copy
    # the mapped query clusters as an integrated dataset does (tl.cluster reads uns)
    scdl.tl.cluster(query, use_rep="X_scdl", resolution=0.5)
    assert query.obs["scdl_cluster"].nunique() > 1


def test_same_seed_same_map(reference, query):
    _, model = reference
    a, b = query.copy(), query.copy()
    for q in (a, b):
        scdl.tl.map_query(
            q, model, layer="counts", max_epochs=5, random_state=3, progress_bar=False
        )
    np.testing.assert_array_equal(a.obsm["X_scdl"], b.obsm["X_scdl"])
    assert "cell_type_mapped" not in a.obs  # no labels_key: mapped only


def test_a_saved_reference_maps_and_needs_its_cells_for_labels(reference, query, tmp_path):
    _, model = reference
    model.save(tmp_path / "with_cells", save_anndata=True)
    model.save(tmp_path / "without_cells")
    scdl.tl.map_query(
        query,
        tmp_path / "with_cells",
        labels_key="cell_type",
        labels_added="predicted",
        layer="counts",
        max_epochs=5,
        progress_bar=False,
    )
    assert {"predicted", "predicted_uncertainty"} <= set(query.obs.columns)
    snap = snapshot(query)
    with pytest.raises(ValueError, match="holds no cells.*VAE.load"):
        scdl.tl.map_query(
            query, VAE.load(tmp_path / "without_cells", adata=False), labels_key="cell_type"
        )
    assert_unchanged(query, snap)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("missing_genes", ValueError, "lacks 10 of the model's"),
        ("no_batch_column", KeyError, "sample"),
        ("unknown_labels_key", KeyError, "labels_key='celltype'.*Did you mean 'cell_type'"),
        ("not_counts", ValueError, "integer"),
        ("missing_layer", KeyError, "raw"),
    ],
)
def test_wrong_input_is_refused_and_the_query_kept(reference, query, change, error, match):
    _, model = reference
    kwargs = {"layer": "counts", "labels_key": "cell_type", "max_epochs": 2}
    if change == "missing_genes":
        query = query[:, query.var_names[10:]].copy()
    elif change == "no_batch_column":
        del query.obs["sample"]
    elif change == "unknown_labels_key":
        kwargs["labels_key"] = "celltype"
    elif change == "not_counts":
        kwargs["layer"] = None  # X holds log1p CP10k
    else:
        kwargs["layer"] = "raw"
    snap = snapshot(query)
    with pytest.raises(error, match=match):
        scdl.tl.map_query(query, model, progress_bar=False, **kwargs)
    assert_unchanged(query, snap)
