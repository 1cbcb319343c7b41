"""scdl's fast paths give the same numbers as the reference implementations they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scdl


def test_sparse_nb_equals_scvi_nb(kang):
    from scvi.distributions._negative_binomial import log_nb_positive

    from scdl.module._nb import log_nb_sparse

    x = torch.from_numpy(kang.X[:256].toarray().astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    mu = (torch.rand(x.shape, generator=gen) * 3 + 1e-3).requires_grad_()
    theta = (torch.rand(x.shape[1], generator=gen) * 5 + 0.05).requires_grad_()
    ref = log_nb_positive(x, mu, theta.expand_as(x))
    ours = log_nb_sparse(x, mu, theta.expand_as(x))
    assert (x == 0).float().mean() > 0.5  # the case the fast path is for
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    g_ref = torch.autograd.grad(ref.sum(), [mu, theta])
    g_ours = torch.autograd.grad(ours.sum(), [mu, theta])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_vae_history_keeps_scvi_names(kang):
    """Per-epoch logging writes the metrics scvi-tools users read from ``model.history``."""
    adata = kang[np.random.default_rng(0).choice(kang.n_obs, 400, replace=False)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    scdl.models.VAE.setup_anndata(adata, batch_key="sample")
    model = scdl.models.VAE(adata)
    model.train(max_epochs=3, enable_progress_bar=False)
    for key in (
        "train_loss",
        "elbo_train",
        "reconstruction_loss_train",
        "kl_local_train",
        "kl_weight",
        "elbo_validation",
    ):
        assert key in model.history, key
    elbo, rec, kl = (
        model.history[k].iloc[:, 0].to_numpy(dtype=float)
        for k in ("elbo_train", "reconstruction_loss_train", "kl_local_train")
    )
    assert len(elbo) == 3 and np.isfinite(elbo).all()
    np.testing.assert_allclose(elbo, rec + kl, rtol=1e-4)  # no global KL in this model


@pytest.mark.parametrize("drop_genes", [0, 300])
def test_annotator_csr_inference_equals_dense(drop_genes):
    """The CSR inference path (cost in the non-zeros) gives the dense path's calls."""
    model = scdl.pretrained.load("pbmc_kang2018")
    cells = scdl.datasets.kang_pbmc_heldout()
    cells = cells[:, drop_genes:].copy()  # some of the model's genes absent
    x, present = model._query_matrix(cells, None, 0.5)
    assert isinstance(x, scdl.data.CSRTensors)
    p_csr, nov_csr = model._features(x, present, batch_size=128)
    p_dense, nov_dense = model._features(x.to_scipy().toarray(), present, batch_size=128)
    torch.testing.assert_close(p_csr, p_dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(nov_csr, nov_dense, rtol=1e-4, atol=1e-5)
    assert (p_csr.argmax(1) == p_dense.argmax(1)).all()


def test_gather_counts_equals_scipy_alignment():
    """Counts gathered in a model's gene order (host and device code paths) equal scipy's
    alignment, with genes shuffled and some absent; a non-count value among the kept genes
    sends the caller to the full check, one among the others does not matter."""
    from scdl.data import align_to_genes, gather_counts, gene_columns
    from scdl.data._csr import _gather_device

    cells = scdl.datasets.kang_pbmc_heldout()
    rng = np.random.default_rng(0)
    genes = cells.var_names[rng.permutation(cells.n_vars)[: cells.n_vars - 50]]
    query = cells[:, rng.permutation(cells.n_vars)[40:]].copy()  # 40 model genes absent
    col, present = gene_columns(query, genes)
    assert present.sum() < len(genes)
    lookup = np.full(query.n_vars, -1)
    lookup[col[present]] = np.flatnonzero(present)
    expected = align_to_genes(query, genes)[0].sorted_indices()
    host = gather_counts(query.X, lookup, len(genes))
    device = _gather_device(query.X, lookup, len(genes), torch.device("cpu"))
    for got in (host, device):
        m = got.to_scipy()
        assert m.shape == expected.shape
        np.testing.assert_array_equal(m.indptr, expected.indptr)
        np.testing.assert_array_equal(m.indices, expected.indices)
        np.testing.assert_array_equal(m.data, expected.data)
    x = query.X.copy()
    used = np.isin(x.indices, col[present])
    x.data[np.flatnonzero(used)[0]] = 0.5
    assert gather_counts(x, lookup, len(genes)) is None
    assert _gather_device(x, lookup, len(genes), torch.device("cpu")) is None
    x = query.X.copy()
    x.data[np.flatnonzero(~used)[0]] = 0.5
    assert gather_counts(x, lookup, len(genes)) is not None


def test_vae_trains_from_backed_h5ad_like_in_memory(kang, tmp_path):
    """A backed (on-disk) AnnData trains through the same batch path: same seed, same model."""
    import anndata as ad
    import scvi

    idx = np.random.default_rng(1).choice(kang.n_obs, 600, replace=False)
    adata = kang[np.sort(idx)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    latents = []
    for backed in (None, "r"):
        data = ad.read_h5ad(path, backed=backed)
        scvi.settings.seed = 0
        scdl.models.VAE.setup_anndata(data, batch_key="sample")
        model = scdl.models.VAE(data)
        model.train(max_epochs=2, enable_progress_bar=False)
        latents.append(model.get_latent_representation())
        if backed:
            assert data.isbacked
            data.file.close()
    np.testing.assert_allclose(latents[1], latents[0], rtol=1e-5, atol=1e-5)


def test_annotator_history_logged_once_per_epoch(kang):
    """The annotator's plans log epoch means under the names Lightning users read."""
    import scvi

    scvi.settings.seed = 0
    ref = kang[np.random.default_rng(0).choice(kang.n_obs, 400, replace=False)].copy()
    ref = ref[:, np.asarray(ref.X.sum(0)).ravel() > 0].copy()
    scdl.models.CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(ref)
    model.train(max_epochs=4, check_val_every_n_epoch=1, enable_progress_bar=False)
    hist = model.history
    for key in ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy"):
        values = hist[key].iloc[:, 0].to_numpy(dtype=float)
        assert len(values) == 4 and np.isfinite(values).all(), key
    acc = hist["train_accuracy"].iloc[:, 0].to_numpy(dtype=float)
    loss = hist["train_loss"].iloc[:, 0].to_numpy(dtype=float)
    # the fitted linear path is accurate from the start; the loss still falls as it trains
    assert ((acc >= 0) & (acc <= 1)).all() and loss[-1] < loss[0]


def test_torch_knn_equals_sklearn_brute_force():
    """The GPU path's exact kNN (run here on the CPU) finds scikit-learn's neighbours."""
    import scanpy as sc
    from sklearn.neighbors import KNeighborsTransformer

    from scdl.models._knn import TorchKNN

    cells = scdl.datasets.kang_pbmc_heldout()
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    x = sc.pp.pca(cells.X, n_comps=20)
    ours = TorchKNN(n_neighbors=15).fit_transform(x)
    ref = KNeighborsTransformer(n_neighbors=15, algorithm="brute").fit_transform(x)
    assert ours.shape == ref.shape and (ours.getnnz(axis=1) == 16).all()
    ref_sorted = ref.sorted_indices()
    ours_sorted = ours.sorted_indices()
    np.testing.assert_array_equal(ours_sorted.indices, ref_sorted.indices)
    np.testing.assert_allclose(ours_sorted.data, ref_sorted.data, atol=1e-4)
    first = ours.indices.reshape(-1, 16)[:, 0]
    np.testing.assert_array_equal(first, np.arange(x.shape[0]))  # itself first, as scanpy reads
