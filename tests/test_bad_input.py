"""Bad input gets a clear error naming the fix, and the user's AnnData is left unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import scdl
from scdl.models import VAE


def _small(kang, n=300):
    """n cells drawn across all four samples."""
    idx = np.sort(np.random.default_rng(0).choice(kang.n_obs, n, replace=False))
    return kang[idx].copy()


def _set_value(adata, value):
    x = adata.X.tolil()
    x[0, 0] = value
    adata.X = x.tocsr().astype(np.float32)


@pytest.mark.parametrize(
    ("value", "match"),
    [(0.5, "non-integer"), (-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")],
)
@pytest.mark.parametrize("call", ["setup", "integrate"])
def test_not_raw_counts(kang, value, match, call):
    adata = _small(kang)
    _set_value(adata, value)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=match):
        if call == "setup":
            VAE.setup_anndata(adata, batch_key="sample")
        else:
            scdl.tl.integrate(adata, batch_key="sample", max_epochs=1)
    assert_unchanged(adata, snap)


def test_normalised_data_in_X_names_layer_fix(kang):
    import scanpy as sc

    adata = _small(kang)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="layer="):
        scdl.tl.integrate(adata, batch_key="sample", max_epochs=1)
    assert_unchanged(adata, snap)


def test_missing_layer(kang):
    adata = _small(kang)
    adata.layers["counts"] = adata.X.copy()
    snap = snapshot(adata)
    with pytest.raises(KeyError, match="Did you mean 'counts'"):
        scdl.tl.integrate(adata, layer="count", max_epochs=1)
    with pytest.raises(KeyError, match="not found in adata.layers"):
        VAE.setup_anndata(adata, layer="raw")
    assert_unchanged(adata, snap)


def test_missing_obs_key(kang):
    adata = _small(kang)
    snap = snapshot(adata)
    with pytest.raises(KeyError, match="Did you mean 'sample'"):
        scdl.tl.integrate(adata, batch_key="samples", max_epochs=1)
    with pytest.raises(KeyError, match="not a column of adata.obs"):
        VAE.setup_anndata(adata, labels_key="celltype")
    assert_unchanged(adata, snap)


def test_single_category_batch_key(kang):
    adata = kang[kang.obs["sample"] == "ctrl101"].copy()
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="at least 2"):
        scdl.tl.integrate(adata, batch_key="sample", max_epochs=1)
    assert_unchanged(adata, snap)


def test_zero_count_cells(kang):
    adata = _small(kang)
    x = adata.X.tolil()
    x[3, :] = 0
    adata.X = x.tocsr()
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="filter_cells"):
        VAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="zero total counts"):
        scdl.tl.integrate(adata, max_epochs=1)
    assert_unchanged(adata, snap)


def test_zero_count_genes_refused_by_setup_but_dropped_by_integrate(kang):
    adata = _small(kang)
    x = adata.X.tolil()
    x[:, 5] = 0
    adata.X = x.tocsr()
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="filter_genes"):
        VAE.setup_anndata(adata)
    assert_unchanged(adata, snap)
    # integrate selects expressed genes itself: an all-zero gene is simply not used
    scdl.tl.integrate(adata, max_epochs=1, progress_bar=False, batch_size=64)
    assert adata.var_names[5] not in set(adata.uns["X_scdl"]["var_names"])


def test_empty_anndata(kang):
    adata = kang[:0].copy()
    with pytest.raises(ValueError, match="empty"):
        VAE.setup_anndata(adata)


def test_non_numeric_matrix(kang):
    import anndata

    adata = anndata.AnnData(X=np.array([["1", "2"], ["3", "4"]], dtype=object))
    with pytest.raises(TypeError, match="numeric"):
        VAE.setup_anndata(adata)


def test_duplicate_gene_names(kang):
    adata = _small(kang)
    names = adata.var_names.tolist()
    names[1] = names[0]
    adata.var_names = names
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="var_names_make_unique"):
        scdl.tl.integrate(adata, max_epochs=1)
    assert_unchanged(adata, snap)


def test_fewer_cells_than_a_batch(kang):
    import scanpy as sc

    adata = kang[:50].copy()
    sc.pp.filter_genes(adata, min_cells=1)
    VAE.setup_anndata(adata)
    model = VAE(adata)
    with pytest.raises(ValueError, match="smaller batch_size"):
        model.train(max_epochs=1)


def test_query_gene_mismatch(kang_integrated):
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"][:, 10:].copy()
    snap = snapshot(query)
    with pytest.raises(ValueError, match="lacks 10 of the model's"):
        VAE.load_query_data(query, model)
    assert_unchanged(query, snap)


def test_query_without_batch_column(kang_integrated):
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"].copy()
    del query.obs["sample"]
    with pytest.raises(KeyError, match="batch_key"):
        VAE.load_query_data(query, model)


def test_bad_gene_likelihood(kang):
    adata = _small(kang)
    VAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="gene_likelihood"):
        VAE(adata, gene_likelihood="gaussian")


def test_cluster_missing_rep(kang):
    adata = _small(kang)
    with pytest.raises(KeyError, match="tl.integrate"):
        scdl.tl.cluster(adata, use_rep="X_scdl")


def test_dense_counts_are_accepted(kang):
    adata = _small(kang)
    adata.X = adata.X.toarray()
    VAE.setup_anndata(adata)  # no error: dense raw counts are valid
    assert sparse.issparse(kang.X)
