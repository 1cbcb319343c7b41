"""Covariates beside the batch, as scvi-tools registers them: scaled, checked, mapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _measures import label_purity
from conftest import assert_unchanged, snapshot

import scdl
from scdl.models import VAE

FAST = {"max_epochs": 30, "enable_progress_bar": False}


@pytest.fixture()
def kang_qc(kang):
    """Kang with the per-cell numbers users pass as continuous covariates."""
    adata = kang.copy()
    counts = adata.X
    adata.obs["total_counts"] = np.asarray(counts.sum(1)).ravel()  # hundreds to thousands
    adata.obs["n_genes"] = np.asarray((counts > 0).sum(1)).ravel().astype(np.int64)
    adata.obs["donor"] = adata.obs["sample"].astype(str).str[-3:].astype(int)
    return adata


def _latent(adata, **setup):
    import scvi

    a = adata.copy()
    VAE.setup_anndata(a, batch_key="condition", **setup)
    scvi.settings.seed = 0
    model = VAE(a)
    model.train(**FAST)
    return model, model.get_latent_representation()


def test_a_covariate_in_thousands_keeps_the_cell_types_apart(kang_qc):
    """Raw total counts (hundreds to thousands) fed unscaled to the encoder's first layer
    outweighed the genes under the layer norm: cell types mixed (kNN purity 0.49 against 0.87
    without the covariate; scvi-tools' SCVI 0.72). The model standardises it, so its units
    do not matter."""
    types = kang_qc.obs["cell_type"]
    _, plain = _latent(kang_qc)
    model, z = _latent(kang_qc, continuous_covariate_keys=["total_counts", "n_genes"])
    # a depth covariate takes some of what depth tells of type: a little purity, not half
    assert label_purity(z, types) >= label_purity(plain, types) - 0.05
    center = model.module.cont_cov_center.numpy()
    np.testing.assert_allclose(center[0], kang_qc.obs["total_counts"].mean(), rtol=1e-5)
    # the network reads the same numbers whatever the units (the trained latents then differ
    # by float rounding only, which training amplifies)
    thousands = kang_qc.copy()
    thousands.obs["total_counts"] = thousands.obs["total_counts"] / 1000
    VAE.setup_anndata(
        thousands, batch_key="condition", continuous_covariate_keys=["total_counts", "n_genes"]
    )
    other = VAE(thousands)
    seen = []
    for m in (model, other):
        tensors = next(iter(m._make_data_loader(m.adata, indices=np.arange(64), batch_size=64)))
        seen.append(m.module._get_inference_input(tensors)["cont_covs"])
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-5, atol=1e-5)
    assert float(seen[0].abs().max()) < 10


def test_query_cells_are_scaled_as_the_reference_was(kang_qc, tmp_path):
    """A query is standardised by the reference's mean and sd, kept with the saved weights,
    not by its own (its cells' depth is part of what the covariate tells)."""
    is_ref = (kang_qc.obs["donor"] != 107).to_numpy()
    ref, query = kang_qc[is_ref].copy(), kang_qc[~is_ref].copy()
    query.obs["total_counts"] *= 3  # deeper sequencing than any reference cell
    model, _ = _latent(ref, continuous_covariate_keys=["total_counts"])
    model.save(tmp_path / "ref")
    loaded = VAE.load(tmp_path / "ref", adata=query.copy())
    mapped = VAE.load_query_data(query.copy(), tmp_path / "ref")
    for other in (loaded, mapped):
        for name in ("cont_cov_center", "cont_cov_scale"):
            torch.testing.assert_close(
                getattr(other.module, name), getattr(model.module, name), rtol=0, atol=0
            )
    z = loaded.get_latent_representation()
    assert np.isfinite(z).all() and z.shape == (query.n_obs, 10)


def test_weights_saved_before_the_scaling_read_covariates_raw(kang_qc):
    """A state without the scaling (saved by an earlier scdl) loads as center 0, scale 1:
    the covariates reach the network as they did when it was trained."""
    model, z = _latent(kang_qc, continuous_covariate_keys=["n_genes"])
    state = {k: v for k, v in model.module.state_dict().items() if not k.startswith("cont_cov_")}
    model.module.load_state_dict(state)
    assert model.module.cont_cov_center.tolist() == [0.0]
    assert model.module.cont_cov_scale.tolist() == [1.0]
    assert not np.allclose(model.get_latent_representation(), z)


def test_a_query_covariate_that_is_missing_or_not_finite_is_named(kang_qc):
    model, _ = _latent(kang_qc, continuous_covariate_keys=["n_genes"])
    query = kang_qc[:50].copy()
    query.obs_names = [f"q{i}" for i in range(query.n_obs)]
    query.obs["n_genes"] = query.obs["n_genes"].astype(float)
    query.obs.iloc[3, query.obs.columns.get_loc("n_genes")] = np.inf
    snap = snapshot(query)
    with pytest.raises(ValueError, match=r"adata.obs\['n_genes'\] has 1 infinite"):
        model.get_latent_representation(query)
    query.obs.iloc[3, query.obs.columns.get_loc("n_genes")] = np.nan
    snap = snapshot(query)
    with pytest.raises(ValueError, match=r"adata.obs\['n_genes'\] has 1 missing"):
        model.get_normalized_expression(query)
    assert_unchanged(query, snap)
    del query.obs["n_genes"]
    with pytest.raises(KeyError, match="lacks the column 'n_genes', a continuous covariate"):
        model.get_latent_representation(query)
    with pytest.raises(KeyError, match="lacks 'n_genes', which the reference was set up with"):
        VAE.load_query_data(query, model)


def test_a_query_covariate_of_another_kind_is_refused_before_mapping(kang_qc):
    """A query holding the reference's numbered donors as text got a mapping of text
    categories, and its model then refused the reference's own cells."""
    is_ref = (kang_qc.obs["donor"] != 107).to_numpy()
    ref, query = kang_qc[is_ref].copy(), kang_qc[~is_ref].copy()
    model, _ = _latent(ref, categorical_covariate_keys=["donor"])
    query.obs["donor"] = query.obs["donor"].astype(str)
    snap = snapshot(query)
    with pytest.raises(TypeError, match=r"holds str values.*astype\(int\)"):
        VAE.load_query_data(query, model)
    assert_unchanged(query, snap)


def test_a_covariate_named_twice_is_refused(kang_qc):
    snap = snapshot(kang_qc)
    with pytest.raises(ValueError, match=r"names \['n_genes'\] more than once"):
        VAE.setup_anndata(kang_qc, continuous_covariate_keys=["n_genes", "n_genes"])
    with pytest.raises(ValueError, match=r"names \['donor'\] more than once"):
        VAE.setup_anndata(kang_qc, categorical_covariate_keys=["donor", "donor"])
    with pytest.raises(TypeError, match=r"must be a list.*\['n_genes'\]"):
        scdl.tl.integrate(kang_qc, continuous_covariate_keys="n_genes")
    assert_unchanged(kang_qc, snap)


def test_tl_integrate_conditions_on_covariates(kang_qc):
    adata = kang_qc.copy()
    scdl.tl.integrate(
        adata,
        batch_key="condition",
        categorical_covariate_keys=["donor"],
        continuous_covariate_keys=["total_counts"],
        n_top_genes=500,
        max_epochs=30,
        progress_bar=False,
    )
    params = adata.uns["X_scdl"]["params"]
    assert list(params["categorical_covariate_keys"]) == ["donor"]
    assert list(params["continuous_covariate_keys"]) == ["total_counts"]
    assert label_purity(adata.obsm["X_scdl"], adata.obs["cell_type"]) > 0.75


def test_batches_of_one_or_two_cells_are_named_by_their_values(kang_qc):
    """scvi-tools' own warning names one integer code in a column the user never sees
    ("Category 2 in adata.obs['_scvi_batch']"); every small batch or covariate level is named
    by its value instead."""
    import warnings

    cells = kang_qc.copy()
    donor = cells.obs["sample"].astype(str).to_numpy().copy()
    donor[:2], donor[2] = "tiny", "one"
    cells.obs["donor"] = donor
    cells.obs["lane"] = np.where(np.arange(cells.n_obs) == 5, "L9", "L1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VAE.setup_anndata(cells, batch_key="donor", categorical_covariate_keys=["lane"])
    messages = [str(w.message) for w in caught]
    assert any(
        "`batch_key='donor'` has 2 categories" in m and "'tiny' (2), 'one' (1)" in m
        for m in messages
    ), messages
    assert any("'L9' (1)" in m for m in messages), messages
    assert not any("has fewer than 3 cells. Models may not" in m for m in messages), messages
