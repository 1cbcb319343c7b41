"""Backed and lazily read AnnData: read a block of rows at a time, views of them mapped,
refusals naming `to_memory()` (a copy of a backed AnnData needs a file)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scdl
from scdl.data import _rows
from scdl.models import VAE


@pytest.fixture()
def backed(kang, tmp_path):
    kang.write_h5ad(tmp_path / "kang.h5ad")
    return ad.read_h5ad(tmp_path / "kang.h5ad", backed="r")


def test_dense_blocks_are_sized_by_values_sparse_by_rows(monkeypatch):
    monkeypatch.setattr(_rows, "DENSE_BLOCK_VALUES", 1_000)
    dense = np.zeros((95, 100), dtype=np.float32)
    assert [b.shape[0] for b in scdl.data.row_blocks(dense)] == [10] * 9 + [5]
    assert len(list(scdl.data.row_blocks(sparse.csr_matrix(dense)))) == 1


def test_columns_of_a_backed_matrix_are_read_by_blocks(kang, backed, monkeypatch):
    """anndata reads a backed sparse matrix whole to index its columns: read_columns reads
    blocks of rows (each smaller than the matrix) and gives the same values."""
    monkeypatch.setattr(_rows, "ROW_BLOCK", 200)
    cols = np.arange(0, kang.n_vars, 7)
    sizes = []
    real = type(backed.X).__getitem__

    def spy(self, key):
        out = real(self, key)
        sizes.append(out.shape[0])
        return out

    monkeypatch.setattr(type(backed.X), "__getitem__", spy)
    got, totals = scdl.data.read_columns(backed.X, cols, row_totals=True)
    assert max(sizes) <= 200  # one pass of blocks gives both
    np.testing.assert_array_equal(got.toarray(), kang.X[:, cols].toarray())
    np.testing.assert_allclose(totals, np.asarray(kang.X.sum(axis=1)).ravel())


def test_a_view_of_a_backed_query_maps(kang_integrated, tmp_path):
    adata, model = kang_integrated
    adata.write_h5ad(tmp_path / "q.h5ad")
    query = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    view = query[(query.obs["sample"] == "stim107").to_numpy()]
    qm = VAE.load_query_data(view, model)
    qm.train(max_epochs=1, enable_progress_bar=False)
    assert qm.get_latent_representation().shape[0] == view.n_obs


def test_registering_a_view_of_a_backed_anndata_names_to_memory(backed):
    with pytest.raises(ValueError, match=r"adata\[mask\]\.to_memory\(\)"):
        VAE.setup_anndata(backed[:100])


def test_a_lazily_read_anndata_names_to_memory(kang, tmp_path):
    pytest.importorskip("xarray")
    pytest.importorskip("dask")
    read_lazy = pytest.importorskip("anndata.experimental").read_lazy
    kang.write_h5ad(tmp_path / "k.h5ad")
    lazy = read_lazy(tmp_path / "k.h5ad")
    with pytest.raises(TypeError, match=r"lazily read AnnData.*adata = adata.to_memory\(\)"):
        VAE.setup_anndata(lazy)


def test_plotting_a_view_of_backed_data_is_refused_by_name(kang, tmp_path):
    """A two-column basis is drawn without a UMAP, but scanpy writes its palettes into the
    AnnData: a backed view is refused by name, not inside anndata."""
    adata = kang.copy()
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    adata.write_h5ad(tmp_path / "u.h5ad")
    view = ad.read_h5ad(tmp_path / "u.h5ad", backed="r")[:200]
    with pytest.raises(ValueError, match=r"view of a backed AnnData.*to_memory\(\)"):
        scdl.pl.embedding(view, basis="X_umap", color="cell_type", show=False)
