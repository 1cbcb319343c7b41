"""scanpy's usual layouts around scdl's steps: counts kept in a layer beside log-normalised X
and .raw, a subset view of plotted cells, an embedding that is already two-dimensional."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scanpy as sc  # noqa: E402
from conftest import assert_unchanged, snapshot  # noqa: E402

import scdl  # noqa: E402


def _some(kang, n=300):
    """``n`` cells of both conditions (the bundled file is ordered by sample)."""
    return kang[np.sort(np.random.default_rng(0).choice(kang.n_obs, n, replace=False))].copy()


@pytest.fixture()
def tutorial_layout(kang):
    """scanpy's tutorial layout: counts in layers['counts'], log1p in X, .raw = the log
    values of every gene."""
    adata = _some(kang)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.raw = adata.copy()
    return adata


def test_refusal_names_the_layer_that_holds_the_counts(tutorial_layout):
    adata = tutorial_layout
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"Raw counts are in this AnnData: pass `layer='counts'`"):
        scdl.tl.integrate(adata, max_epochs=1)
    assert_unchanged(adata, snap)


def test_refusal_of_a_log_layer_names_x_when_x_holds_the_counts(kang):
    adata = _some(kang)
    adata.layers["log1p"] = sc.pp.log1p(sc.pp.normalize_total(adata, inplace=False)["X"])
    with pytest.raises(ValueError, match=r"adata.X holds raw counts: pass `layer=None`") as err:
        scdl.tl.integrate(adata, layer="log1p", max_epochs=1)
    assert "adata.raw" not in str(err.value)


def test_raw_is_offered_only_when_it_holds_counts(kang):
    adata = _some(kang)
    adata.raw = adata.copy()  # counts
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    with pytest.raises(ValueError, match=r"adata.raw holds raw counts: copy them into a layer"):
        scdl.tl.integrate(adata, max_epochs=1)
    adata.raw = adata.copy()  # log values now
    with pytest.raises(ValueError) as err:
        scdl.tl.integrate(adata, max_epochs=1)
    assert "adata.raw" not in str(err.value)


def test_contrastive_plot_reads_genes_from_raw_as_scanpy(tutorial_layout):
    adata = tutorial_layout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdl.tl.contrastive(
            adata,
            groupby="condition",
            background="ctrl",
            layer="counts",
            max_epochs=2,
            n_top_genes=None,
            progress_bar=False,
        )
    only_raw = adata.var_names[-1]
    cut = adata[:, adata.var_names[:-1]].copy()  # a gene subset, every gene still in .raw
    sc.pp.scale(cut)
    fig = scdl.pl.contrastive(cut, color=[only_raw, "ISG15"], show=False)
    # the colour scale is the log values' (0 up), not the scaled X's (negative values)
    limits = [
        im.get_clim() for ax in fig.axes for im in ax.collections if im.get_array() is not None
    ]
    assert limits and min(lo for lo, _ in limits) >= 0


def test_a_subset_view_is_drawn_in_the_whole_data_s_layout(kang):
    adata = _some(kang)
    adata.obsm["X_scdl"] = np.asarray(
        sc.pp.pca(np.log1p(adata.X.toarray()), n_comps=10), dtype=np.float32
    )
    scdl.pl.embedding(adata, color="cell_type", show=False)
    whole = adata.obsm["X_scdl_umap"].copy()
    mask = (adata.obs["condition"] == "stim").to_numpy()
    view = adata[mask]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's palette makes the view actual
        scdl.pl.embedding(view, color="cell_type", show=False)
    np.testing.assert_array_equal(view.obsm["X_scdl_umap"], whole[mask])
    np.testing.assert_array_equal(adata.obsm["X_scdl_umap"], whole)


def test_a_two_column_basis_is_drawn_as_it_is(kang):
    adata = _some(kang, 100)
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    scdl.pl.embedding(adata, basis="X_umap", color="cell_type", show=False)
    assert "X_umap_umap" not in adata.obsm and "X_umap_umap" not in adata.uns
