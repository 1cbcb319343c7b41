"""Valid input that scvi-tools and scanpy accept trains with default settings.

All-zero genes (common after subsetting cells) and datasets smaller than one minibatch are
valid: every model and ``tl`` step takes them, with at most a log line or a warning.
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import read_shared
from scipy import sparse
from sklearn.neighbors import KNeighborsClassifier

import scdl
from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE


def _n_zero_genes(adata) -> int:
    return int((np.asarray(adata.X.sum(0)).ravel() == 0).sum())


@pytest.fixture(scope="module")
def two_chemistries():
    """CellBench lung lines from two chemistries (CEL-seq2, Drop-seq) without one line.

    Leaving H2228's cells out leaves genes with no counts in any remaining cell, as
    subsetting a public reference does; no gene is filtered.
    """
    ref = read_shared("cellbench_lung_lines_2batches.h5ad")
    ref = ref[(ref.obs["demuxlet"] == "SNG") & (ref.obs["cell_line"] != "H2228")].copy()
    return ref


@pytest.fixture(scope="module")
def three_plates(two_chemistries):
    """Query: singlets of the same lines on three new CEL-seq2 plates (new batches)."""
    query = read_shared("cellbench_lung_5lines_3plates.h5ad")
    lines = two_chemistries.obs["cell_line"].unique()
    keep = (query.obs["demuxlet"] == "SNG") & query.obs["cell_line"].isin(lines)
    return query[keep.to_numpy()].copy()


def test_reference_with_all_zero_genes_integrates_and_maps_a_query(
    two_chemistries, three_plates, caplog
):
    import scvi

    ref, query = two_chemistries.copy(), three_plates.copy()
    assert _n_zero_genes(ref) > 0  # the case under test
    scvi.settings.seed = 0
    with caplog.at_level(logging.INFO, logger="scdl"):
        VAE.setup_anndata(ref, batch_key="batch")
    assert sum("no counts in any cell" in r.getMessage() for r in caplog.records) == 1
    vae = VAE(ref)
    assert vae.summary_stats.n_vars == ref.n_vars  # every gene kept
    vae.train(max_epochs=20, enable_progress_bar=False)
    query_model = VAE.load_query_data(query, vae)
    query_model.train(max_epochs=20, enable_progress_bar=False, plan_kwargs={"weight_decay": 0})
    z_ref = vae.get_latent_representation()
    z_query = query_model.get_latent_representation(query)
    assert np.isfinite(z_ref).all() and np.isfinite(z_query).all()
    # the mapped cells land next to reference cells of their own line
    knn = KNeighborsClassifier(15).fit(z_ref, ref.obs["cell_line"].to_numpy())
    accuracy = (knn.predict(z_query) == query.obs["cell_line"].to_numpy()).mean()
    assert accuracy > 0.9, accuracy


def test_every_model_and_tl_step_keeps_all_zero_genes(two_chemistries):
    ref = two_chemistries
    zero = ref.var_names[np.asarray(ref.X.sum(0)).ravel() == 0]
    assert len(zero) > 0
    fast = {"max_epochs": 2, "enable_progress_bar": False}

    a = ref.copy()
    ContrastiveVAE.setup_anndata(a, batch_key="batch")
    model = ContrastiveVAE(a)
    model.train(groupby="cell_line", background="HCC827", **fast)
    assert np.isfinite(model.get_latent_representation(representation="salient")).all()

    a = ref.copy()
    CellTypeTransformer.setup_anndata(a, labels_key="cell_line")
    annotator = CellTypeTransformer(a)
    annotator.train(**fast)
    assert set(annotator.predict(a, unknown=False)) <= set(ref.obs["cell_line"])

    # the tl steps choose expressed genes themselves: the all-zero ones are not used
    a = ref.copy()
    scdl.tl.integrate(a, batch_key="batch", max_epochs=2, progress_bar=False)
    scdl.tl.contrastive(
        a, groupby="cell_line", background="HCC827", max_epochs=2, progress_bar=False
    )
    for key in ("X_scdl", "X_scdl_salient"):
        assert not set(zero) & set(a.uns[key]["var_names"])
        assert np.isfinite(a.obsm[key]).all()


# --- smaller than one minibatch: trains with the default batch size ----------------------
# max_epochs is the one setting given: the default (400 epochs for 100 cells, as scvi-tools
# chooses) costs minutes of Lightning's per-epoch overhead; 40 still validates every 2 epochs

SMALL_EPOCHS = {"max_epochs": 40, "enable_progress_bar": False}


@pytest.fixture()
def hundred_cells(kang):
    """100 real cells of the bundled Kang set (all four samples, both conditions)."""
    idx = np.sort(np.random.default_rng(0).choice(kang.n_obs, 100, replace=False))
    return kang[idx].copy()


def _trains_with_a_warning(train) -> None:
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        train()


def test_vae_trains_on_100_cells(hundred_cells):
    adata = hundred_cells
    VAE.setup_anndata(adata, batch_key="sample")
    model = VAE(adata)
    _trains_with_a_warning(lambda: model.train(**SMALL_EPOCHS))
    elbo = model.history["elbo_train"].iloc[:, 0]
    assert elbo.iloc[-1] < elbo.iloc[0]
    assert np.isfinite(model.get_latent_representation()).all()


def test_contrastive_trains_on_100_cells(hundred_cells):
    adata = hundred_cells
    ContrastiveVAE.setup_anndata(adata)
    model = ContrastiveVAE(adata)
    _trains_with_a_warning(
        lambda: model.train(groupby="condition", background="ctrl", **SMALL_EPOCHS)
    )
    salient = model.get_latent_representation(representation="salient")
    assert np.isfinite(salient).all()
    assert (salient[adata.obs["condition"].to_numpy() == "ctrl"] == 0).all()


def test_annotator_trains_on_100_cells(hundred_cells, kang):
    adata = hundred_cells
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTypeTransformer(adata)
    _trains_with_a_warning(lambda: model.train(**SMALL_EPOCHS))
    # 100 cells are enough to tell most of the other 1,456 cells' types
    rest = kang[~kang.obs_names.isin(adata.obs_names)].copy()
    accuracy = (model.predict(rest, unknown=False) == rest.obs["cell_type"].to_numpy()).mean()
    assert accuracy > 0.6, accuracy


def test_tl_steps_on_100_cells(hundred_cells):
    adata = hundred_cells
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        scdl.tl.integrate(adata, batch_key="sample", max_epochs=10, progress_bar=False)
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        scdl.tl.contrastive(
            adata, groupby="condition", background="ctrl", max_epochs=10, progress_bar=False
        )
    scdl.tl.cluster(adata, use_rep="X_scdl")
    # the bundled set holds 1,267 genes, 214 of the shipped annotator's 2,000
    scdl.tl.annotate(adata, model="pbmc_kang2018", min_gene_overlap=0.1)
    assert np.isfinite(adata.obsm["X_scdl"]).all()
    assert np.isfinite(adata.obsm["X_scdl_salient"]).all()
    assert adata.obs["scdl_cluster"].nunique() >= 2
    assert adata.obs["scdl_cell_type"].notna().all()


def test_a_batch_column_of_one_category_trains_as_one_batch(hundred_cells):
    """One sample's cells with its batch column (a per-sample pipeline), as scvi-tools
    registers them: a warning, one batch, and clustering without Harmony."""
    adata = hundred_cells[hundred_cells.obs["sample"] == hundred_cells.obs["sample"].iloc[0]]
    adata = adata.copy()
    with pytest.warns(UserWarning, match="has one category .*nothing to correct"):
        scdl.tl.integrate(adata, batch_key="sample", max_epochs=5, progress_bar=False)
    assert adata.uns["X_scdl"]["params"]["batch_key"] == "sample"
    assert np.isfinite(adata.obsm["X_scdl"]).all()
    scdl.tl.cluster(adata)
    assert "harmonised" not in adata.uns["scdl_cluster_neighbors"]["params"]["pca"]
    # the fix it names keeps a reference mappable: without the key it has no batch weights
    with pytest.warns(UserWarning, match="one category.*keep it on a reference.*load_query"):
        VAE.setup_anndata(adata, batch_key="sample")
    assert VAE(adata).summary_stats.n_batch == 1


def test_integer_and_dense_counts_train_like_float_csr(hundred_cells):
    """Counts stored as integers or as a dense array are the same counts."""
    import scvi

    latents = []
    for convert in (
        lambda x: x,
        lambda x: x.astype(np.int32),
        lambda x: x.toarray().astype(np.int64),
    ):
        a = hundred_cells.copy()
        a.X = convert(a.X)
        scvi.settings.seed = 0
        VAE.setup_anndata(a, batch_key="sample")
        model = VAE(a)
        with pytest.warns(UserWarning, match="one minibatch per epoch"):
            model.train(max_epochs=5, enable_progress_bar=False)
        latents.append(model.get_latent_representation())
    assert sparse.issparse(hundred_cells.X)
    np.testing.assert_allclose(latents[1], latents[0], atol=1e-5)
    np.testing.assert_allclose(latents[2], latents[0], atol=1e-5)


def _three_hundred(kang):
    idx = np.sort(np.random.default_rng(0).choice(kang.n_obs, 300, replace=False))
    return kang[idx].copy()


def test_tl_steps_take_a_batch_of_one_or_a_few_cells(kang):
    """seurat_v3 cannot rank genes within a batch of a few cells (a singular loess fit; one
    cell crashed the process): such batches are ranked together or left out of the ranking,
    and every cell is still trained on."""
    import scanpy as sc

    adata = _three_hundred(kang)  # every sample holds >= 50 of these cells
    adata.obs["run"] = adata.obs["sample"].astype(str)
    adata.obs.iloc[0, adata.obs.columns.get_loc("run")] = "one_cell"
    scdl.tl.integrate(adata, batch_key="run", n_top_genes=300, max_epochs=1, progress_bar=False)
    # the genes are scanpy's per-batch ranking over the other batches
    rest = adata[1:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    hvg = sc.pp.highly_variable_genes(
        rest, flavor="seurat_v3", n_top_genes=300, batch_key="run", inplace=False
    )
    chosen = rest.var_names[hvg["highly_variable"].to_numpy()]
    assert list(adata.uns["X_scdl"]["var_names"]) == list(chosen)
    assert np.isfinite(adata.obsm["X_scdl"]).all() and adata.obsm["X_scdl"].shape[0] == 300

    adata.obs.iloc[:20, adata.obs.columns.get_loc("run")] = "twenty_cells"
    scdl.tl.contrastive(
        adata,
        groupby="condition",
        background="ctrl",
        batch_key="run",
        n_top_genes=300,
        max_epochs=1,
        progress_bar=False,
    )
    assert np.isfinite(adata.obsm["X_scdl_salient"]).all()


def test_genes_without_counts_never_take_a_highly_variable_place(kang):
    """Every gene is ranked in place (a column subset would copy the matrix). In a batch with
    fewer variable genes than n_top_genes, scanpy's ranking gives genes without counts a place
    (the case below); the n_top_genes chosen are expressed ones all the same, in the user's
    order."""
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    cells = _three_hundred(kang)
    adata = ad.AnnData(
        sparse.hstack([cells.X, sparse.csr_matrix((cells.n_obs, 200))], format="csr"),
        obs=cells.obs.copy(),
    )
    adata.var_names = [*cells.var_names, *(f"empty{i}" for i in range(200))]
    adata.obs["run"] = np.where(np.arange(adata.n_obs) < 60, "small", "large")
    expressed = adata.var_names[np.asarray(adata.X.sum(0)).ravel() > 0]
    n_top = len(expressed) - 1
    scanpys = sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_top, batch_key="run", inplace=False
    )
    assert scanpys.loc[~adata.var_names.isin(expressed), "highly_variable"].any()  # the case
    model = scdl.tl.integrate(
        adata, batch_key="run", n_top_genes=n_top, max_epochs=1, progress_bar=False
    )
    genes = list(adata.uns["X_scdl"]["var_names"])
    assert len(genes) == n_top and set(genes) <= set(expressed)
    assert genes == [g for g in expressed if g in set(genes)]  # in the user's order
    assert model.adata.n_vars == n_top


def test_integrate_on_too_few_cells_to_rank_genes_uses_every_expressed_gene(kang):
    """seurat_v3's loess is singular on 10 cells: all expressed genes, with a warning."""
    adata = _three_hundred(kang)[:10].copy()
    expressed = adata.var_names[np.asarray(adata.X.sum(0)).ravel() > 0]
    assert len(expressed) > 300  # the ranking is needed
    with pytest.warns(UserWarning, match="could not be ranked on 10 cells.*every expressed gene"):
        scdl.tl.integrate(adata, n_top_genes=300, max_epochs=1, progress_bar=False)
    assert list(adata.uns["X_scdl"]["var_names"]) == list(expressed)
    assert np.isfinite(adata.obsm["X_scdl"]).all()


def test_integrate_ranks_genes_on_a_few_hundred_droplet_cells():
    """500 droplet cells hold ~1,500 genes seen in one cell, which make seurat_v3's loess
    singular over every gene (scanpy raises): the genes with counts in >= 3 cells are ranked,
    and n_top_genes holds (before: every expressed gene, with a warning blaming the cells)."""
    full = read_shared("kang_pbmc_14k.h5ad")
    adata = full[np.sort(np.random.default_rng(0).choice(full.n_obs, 500, replace=False))].copy()
    detected = np.asarray((adata.X > 0).sum(0)).ravel()
    assert (detected == 1).sum() > 1000  # the case: many genes seen in one cell
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning
        scdl.tl.integrate(adata, n_top_genes=2000, max_epochs=1, progress_bar=False)
    genes = pd.Index(adata.uns["X_scdl"]["var_names"])
    assert len(genes) == 2000
    assert (detected[adata.var_names.get_indexer(genes)] >= 3).all()
    # scanpy's ranking of the same genes after sc.pp.filter_genes(min_cells=3)
    import scanpy as sc

    filtered = adata[:, detected >= 3].copy()
    hvg = sc.pp.highly_variable_genes(filtered, flavor="seurat_v3", n_top_genes=2000, inplace=False)
    assert set(genes) == set(filtered.var_names[hvg["highly_variable"].to_numpy()])
    # stored zeros are not detections: counts thinned in place (zeros left stored) pick the
    # genes the same counts pick without them (counting stored entries took 10,348 genes)
    thinned = adata.copy()
    rng = np.random.default_rng(1)
    thinned.X.data = rng.binomial(thinned.X.data.astype(np.int64), 0.5).astype(np.float32)
    clean = thinned.copy()
    clean.X.eliminate_zeros()
    assert (thinned.X.data == 0).sum() > 10_000
    for a in (thinned, clean):
        scdl.tl.integrate(a, n_top_genes=2000, max_epochs=1, progress_bar=False)
    assert list(thinned.uns["X_scdl"]["var_names"]) == list(clean.uns["X_scdl"]["var_names"])
    assert len(clean.uns["X_scdl"]["var_names"]) == 2000


def test_genes_are_ranked_within_batches_of_a_few_hundred_cells():
    """800 cells in two conditions: the trend within each batch is singular over every gene
    and fits over the genes seen in >= 3 cells, so the batches are kept (before: "ranked
    ignoring the batches"), as scanpy's filter_genes(min_cells=3) + seurat_v3 keeps them."""
    import scanpy as sc

    full = read_shared("kang_pbmc_2k_celltypes.h5ad")
    adata = full[np.sort(np.random.default_rng(1).choice(full.n_obs, 800, replace=False))].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        scdl.tl.integrate(
            adata, batch_key="condition", n_top_genes=2000, max_epochs=1, progress_bar=False
        )
    filtered = adata.copy()
    sc.pp.filter_genes(filtered, min_cells=3)
    hvg = sc.pp.highly_variable_genes(
        filtered, flavor="seurat_v3", n_top_genes=2000, batch_key="condition", inplace=False
    )
    expected = set(filtered.var_names[hvg["highly_variable"].to_numpy()])
    assert set(adata.uns["X_scdl"]["var_names"]) == expected


def test_tl_integrate_takes_a_scipy_sparse_array(kang):
    """anndata holds csr_array; scvi-tools registers csr_matrix: the tl step converts its own
    copy (the user's matrix stays a csr_array) and trains on the same counts."""
    import scvi

    latents = []
    for convert in (lambda x: x, sparse.csr_array):
        adata = _three_hundred(kang)
        adata.X = convert(adata.X)
        scvi.settings.seed = 0
        scdl.tl.integrate(
            adata, batch_key="sample", n_top_genes=300, max_epochs=1, progress_bar=False
        )
        latents.append(adata.obsm["X_scdl"])
    assert isinstance(adata.X, sparse.csr_array)
    np.testing.assert_allclose(latents[1], latents[0], atol=1e-5)


def test_vae_with_covariates_trains_and_saves(hundred_cells, tmp_path):
    """Categorical and continuous covariates (as scvi-tools takes them) train and reload."""
    adata = hundred_cells
    adata.obs["log_counts"] = np.log1p(np.asarray(adata.X.sum(1)).ravel())
    VAE.setup_anndata(
        adata,
        batch_key="sample",
        categorical_covariate_keys=["condition"],
        continuous_covariate_keys=["log_counts"],
    )
    model = VAE(adata)
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        model.train(max_epochs=10, enable_progress_bar=False)
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    again = VAE.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(again.get_latent_representation(), z)


# --- fewer than 10 cells: no validation cell is left at train_size=0.9 ---------------------


@pytest.fixture()
def five_cells(kang):
    """Five real cells: two types in both conditions, and a third type."""
    ct, cond = kang.obs["cell_type"].to_numpy(), kang.obs["condition"].to_numpy()
    pairs = [("B cells", "ctrl"), ("B cells", "stim"), ("CD14+ Monocytes", "ctrl")]
    pairs += [("CD14+ Monocytes", "stim"), ("CD4 T cells", "ctrl")]
    idx = [np.flatnonzero((ct == t) & (cond == c))[0] for t, c in pairs]
    adata = kang[sorted(idx)].copy()
    return adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()


def test_every_model_trains_on_five_cells(five_cells):
    fast = {"max_epochs": 3, "enable_progress_bar": False}
    a = five_cells.copy()
    VAE.setup_anndata(a)
    vae = VAE(a)
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        vae.train(**fast)
    assert np.isfinite(vae.get_latent_representation()).all()

    a = five_cells.copy()
    ContrastiveVAE.setup_anndata(a)
    cvae = ContrastiveVAE(a)
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        cvae.train(groupby="condition", background="ctrl", **fast)
    assert np.isfinite(cvae.get_latent_representation(representation="salient")).all()

    a = five_cells.copy()
    CellTypeTransformer.setup_anndata(a, labels_key="cell_type")
    annotator = CellTypeTransformer(a)
    with pytest.warns(UserWarning, match="No reference cell is held out"):
        annotator.train(**fast)
    assert set(annotator.predict(a, unknown=False)) <= set(a.obs["cell_type"])

    a = five_cells.copy()
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        scdl.tl.integrate(a, max_epochs=2, progress_bar=False)
    assert np.isfinite(a.obsm["X_scdl"]).all()


# --- cells without counts: kept, with a warning (scvi-tools and scanpy take them) ----------


@pytest.mark.parametrize("likelihood", ["nb", "poisson"])
def test_empty_cells_are_kept_with_a_warning(hundred_cells, likelihood):
    adata = hundred_cells
    x = adata.X.tolil()
    x[3, :] = 0
    adata.X = x.tocsr()
    with pytest.warns(UserWarning, match=r"1 of 100 cells have no counts.*filter_cells"):
        VAE.setup_anndata(adata)
    model = VAE(adata, gene_likelihood=likelihood)  # log(0) library: Poisson refused it
    with pytest.warns(UserWarning, match="one minibatch per epoch"):
        model.train(max_epochs=5, enable_progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()
    assert np.isfinite(model.get_normalized_expression().to_numpy()).all()


def test_integrate_keeps_cells_without_counts_in_the_chosen_genes(hundred_cells):
    """20 highly variable genes leave some cells without counts in them: valid, said once."""
    adata = hundred_cells
    with pytest.warns(UserWarning, match="cells have no counts in the 20 genes trained on") as w:
        scdl.tl.integrate(adata, n_top_genes=np.int64(20), max_epochs=2, progress_bar=False)
    genes = list(adata.uns["X_scdl"]["var_names"])
    assert (np.asarray(adata[:, genes].X.sum(1)).ravel() == 0).any()  # the case under test
    assert np.isfinite(adata.obsm["X_scdl"]).all()
    # its fix (they hold counts in other genes: a filter on all genes dropped none of them)
    said = next(str(r.message) for r in w if "cells have no counts" in str(r.message))
    assert "Raise `n_top_genes`, or pass `n_top_genes=None` to train on every" in said
    assert (np.asarray(adata.X.sum(1)).ravel() > 0).all()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*cells have no counts")
        scdl.tl.integrate(adata, n_top_genes=None, max_epochs=2, progress_bar=False)


def test_load_query_data_takes_a_view(kang):
    ref = kang[kang.obs["sample"] != "stim107"].copy()
    ref = ref[np.random.default_rng(0).choice(ref.n_obs, 200, replace=False)].copy()
    VAE.setup_anndata(ref, batch_key="sample")
    vae = VAE(ref)
    vae.train(max_epochs=2, enable_progress_bar=False)
    view = kang[kang.obs["sample"] == "stim107"]
    query_model = VAE.load_query_data(view, vae)
    query_model.train(max_epochs=2, enable_progress_bar=False, plan_kwargs={"weight_decay": 0})
    assert query_model.get_latent_representation().shape[0] == view.n_obs
    assert view.is_view and not any(c.startswith("_scvi") for c in view.obs.columns)
    # a query of a batch the reference knows: mapping it would move that batch's cells
    known = kang[kang.obs["sample"] == "ctrl101"][:50].copy()
    with pytest.warns(UserWarning, match=r"batches the reference was trained on \(\['ctrl101'\]"):
        VAE.load_query_data(known, vae)


def test_cli_annotates_a_dataset_holding_few_of_the_model_genes(hundred_cells, tmp_path):
    """The bundled set holds 214 of the shipped annotator's 2,000 genes (refused at 0.5)."""
    from scdl.cli import main

    hundred_cells.write_h5ad(tmp_path / "in.h5ad")
    args = ["annotate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out.h5ad")]
    assert main([*args, "--min-gene-overlap", "0.1"]) == 0
    import anndata as ad

    assert ad.read_h5ad(tmp_path / "out.h5ad").obs["scdl_cell_type"].notna().all()


def test_baseline_pca_reads_log_normalised_data_as_its_counts(hundred_cells):
    """unintegrated_pca (tl.integration_metrics' baseline) on log1p(CP10k) is the PCA of the
    counts it came from, not a second normalisation of it."""
    import scanpy as sc

    counts = hundred_cells.copy()
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    with pytest.warns(UserWarning, match="log"):
        from_log = scdl.data.unintegrated_pca(lognorm, n_comps=5)
    from_counts = scdl.data.unintegrated_pca(counts, n_comps=5)
    np.testing.assert_allclose(np.abs(from_log), np.abs(from_counts), rtol=1e-3, atol=1e-3)


def _message(caught) -> str:
    return next(str(w.message) for w in caught if "needs at least 100" in str(w.message))


def test_a_few_cells_of_another_tissue_are_said_to_be_unlike_the_reference():
    """Below 100 cells the Unknown call is skipped; the warning says how many cells lie beyond
    their type's per-cell threshold: nearly all for lung cancer lines against PBMCs."""
    lines = read_shared("cellbench_lung_lines_2batches.h5ad")
    query = lines[np.random.default_rng(0).choice(lines.n_obs, 60, replace=False)].copy()
    with pytest.warns(UserWarning, match="needs at least 100") as caught:
        scdl.tl.annotate(query, model="pbmc_kang2018", min_gene_overlap=0.3)
    beyond = re.search(r"\((\d+)%\) lie beyond", _message(caught))
    assert beyond is not None and int(beyond[1]) >= 80


@pytest.mark.parametrize("n", [5, 50])
def test_annotating_a_few_cells_gives_their_types_with_a_warning(n):
    """A few cells' own mean is their profile, not a shift they share: the Unknown call,
    which standardises a query by its own statistics, made every cell of a small query of
    known types Unknown. It is skipped below 100 cells, with a warning."""
    every = scdl.datasets.kang_pbmc_heldout()
    pick = np.random.default_rng(0).choice(every.n_obs, n, replace=False)
    query = every[pick].copy()
    with pytest.warns(UserWarning, match="needs at least 100") as caught:
        scdl.tl.annotate(query, model="pbmc_kang2018", majority_voting=True)
    assert not any("composition" in str(w.message) for w in caught)  # one caveat, not two
    assert not query.obs["scdl_cell_type_unknown"].any()
    # the warning says how many lie beyond the per-cell thresholds: few of these
    beyond = re.search(r"\((\d+)%\) lie beyond", _message(caught))
    assert beyond is not None and int(beyond[1]) <= 20
    # each cell its most probable type, as among all 395 held-out cells (5 cells are too few
    # for an accuracy: one call is 20%)
    forced = scdl.pretrained.load("pbmc_kang2018").predict(every, unknown=False)
    np.testing.assert_array_equal(query.obs["scdl_cell_type"].astype(str), forced[pick])
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert n < 50 or (query.obs["scdl_cell_type"].astype(str).to_numpy() == truth).mean() >= 0.7
    assert query.obs["scdl_cell_type_majority_voting"].notna().all()
    if n < 10:  # too few to over-cluster: each cell its own cluster, the vote changes nothing
        assert query.obs["scdl_cell_type_over_clustering"].nunique() == n
        np.testing.assert_array_equal(
            query.obs["scdl_cell_type_majority_voting"].astype(str),
            query.obs["scdl_cell_type"].astype(str),
        )


def test_annotating_again_under_the_same_key_drops_the_earlier_vote():
    """A call without majority voting leaves no voting columns of an earlier call (they
    would contradict the new calls)."""
    query = scdl.datasets.kang_pbmc_heldout()[:150].copy()
    scdl.tl.annotate(query, model="pbmc_kang2018", majority_voting=True)
    assert "scdl_cell_type_majority_voting" in query.obs
    scdl.tl.annotate(query, model="pbmc_kang2018")
    assert not any(c.startswith("scdl_cell_type_majority") for c in query.obs)
    assert "scdl_cell_type_over_clustering" not in query.obs
    assert query.uns["scdl_cell_type"]["majority_voting"] is False


def test_gene_names_of_string_dtype_match_the_model(hundred_cells, tmp_path):
    """anndata 0.12 reads files written by anndata 0.13 / pandas 3 with ``string``-dtype
    ``var_names``; pandas 2 calls them unequal to the same names as ``object``."""
    import pandas as pd

    adata = hundred_cells
    VAE.setup_anndata(adata, batch_key="sample")
    model = VAE(adata)
    model.train(max_epochs=2, enable_progress_bar=False)
    model.save(tmp_path / "m")
    query = adata.copy()
    query.var_names = pd.Index(list(query.var_names), dtype="string")
    expected = model.get_latent_representation()
    np.testing.assert_allclose(model.get_latent_representation(query.copy()), expected)
    loaded = VAE.load(tmp_path / "m", adata=query.copy())
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, atol=1e-6)
    query = query[:, ::-1].copy()  # a real difference is still refused
    with pytest.raises(ValueError, match="different order"):
        model.get_latent_representation(query)


def test_tl_steps_write_into_a_view_warning_at_the_callers_line(kang, caplog):
    """A view is made an actual AnnData before results are written, warned at this file's line
    (anndata warned from inside scdl); scdl's warnings about the data point here too; a tool
    that seeds its own run logs no "Seed set to" line (the user set no seed)."""
    import warnings
    from pathlib import Path

    from anndata import ImplicitModificationWarning

    here = str(Path(__file__).resolve())
    small = kang[np.random.default_rng(0).choice(kang.n_obs, 60, replace=False)]
    assert small.is_view
    caplog.set_level(logging.INFO, logger="lightning.fabric.utilities.seed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scdl.tl.integrate(small, max_epochs=1, progress_bar=False)
    assert not small.is_view and "X_scdl" in small.obsm
    mine = [w for w in caught if issubclass(w.category, UserWarning)]
    view_warnings = [w for w in mine if issubclass(w.category, ImplicitModificationWarning)]
    assert len(view_warnings) == 1 and "is a view" in str(view_warnings[0].message)
    batch = [w for w in mine if "fewer than batch_size" in str(w.message)]
    assert batch, [str(w.message) for w in mine]
    for w in (*view_warnings, *batch):
        assert str(Path(w.filename).resolve()) == here, (w.filename, str(w.message))
    assert not [r for r in caplog.records if "Seed set" in r.getMessage()]


def test_baseline_pca_reads_backed_and_sparse_array_counts(kang, tmp_path):
    """integration_metrics' fallback PCA (scdl.data.unintegrated_pca) reads a backed file's
    counts and a scipy sparse array (scanpy's normalize_total refuses the latter; the private
    copy is a sparse matrix); the user's matrix is left as it was."""
    import anndata

    small = kang[np.random.default_rng(0).choice(kang.n_obs, 200, replace=False)].copy()
    expected = scdl.data.unintegrated_pca(small)
    arr = small.copy()
    arr.X = sparse.csr_array(arr.X)
    np.testing.assert_allclose(scdl.data.unintegrated_pca(arr), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(arr.X, sparse.csr_array)
    small.write_h5ad(tmp_path / "small.h5ad")
    backed = anndata.read_h5ad(tmp_path / "small.h5ad", backed="r")
    got = scdl.data.unintegrated_pca(backed)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_unlabelled_cells_are_left_out_where_labels_are_optional(kang):
    """NaN in a group column: with target= given, those cells are in neither contrastive
    group (as a third value is); in pl.annotation's truth, they are left out of the matrix."""
    import matplotlib.pyplot as plt

    small = kang[np.random.default_rng(0).choice(kang.n_obs, 200, replace=False)].copy()
    small.obs["group"] = small.obs["condition"].astype(object)
    small.obs.iloc[:20, small.obs.columns.get_loc("group")] = np.nan
    scdl.tl.contrastive(
        small, groupby="group", background="ctrl", target="stim", max_epochs=2, progress_bar=False
    )
    assert (
        small.uns["X_scdl_salient"]["params"]["n_background"]
        + small.uns["X_scdl_salient"]["params"]["n_target"]
        == 180
    )
    assert np.all(small.obsm["X_scdl_salient"][:20] == 0)
    with pytest.raises(ValueError, match="missing values, which target=None would make target"):
        scdl.tl.contrastive(small, groupby="group", background="ctrl", max_epochs=1)
    scdl.tl.annotate(small, unknown=False, min_gene_overlap=0.1)
    small.obs["truth"] = small.obs["cell_type"].astype(object)
    small.obs.iloc[:50, small.obs.columns.get_loc("truth")] = np.nan
    fig = scdl.pl.annotation(small, groupby="truth", show=False)
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert sum(int(t.rsplit("(", 1)[1].rstrip(")")) for t in labels) == 150
    assert not any(t.startswith("nan") for t in labels)
    plt.close(fig)


@pytest.mark.parametrize("dtype", [np.float16, np.uint16, np.int16, np.int32, np.int64])
def test_narrow_dtype_counts_choose_the_genes_of_their_float32_copy(kang, dtype):
    """These dtypes hold the counts exactly, but seurat_v3 squares them in their own dtype
    (float16 overflows, integers wrap): the genes are ranked on a float32 copy of the values,
    as the model trains on. int32 wraps above 46,340: the counts are scaled to read counts.
    int64 holds the squares and is ranked as it is (no copy)."""
    adata = _three_hundred(kang)
    adata.X = adata.X.toarray()  # scipy's sparse matrices hold no float16: a dense file
    if dtype == np.int32:
        adata.X = adata.X * 100  # Smart-seq-like read counts
    narrow = adata.copy()
    narrow.X = narrow.X.astype(dtype)
    assert np.array_equal(narrow.X.astype(np.float32), adata.X)
    for data in (adata, narrow):
        scdl.tl.integrate(data, n_top_genes=200, max_epochs=1, progress_bar=False)
    assert list(narrow.uns["X_scdl"]["var_names"]) == list(adata.uns["X_scdl"]["var_names"])


def test_the_annotator_trains_on_dense_half_precision_counts(kang):
    """scipy's sparse matrices hold no float16: the calibration's sketch reads a float32 copy
    (it failed after training)."""
    adata = _three_hundred(kang)
    adata.X = adata.X.toarray().astype(np.float16)
    scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(adata)
    model.train(max_epochs=2, enable_progress_bar=False)
    calls = model.predict(adata)
    assert set(calls) <= set(adata.obs["cell_type"].astype(str)) | {"Unknown"}


def test_results_of_odd_names_still_write_to_h5ad(kang, tmp_path):
    """Integer gene names (a matrix read without names) were stored by tl.integrate and
    tl.contrastive as integers in uns, which h5ad files cannot hold; a model's cell type with
    "/" names a probability column that anndata >= 0.13 refuses to write: tl.annotate says so
    for a model loaded from elsewhere, not only the setup of whoever trained it."""
    import anndata as ad

    adata = _three_hundred(kang)
    adata.var_names = pd.Index(np.arange(1, adata.n_vars + 1))
    kw = dict(n_top_genes=200, max_epochs=1, progress_bar=False)
    scdl.tl.integrate(adata, **kw)
    scdl.tl.contrastive(adata, groupby="condition", background="ctrl", **kw)
    assert adata.uns["X_scdl"]["var_names"][0] == str(adata.uns["X_scdl"]["var_names"][0])
    adata.write_h5ad(tmp_path / "ints.h5ad")
    # tl.cluster finds tl.integrate's genes by name still (compared as text)
    scdl.tl.cluster(adata, resolution=0.5)
    assert "['var_names']" in adata.uns["scdl_cluster_neighbors"]["params"]["pca"]
    assert ad.read_h5ad(tmp_path / "ints.h5ad").uns["X_scdl_salient"]["salient_genes"].shape[0]

    ref = _three_hundred(kang)
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str).str.replace("CD4 T", "CD4/CD8 T")
    with pytest.warns(UserWarning, match=r"Cell types \['CD4/CD8 T cells'\] contain '/'"):
        CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = CellTypeTransformer(ref)
    model.train(max_epochs=1, enable_progress_bar=False)
    with pytest.warns(UserWarning, match=r"cell types \['CD4/CD8 T cells'\].*_probabilities'\]"):
        scdl.tl.annotate(_three_hundred(kang), model=model)


def test_half_precision_counts_of_deep_cells_are_summed_without_overflow(kang):
    """float16 sums overflow above 65,504: deep cells stored as float16 read as empty in the
    PCA baseline (scanpy's normalize_total sums in the matrix's dtype)."""
    from scdl.data import unintegrated_pca

    deep = _three_hundred(kang)
    # dense (scipy has no float16), each value below float16's largest, 65,504
    dense = deep.X.toarray()
    deep.X = (dense * np.floor(60_000 / dense.max())).astype(np.float16)
    assert (np.asarray(deep.X.sum(1, dtype=np.float64)).ravel() > 65_504).sum() > 0
    wide = deep.copy()
    wide.X = deep.X.astype(np.float32)
    np.testing.assert_allclose(unintegrated_pca(deep), unintegrated_pca(wide), atol=1e-3)


def test_a_query_with_damaged_counts_is_refused_by_the_annotator():
    """The annotator's quick check of a query's counts let 3e12 through (two B cells were
    called CD8 T), though every other step refuses values no count comes near."""
    query = scdl.datasets.kang_pbmc_heldout()[:300].copy()
    model = scdl.pretrained.load("pbmc_kang2018")
    x = query.X.tolil()  # in one of the model's genes: the quick check reads only those
    x[0, list(query.var_names).index(model.get_var_names()[0])] = 3e12
    query.X = x.tocsr().astype(np.float32)
    with pytest.raises(ValueError, match="far above any count"):
        scdl.tl.annotate(query, model=model)
    assert "scdl_cell_type" not in query.obs


def test_features_other_than_gene_expression_are_said(kang):
    """``sc.read_10x_h5(gex_only=False)`` keeps antibody / hashtag / peak features beside the
    genes, marked in ``var["feature_types"]``: scdl read them as genes without a word (7 of 10
    antibodies picked as highly variable genes, hashtags learnt into the latent). A warning
    names them and the subset to pass; gene expression alone is silent. A MuData is refused
    with the modality to pass."""
    import anndata as ad

    adata = kang[:300].copy()
    rng = np.random.default_rng(0)
    adt = ad.AnnData(
        X=sparse.csr_matrix(rng.poisson(30, (300, 5)).astype(np.float32)),
        obs=adata.obs,
        var=pd.DataFrame(index=[f"CD{i}_TotalSeqB" for i in range(5)]),
    )
    adata.var["feature_types"] = "Gene Expression"
    adt.var["feature_types"] = "Antibody Capture"
    mixed = ad.concat([adata, adt], axis=1, merge="first")
    mixed.var["feature_types"] = pd.concat([adata.var, adt.var])["feature_types"].to_numpy()
    with pytest.warns(UserWarning, match=r"marks 5 features other than 'Gene Expression'"):
        scdl.tl.integrate(mixed, max_epochs=1, progress_bar=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*features other than")
        # clustering the latent alone reads no feature; gene expression only (missing types
        # not counted) is silent
        scdl.tl.cluster(mixed, use_rep="X_scdl", pca_key=None)
        adata.var["feature_types"] = adata.var["feature_types"].where(
            np.arange(adata.n_vars) % 2 == 0
        )
        VAE.setup_anndata(adata)
    mudata = pytest.importorskip("mudata")
    with pytest.raises(TypeError, match=r"got a MuData.*mdata.mod\['rna'\]"):
        scdl.tl.integrate(mudata.MuData({"rna": adata}), max_epochs=1)
