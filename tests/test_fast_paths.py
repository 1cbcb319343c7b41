"""scdl's fast paths give the same numbers as the reference implementations they replace."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

import scdl


def test_sparse_nb_equals_scvi_nb(kang):
    from scvi.distributions import NegativeBinomial

    from scdl.module._nb import log_nb_sparse

    x = torch.from_numpy(kang.X[:256].toarray().astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    mu = (torch.rand(x.shape, generator=gen) * 3 + 1e-3).requires_grad_()
    theta = (torch.rand(x.shape[1], generator=gen) * 5 + 0.05).requires_grad_()
    ref = NegativeBinomial(mu=mu, theta=theta.expand_as(x), validate_args=False).log_prob(x)
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


def test_vae_manual_step_equals_lightning_automatic_step(kang):
    """The plan's own optimiser step gives bitwise the weights of Lightning's automatic loop.

    A gradient-clipping value no gradient reaches makes Lightning use its automatic loop and
    multiplies every gradient by exactly 1.0, so the two runs differ only in who steps.
    """
    adata = kang[np.random.default_rng(1).choice(kang.n_obs, 300, replace=False)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    runs = {}
    for name, extra in (("manual", {}), ("automatic", {"gradient_clip_val": 1e30})):
        scvi.settings.seed = 0
        scdl.models.VAE.setup_anndata(adata, batch_key="sample")
        model = scdl.models.VAE(adata)
        model.train(max_epochs=3, batch_size=64, enable_progress_bar=False, **extra)
        assert model.trainer.lightning_module.automatic_optimization is (name == "automatic")
        runs[name] = (model.module.state_dict(), model.history["elbo_train"].to_numpy())
    (w_manual, elbo_manual), (w_auto, elbo_auto) = runs["manual"], runs["automatic"]
    np.testing.assert_array_equal(elbo_manual, elbo_auto)
    for key, value in w_manual.items():
        assert torch.equal(value, w_auto[key]), key


@pytest.mark.parametrize("drop_genes", [0, 300])
def test_annotator_csr_inference_equals_dense(drop_genes):
    """The CSR inference path (cost in the non-zeros) gives the dense path's calls."""
    model = scdl.pretrained.load("pbmc_kang2018")
    cells = scdl.datasets.kang_pbmc_heldout()
    cells = cells[:, drop_genes:].copy()  # some of the model's genes absent
    x, present, _ = model._query_matrix(cells, None, 0.5)
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
    # a count past MAX_COUNT is refused on either path (the GPU's let it through once)
    x = query.X.copy()
    x.data[np.flatnonzero(used)[0]] = 5e12
    assert gather_counts(x, lookup, len(genes)) is None
    assert _gather_device(x, lookup, len(genes), torch.device("cpu")) is None
    x = query.X.copy()
    x.data[np.flatnonzero(~used)[0]] = 0.5
    assert gather_counts(x, lookup, len(genes)) is not None


@pytest.mark.parametrize("name", ["VAE", "CellTypeTransformer"])
def test_models_train_from_backed_h5ad_like_in_memory(kang, tmp_path, name):
    """A backed (on-disk) AnnData trains through the same batch path: same seed, same model.
    (The annotator's calibration after training read the on-disk matrix as an array and
    failed once every epoch had run.)"""
    import anndata as ad
    import scvi

    cls = getattr(scdl.models, name)
    idx = np.random.default_rng(1).choice(kang.n_obs, 600, replace=False)
    adata = kang[np.sort(idx)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    outputs = []
    for backed in (None, "r"):
        data = ad.read_h5ad(path, backed=backed)
        scvi.settings.seed = 0
        if name == "VAE":
            cls.setup_anndata(data, batch_key="sample")
        else:
            cls.setup_anndata(data, labels_key="cell_type")
        model = cls(data)
        model.train(max_epochs=2, enable_progress_bar=False)
        if name == "VAE":
            outputs.append(model.get_latent_representation())
        else:
            outputs.append(model.predict(adata, soft=True).to_numpy())
        if backed:
            assert data.isbacked
            data.file.close()
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_vae_csr_minibatch_equals_scvi_dense_step(kang, likelihood):
    """A CSR training minibatch gives scvi-tools' own VAE's loss and gradients on the dense one.

    Same cells and order from both loaders; nb takes the fused CSR likelihood, zinb and
    poisson the dense fallback; covariates (categorical and continuous) enter the encoder.
    """
    import scvi

    from scdl.dataloaders import CSRBatchLoader, TensorBatchLoader

    adata = kang[np.random.default_rng(2).choice(kang.n_obs, 300, replace=False)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    adata.obs["depth"] = np.log1p(np.asarray(adata.X.sum(1)).ravel())
    adata.obs["donor"] = adata.obs["sample"].astype(str).str[:-1]
    covs = {"continuous_covariate_keys": ["depth"]}
    if likelihood == "nb":
        covs["categorical_covariate_keys"] = ["donor"]
    scdl.models.VAE.setup_anndata(adata, batch_key="sample", **covs)
    model = scdl.models.VAE(adata, gene_likelihood=likelihood, batch_mmd_weight=0.0)
    ours = model.module
    ref = scvi.module.VAE(
        **{
            k: v
            for k, v in model.init_params_["non_kwargs"].items()
            if k not in ("adata", "registry", "batch_mmd_weight")
        }
        | {
            "n_input": adata.n_vars,
            "n_batch": 4,
            "n_continuous_cov": 1,
            "n_cats_per_cov": ours.decoder.px_decoder.n_cat_list[1:] or None,
            "encode_covariates": True,
            "use_layer_norm": "both",
            "use_batch_norm": "none",
            "deeply_inject_covariates": False,
            "use_observed_lib_size": True,
        }
    )
    # scvi-tools' module reads covariates raw: ours compared with its scaling set to none
    ours.set_covariate_scaling([0.0], [1.0])
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if "cont_cov_" not in k})
    batches = []
    for cls in (TensorBatchLoader, CSRBatchLoader):
        torch.manual_seed(3)
        batches.append(next(iter(cls(model.adata_manager, batch_size=128, shuffle=True))))
    dense, csr = batches
    assert csr["X"].layout == torch.sparse_csr
    torch.testing.assert_close(csr["X"].to_dense(), dense["X"], rtol=0, atol=0)
    results = []
    for module, batch in ((ref, dense), (ours, csr)):
        module.train()
        module.zero_grad()
        torch.manual_seed(4)  # same dropout mask and latent sample
        _, _, out = module(batch, loss_kwargs={"kl_weight": 0.5})
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.reconstruction_loss_sum.detach(), grads))
    (loss_ref, rec_ref, g_ref), (loss, rec, g) = results
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(rec, rec_ref, rtol=1e-5, atol=1e-3)
    assert set(g) == set(g_ref)
    for name in g_ref:
        scale = g_ref[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(g[name] / scale, g_ref[name] / scale, rtol=0, atol=1e-4)


def test_csr_nb_log_lik_equals_scvi_nb(kang):
    """The fused CSR likelihood and its gradients equal scvi-tools' dense NB log-density."""
    from scvi.distributions import NegativeBinomial

    from scdl.module._csr import csr_entries
    from scdl.module._nb import nb_log_lik_csr

    x = torch.from_numpy(kang.X[:200].toarray().astype(np.float64))
    gen = torch.Generator().manual_seed(0)
    mu = (torch.rand(x.shape, generator=gen, dtype=torch.float64) * 3 + 1e-3).requires_grad_()
    theta = torch.rand(x.shape[1], generator=gen, dtype=torch.float64) * 5 + 0.05
    theta.requires_grad_()
    ref = NegativeBinomial(mu=mu, theta=theta, validate_args=False).log_prob(x).sum(-1)
    _, row, col, val = csr_entries(x.to_sparse_csr())
    ours = nb_log_lik_csr(mu, theta, row, col, val)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-8)
    weights = torch.rand(len(x), generator=gen, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * weights).sum(), [mu, theta])
    g_ours = torch.autograd.grad((ours * weights).sum(), [mu, theta])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-8)


def test_csr_nb_log_lik_keeps_float32_under_mixed_precision(kang):
    """Under autocast (``precision="bf16-mixed"``) the likelihood is computed in float32, as
    without it; in bfloat16 its per-cell sums were off by whole nats (or failed on CPU)."""
    from scdl.module._csr import csr_entries
    from scdl.module._nb import nb_log_lik_csr

    x = torch.from_numpy(kang.X[:200].toarray().astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(x.shape, generator=gen) * 3 + 1e-3
    theta = torch.rand(x.shape[1], generator=gen) * 50 + 0.05
    _, row, col, val = csr_entries(x.to_sparse_csr())
    plain = nb_log_lik_csr(mu, theta, row, col, val)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nb_log_lik_csr(mu, theta, row, col, val)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)


def test_vae_trains_in_mixed_precision(kang):
    from scdl.models import VAE

    adata = kang[:300].copy()
    VAE.setup_anndata(adata)
    model = VAE(adata)
    model.train(max_epochs=2, precision="bf16-mixed", enable_progress_bar=False)
    assert model.trainer.precision == "bf16-mixed"  # the option reached Lightning
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()


def test_training_loaders_share_the_matrix_and_let_go_of_it(kang):
    """The training and validation loaders read one set of CSR arrays (one device copy on a
    GPU), and hold none after training: the trainer, kept on the model, keeps the loaders."""
    from lightning.pytorch import Callback

    from scdl.models import VAE

    class Shared(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            train, val = trainer.train_dataloader, trainer.val_dataloaders
            self.shared = train.csr is not None and train.csr is val.csr

    adata = kang[:300].copy()
    VAE.setup_anndata(adata)
    model = VAE(adata)
    check = Shared()
    model.train(max_epochs=1, callbacks=[check], enable_progress_bar=False)
    assert check.shared
    assert model.trainer.train_dataloader.csr is None
    assert model.trainer.val_dataloaders.csr is None


def test_training_again_trains_in_train_mode(kang):
    """A trained (or loaded) model's module is left in eval mode for inference; training it
    again runs dropout and batch norm in train mode (Lightning >= 2.2 keeps modes as found)."""
    from lightning.pytorch import Callback

    from scdl.models import VAE

    class Modes(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.in_eval = sum(not m.training for m in pl_module.modules())

    adata = kang[:300].copy()
    VAE.setup_anndata(adata)
    model = VAE(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert not model.module.training
    modes = Modes()
    model.train(max_epochs=1, callbacks=[modes], enable_progress_bar=False)
    assert modes.in_eval == 0


def test_neighbour_blocks_fit_the_free_gpu_memory(monkeypatch):
    """The exact search on a GPU takes fewer query rows at once when a block of 1,024 rows
    against every cell would not fit a quarter of the free memory (three float64 blocks)."""
    from scdl.models._knn import _CHUNK_ROWS, chunk_rows

    cuda = torch.device("cuda")
    assert chunk_rows(1_000_000, torch.device("cpu")) == _CHUNK_ROWS
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * 2**30, 24 * 2**30))
    assert chunk_rows(50_000, cuda) == _CHUNK_ROWS
    rows = chunk_rows(1_000_000, cuda)
    assert 1 <= rows < _CHUNK_ROWS
    assert 3 * 8 * rows * 1_000_000 <= 0.25 * 20 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**20, 24 * 2**30))
    assert chunk_rows(1_000_000, cuda) == 1


def test_entry_sums_of_the_gpu_path_equal_the_cpu_path(kang):
    """The deterministic (scatter + sum) entry sums used on a GPU equal ``index_add``'s."""
    from scdl.module._csr import csr_entries
    from scdl.module._nb import _sum_entries

    x = torch.from_numpy(kang.X[:100].toarray().astype(np.float32)).to_sparse_csr()
    _, row, col, val = csr_entries(x)
    for dim, n in ((1, x.shape[0]), (0, x.shape[1])):
        out = torch.arange(n, dtype=torch.float32)
        a = _sum_entries(val, row, col, x.shape, dim, out, dense=False)
        b = _sum_entries(val, row, col, x.shape, dim, out, dense=True)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, out + x.to_dense().sum(dim))


def test_tl_steps_rank_genes_of_backed_data_with_every_gene_expressed(kang, tmp_path):
    """The usual backed file (genes filtered, so every one has counts) ranks its highly
    variable genes as in memory: scanpy cannot read the on-disk matrix itself."""
    import anndata as ad

    adata = kang[::4].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    genes = {}
    for name, data in (("memory", adata), ("backed", backed)):
        model = scdl.tl.integrate(
            data, batch_key="sample", n_top_genes=300, max_epochs=1, progress_bar=False
        )
        genes[name] = list(model.adata.var_names)
    assert len(genes["backed"]) == 300 and genes["backed"] == genes["memory"]
    backed.file.close()


def test_tl_steps_train_csc_input_from_rows_like_csr(kang):
    """CSC counts (valid input) give the tool's private copy in CSR, which minibatches read
    by rows, and the same model as CSR input."""
    import scvi
    from scipy import sparse

    adata = kang[::4].copy()
    latents = []
    for fmt in ("csr", "csc"):
        data = adata.copy()
        data.X = data.X.asformat(fmt)
        scvi.settings.seed = 0
        model = scdl.tl.integrate(
            data, batch_key="sample", n_top_genes=300, max_epochs=1, progress_bar=False
        )
        assert sparse.isspmatrix_csr(model.adata.X)
        latents.append(data.obsm["X_scdl"])
    np.testing.assert_allclose(latents[1], latents[0], rtol=1e-5, atol=1e-5)


def test_vae_sums_duplicate_csr_entries_as_scvi_tools_does(kang):
    """A count stored as two entries of one gene (valid CSR: scipy and scvi-tools sum them)
    trains the same model as the summed matrix; the user's matrix keeps its entries."""
    import anndata as ad
    from scipy import sparse

    from scdl.models import VAE

    x = kang.X[::5].tocsr()
    x = x[:, np.asarray(x.sum(0)).ravel() > 0]
    rows, cols, vals = sparse.find(x)
    split = vals >= 2  # each such count stored as two parts of the same gene
    coo_rows = np.r_[rows, rows[split]]
    coo_cols = np.r_[cols, cols[split]]
    parts = np.r_[
        np.where(split, np.floor(vals / 2), vals), vals[split] - np.floor(vals[split] / 2)
    ]
    order = np.lexsort((coo_cols, coo_rows))
    indptr = np.r_[0, np.cumsum(np.bincount(coo_rows, minlength=x.shape[0]))]
    twice = sparse.csr_matrix(
        (parts[order].astype(np.float32), coo_cols[order], indptr), shape=x.shape
    )
    assert twice.nnz > x.nnz and np.array_equal(twice.toarray(), x.toarray())
    out = []
    for matrix in (x, twice):
        adata = ad.AnnData(matrix.copy())
        adata.obs["sample"] = kang.obs["sample"].to_numpy()[::5]
        stored = adata.X.nnz
        scvi.settings.seed = 0
        VAE.setup_anndata(adata, batch_key="sample")
        model = VAE(adata, n_latent=5)
        model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
        elbo = model.history["elbo_train"].to_numpy(dtype=float)
        out.append((elbo, model.get_latent_representation()))
        # neither the count check nor the loader rewrites the user's matrix (scipy 1.18's
        # sums, which the check used, summed the duplicates in place)
        assert adata.X.nnz == stored
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-4, atol=1e-5)


def test_log_normalize_counts_is_scanpys_recipe(kang):
    """scdl's sparse log-normalisation (one float64 copy of the values) equals scanpy's
    normalize_total(1e4) + log1p in float64, for CSR, CSC, dense and duplicate entries."""
    import scanpy as sc
    from scipy import sparse

    from scdl.data import log_normalize_counts

    x = kang.X[:300].astype(np.float64)
    ref = sc.AnnData(x.copy())
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    expected = ref.X.toarray()
    before = x.copy()
    for block in (x, x.tocsc(), x.toarray()):
        out = log_normalize_counts(block)
        assert sparse.isspmatrix_csr(out) and out.dtype == np.float64
        np.testing.assert_allclose(out.toarray(), expected, rtol=1e-12, atol=1e-12)
    assert log_normalize_counts(x, dtype=np.float32).dtype == np.float32
    # every entry stored twice within its row, as halves (CSR built from its arrays keeps the
    # duplicates; a COO conversion would sum them): the same cells
    rows = [x[i] for i in range(5)]
    twice = sparse.csr_matrix(
        (
            np.concatenate([np.r_[r.data, r.data] / 2 for r in rows]),
            np.concatenate([np.r_[r.indices, r.indices] for r in rows]),
            np.r_[0, np.cumsum([2 * r.nnz for r in rows])],
        ),
        shape=(5, x.shape[1]),
    )
    assert twice.nnz == 2 * x[:5].nnz and not twice.has_canonical_format
    np.testing.assert_allclose(log_normalize_counts(twice).toarray(), expected[:5], rtol=1e-12)
    assert (x != before).nnz == 0  # the input is not modified


def test_count_check_reads_csr_in_place_like_the_row_chunks():
    """The CSR count check (the stored values read through views) counts what the row-chunk
    reading of the same matrix counts: totals, and NaN / negative / fractional."""
    from scipy import sparse

    from scdl.data._checks import _count_stats

    x = scdl.datasets.kang_pbmc().X.tocsr().astype(np.float32)
    x.data[[3, 10, 20]] = [np.nan, 2.5, -1.0]
    fast = _count_stats(x, *x.shape)
    slow = _count_stats(sparse.csc_matrix(x), *x.shape)
    # frac_dev: the largest distance of a fractional value from a whole number (2.5: 0.5);
    # max: the largest finite value (the bound on damaged counts)
    largest = float(np.nanmax(x.data))
    expected = {"nan": 1, "neg": 1, "frac": 1, "frac_dev": 0.5, "max": largest}
    assert {k: fast[2][k] for k in expected} == {k: slow[2][k] for k in expected} == expected
    # the values equal to 1 and the non-zero values (molecules vs rounded CPM), values per cell
    assert fast[2]["ones"] == slow[2]["ones"] == int(np.sum(x.data == 1))
    assert (
        fast[2]["values"] == slow[2]["values"] == int(np.count_nonzero(x.data[np.isfinite(x.data)]))
    )
    np.testing.assert_array_equal(fast[2]["detected"], slow[2]["detected"])
    np.testing.assert_array_equal(fast[2]["detected"], np.diff(x.indptr))
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-6)  # NaN where the NaN's row is
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-6)
    # duplicate entries are counted as stored and left so (scipy 1.18's sums rewrite them)
    twice = sparse.csr_matrix(
        (
            np.r_[x.data[100:140], x.data[100:140]],
            np.r_[x.indices[100:140], x.indices[100:140]],
            [0, 80],
        ),
        shape=(1, x.shape[1]),
    )
    assert _count_stats(twice, *twice.shape)[0][0] == pytest.approx(2 * x.data[100:140].sum())
    assert twice.nnz == 80 and not twice.has_canonical_format
