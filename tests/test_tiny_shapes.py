"""Degenerate and tiny shapes a subset gives: a group of a few cells, a reference too small
to calibrate, one or two genes, cells without a count in the genes a step reads."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import assert_unchanged, read_shared, snapshot  # noqa: E402
from scipy import sparse  # noqa: E402

import scdl  # noqa: E402
from scdl.dataloaders import ContrastiveSplitter  # noqa: E402
from scdl.models import CellTypeTransformer, ContrastiveVAE  # noqa: E402


def _groups(kang, n_background, n_target):
    ctrl = np.flatnonzero(kang.obs["condition"] == "ctrl")
    stim = np.flatnonzero(kang.obs["condition"] != "ctrl")
    return kang[np.r_[ctrl[:n_background], stim[:n_target]]].copy()


@pytest.mark.parametrize("n_target", [1, 2])
def test_a_target_group_of_one_or_two_cells_trains(kang, n_target):
    """scvi-tools' split moved a group's last 1-2 cells to validation: a group of 1-2 cells
    never trained (the salient encoder saw no target cell)."""
    adata = _groups(kang, 50, n_target)
    ContrastiveVAE.setup_anndata(adata)
    model = ContrastiveVAE(adata)
    target = np.flatnonzero(adata.obs["condition"] != "ctrl")
    background = np.flatnonzero(adata.obs["condition"] == "ctrl")
    splitter = ContrastiveSplitter(model.adata_manager, background, target, batch_size=adata.n_obs)
    splitter.setup()
    assert len(splitter.target_train_idx) == n_target
    assert len(splitter.background_train_idx) == 45


def _contrastive(adata) -> None:
    """A short run on every gene (its warnings of few cells are the point of these tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdl.tl.contrastive(
            adata,
            groupby="condition",
            background="ctrl",
            max_epochs=2,
            n_top_genes=None,
            progress_bar=False,
        )


def test_one_cell_per_group_trains_and_writes(kang):
    adata = _groups(kang, 1, 1)
    _contrastive(adata)
    salient = adata.obsm["X_scdl_salient"]
    assert np.isfinite(salient).all() and np.any(salient[1] != 0)


def test_contrastive_plot_of_three_target_cells_says_what_to_plot(kang):
    adata = _groups(kang, 40, 3)
    _contrastive(adata)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"3 target cells .*at least 4.*scdl.pl.embedding"):
        scdl.pl.contrastive(adata, show=False)
    assert_unchanged(adata, snap)


def test_annotator_of_a_tiny_reference_says_it_calls_nothing_unknown(kang):
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [
            rng.choice(np.flatnonzero(kang.obs["cell_type"] == t), 5, replace=False)
            for t in kang.obs["cell_type"].cat.categories[:3]
        ]
    )
    ref = kang[np.sort(keep)].copy()
    CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = CellTypeTransformer(ref)
    with pytest.warns(UserWarning, match=r"too small to calibrate the Unknown call"):
        model.train(max_epochs=2, enable_progress_bar=False)
    assert not np.isfinite(model.cluster_threshold_)


@pytest.mark.parametrize("n_genes", [1, 2])
def test_annotator_on_one_or_two_genes_trains_and_annotates(kang, n_genes):
    """The calibration's PCA asked ARPACK for 2 components of 2 genes: it failed after the
    whole training run."""
    genes = ["LYZ", "CD3E"][:n_genes]
    ref = kang[:300, genes].copy()
    CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = CellTypeTransformer(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, enable_progress_bar=False)
        calls = model.predict(kang[300:400, genes].copy())
    assert len(calls) == 100


def test_drug_smoothing_of_cells_without_counts_in_the_model_genes(kang):
    """ARPACK failed on cells with no count in the genes (a PCA of zeros); now no averaging,
    and a warning that every cell gets an empty cell's prediction."""
    from scdl.data import CountProfiles
    from scdl.data._drug_inputs import neighbor_weights

    genes = kang.var_names[:50]
    x = sparse.csr_matrix(kang.X[:30], dtype=np.float32, copy=True)
    x[:, :50] = 0
    x.eliminate_zeros()
    assert neighbor_weights(x[:, :50], 15) is None
    with pytest.warns(UserWarning, match=r"No cell has a count in the model's 50 genes"):
        rows = CountProfiles(x, kang.var_names, genes, n_neighbors=15)
    assert np.isfinite(rows[:]).all()


def test_cluster_without_counts_in_the_integrated_genes_uses_the_latent_graph():
    adata = read_shared("kang_pbmc_2k_celltypes.h5ad")[:300].copy()
    scdl.tl.integrate(adata, max_epochs=2, n_top_genes=200, progress_bar=False)
    genes = list(adata.uns["X_scdl"]["var_names"])
    x = adata.X.tolil()
    x[:, adata.var_names.get_indexer(genes)] = 0
    adata.X = sparse.csr_matrix(x)
    with pytest.warns(UserWarning, match=r"could not be computed \(Every value of the 200"):
        scdl.tl.cluster(adata, resolution=1.0)
    assert adata.obs["scdl_cluster"].nunique() >= 1
