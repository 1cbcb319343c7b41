"""Argument types users naturally pass (numpy scalars and booleans, lists of booleans, sets,
one name as a string) read as they mean, or refused naming the fix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scdl


@pytest.fixture(scope="module")
def small_vae(kang):
    import scvi

    scvi.settings.seed = 0
    adata = kang[np.random.default_rng(0).choice(kang.n_obs, 300, replace=False)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    scdl.models.VAE.setup_anndata(adata, batch_key="sample")
    model = scdl.models.VAE(adata, n_latent=5)
    # a numpy integer as devices: Lightning tested it as an empty array and failed
    model.train(max_epochs=2, accelerator="cpu", devices=np.int64(1), enable_progress_bar=False)
    return model, adata


def test_a_list_of_booleans_selects_cells_as_a_mask(small_vae):
    """scdl's check read a Python list of booleans as a mask, then passed the list on, which
    scvi-tools read as positions (IndexError in scipy)."""
    model, adata = small_vae
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[::3] = True
    latent = model.get_latent_representation(indices=mask.tolist())
    np.testing.assert_allclose(latent, model.get_latent_representation(indices=mask), atol=1e-6)
    assert latent.shape == (mask.sum(), 5)
    expr = model.get_normalized_expression(indices=mask.tolist(), library_size=1e4)
    assert expr.shape == (mask.sum(), adata.n_vars)
    assert list(expr.index) == list(adata.obs_names[mask])


def test_drug_genes_as_a_set_are_ordered_and_one_name_is_refused():
    """A set's order follows string hashing, which changes per session (the deep network's
    inputs with it: other predictions for the same seed); a string was split into letters
    and blamed on another species."""
    bulk = ad.AnnData(np.ones((3, 4), dtype=np.float32))
    bulk.var_names = ["EGFR", "KRAS", "TP53", "MYC"]
    chosen = scdl.data.select_model_genes(bulk, None, genes={"TP53", "EGFR", "MYC"})
    assert list(chosen) == ["EGFR", "MYC", "TP53"]
    with pytest.raises(TypeError, match=r"for one gene pass \['EGFR'\]"):
        scdl.data.select_model_genes(bulk, None, genes="EGFR")


def test_a_numpy_true_save_is_the_default_file_name(kang_integrated, tmp_path):
    """``save=np.bool_(True)`` (e.g. read from a config array) was taken as a path and
    failed; as ``True`` it saves under scanpy's figure folder and the default name."""
    import matplotlib.pyplot as plt
    import scanpy as sc

    adata, _ = kang_integrated
    before = sc.settings.figdir
    sc.settings.figdir = tmp_path
    try:
        scdl.pl.training_history(adata, save=np.bool_(True), show=False)
    finally:
        sc.settings.figdir = before
        plt.close("all")
    assert len(list(tmp_path.iterdir())) == 1  # in scanpy's figure format


def test_a_list_where_one_column_is_meant_is_refused_naming_it(small_vae, kang):
    """``batch_key=["sample"]`` passed scdl's check (each listed column was checked) and failed
    in scvi-tools with "unhashable type: 'list'"; a list as ``group2`` reached scvi-tools,
    which compared the whole column with it (pandas: "Lengths must match"). Both are refused
    first, the batch key with how to correct for several columns, the AnnData unchanged."""
    from conftest import assert_unchanged, snapshot

    model, adata = small_vae
    cells = kang[:200].copy()
    snap = snapshot(cells)
    for cls in (scdl.models.VAE, scdl.models.ContrastiveVAE):
        with pytest.raises(TypeError, match="join them into one"):
            cls.setup_anndata(cells, batch_key=["sample"])
        assert_unchanged(cells, snap)
    with pytest.raises(TypeError, match="labels_key` must be one obs column name"):
        scdl.models.VAE.setup_anndata(cells, labels_key=["cell_type"])
    groups = adata.obs["cell_type"].astype(str).unique()
    with pytest.raises(TypeError, match="group2 must be one value"):
        model.differential_expression(groupby="cell_type", group1=groups[0], group2=[groups[1]])
    with pytest.raises(TypeError, match="groupby must be one obs column name"):
        model.differential_expression(groupby=["cell_type"], group1=groups[0])


def test_covariate_keys_as_a_set_are_told_the_list_that_works(kang):
    """A set of covariate columns was told to pass ``[{'condition'}]``, which fails again;
    the fix named is the sorted list, and it registers."""
    cells = kang[np.random.default_rng(0).choice(kang.n_obs, 200, replace=False)].copy()
    cells.obs["donor"] = cells.obs["sample"].astype(str).str[-3:]
    assert cells.obs["donor"].nunique() > 1
    with pytest.raises(TypeError, match=r"categorical_covariate_keys=\['donor'\]") as err:
        scdl.models.VAE.setup_anndata(cells, categorical_covariate_keys={"donor"})
    assert "[{" not in str(err.value)
    scdl.models.VAE.setup_anndata(cells, categorical_covariate_keys=["donor"])


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), (1.0, TypeError), (2**40, ValueError)]
)
def test_annotator_method_seeds_are_checked_by_name(kang, seed, error):
    """The annotator's methods' ``seed`` failed in numpy without naming it (the ``tl``
    functions' ``random_state`` was checked)."""
    model = scdl.pretrained.load("pbmc_kang2018")
    cells = kang[:150].copy()
    with pytest.raises(error, match="seed must be an integer"):
        model.annotate_cells(cells, seed=seed)
    with pytest.raises(error, match="seed must be an integer"):
        model.gene_attributions(cells, n_cells=5, seed=seed)


def test_numpy_devices_are_lightnings_ints():
    """Numpy integers (a scalar, a 0-d or 1-d array, as read from a config) become the ints
    and lists Lightning tests with ``isinstance``; its own values pass unchanged."""
    from scdl.models._devices import lightning_devices

    assert lightning_devices(np.int64(1)) == 1 and type(lightning_devices(np.int64(1))) is int
    assert lightning_devices(np.asarray(1)) == 1
    assert lightning_devices(np.array([0, 1])) == [0, 1]
    assert lightning_devices((np.int32(0),)) == [0]
    for value in ("auto", 1, -1, "0,1", [0, 1], "1"):
        assert lightning_devices(value) == value


def test_counts_from_log1p_in_every_storage():
    """The counts behind log1p(normalize_total) values, whatever the target sum and the
    storage (CSR, CSC, dense); an empty row stays empty; a stored zero is no value; NaN, or a
    value that does not scale to a whole count, gives None (the caller keeps expm1)."""
    from scipy import sparse

    counts = np.array([[1, 0, 3, 7], [0, 0, 0, 0], [2, 1, 0, 40]], dtype=np.float32)
    for target in (1e4, 1e6):
        totals = counts.sum(1, keepdims=True)
        log = np.log1p(counts * target / np.where(totals > 0, totals, 1)).astype(np.float32)
        for x in (sparse.csr_matrix(log), sparse.csc_matrix(log), log):
            units = scdl.data.log1p_count_units(x)
            assert np.isnan(units[1])
            back = scdl.data.counts_from_log1p(x, units)
            np.testing.assert_array_equal(back.toarray(), counts)
        stored = sparse.csr_matrix(log)
        stored.data[0] = 0.0  # an explicit zero
        fewer = counts.copy()
        fewer[0, 0] = 0
        units = scdl.data.log1p_count_units(sparse.csr_matrix(log))
        np.testing.assert_array_equal(scdl.data.counts_from_log1p(stored, units).toarray(), fewer)
        broken = sparse.csr_matrix(log)
        broken.data[1] = np.nan
        assert scdl.data.counts_from_log1p(broken, units) is None
        rounded = sparse.csr_matrix(np.round(log, 1))
        assert scdl.data.counts_from_log1p(rounded, scdl.data.log1p_count_units(rounded)) is None
        # the depth checks' reading of CP10k values over the model's genes (each cell's
        # smallest value as one count) is the same rounding, with a 1% tolerance
        from scdl.models._depth import integer_counts

        linear = sparse.csr_matrix(np.expm1(log.astype(np.float64)))
        np.testing.assert_array_equal(integer_counts(linear).toarray(), counts)
        assert integer_counts(sparse.csr_matrix(counts)) is not None  # counts as they are
