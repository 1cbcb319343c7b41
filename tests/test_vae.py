"""The VAE on real data: integration quality, save/load, query mapping, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from _measures import batch_mixing, label_purity
from sklearn.neighbors import KNeighborsClassifier

import scdl
from scdl.data import unintegrated_pca
from scdl.models import VAE


def test_integration_mixes_batches_and_keeps_cell_types(kang_integrated):
    adata, _ = kang_integrated
    pca = unintegrated_pca(adata, n_comps=30)
    z = adata.obsm["X_scdl"]
    mix_pca = batch_mixing(pca, adata.obs["sample"])
    mix_vae = batch_mixing(z, adata.obs["sample"])
    purity = label_purity(z, adata.obs["cell_type"])
    # stimulation splits every cell type in PCA; the VAE must mix samples clearly better
    assert mix_vae > mix_pca + 0.15, (mix_vae, mix_pca)
    assert purity > 0.85, purity


def test_integrate_writes_documented_fields(kang_integrated):
    adata, model = kang_integrated
    assert adata.obsm["X_scdl"].shape == (adata.n_obs, 10)
    info = adata.uns["X_scdl"]
    assert info["params"]["batch_key"] == "sample"
    assert len(info["var_names"]) == model.adata.n_vars
    hist = info["history"]["elbo_train"]
    assert len(hist) == info["params"]["max_epochs"]
    assert hist[-1] < hist[0]  # training reduced the loss
    mmd = model.history["batch_mmd_train"].to_numpy(dtype=float).ravel()  # the penalty is on
    assert len(mmd) == info["params"]["max_epochs"] and np.isfinite(mmd).all()
    assert "_scdl_batch" not in adata.obs and "_scvi_batch" not in adata.obs


def test_save_load_round_trip(kang_integrated, tmp_path):
    adata, model = kang_integrated
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors"}
    again = VAE.load(tmp_path / "m", model.adata.copy())
    np.testing.assert_array_equal(again.get_latent_representation(), z)
    assert again.history["elbo_train"].index.name == "epoch"  # as the trainer logged it
    # without AnnData: built from the saved registry, data passed to the method
    bare = VAE.load(tmp_path / "m")
    np.testing.assert_array_equal(bare.get_latent_representation(model.adata.copy()), z)
    with pytest.raises(ValueError, match="overwrite=True"):
        model.save(tmp_path / "m")


def test_normalized_expression_transform_batch(kang_integrated):
    _, model = kang_integrated
    a = model.get_normalized_expression(transform_batch="ctrl101", library_size=1e4)
    b = model.get_normalized_expression(transform_batch="stim101", library_size=1e4)
    assert a.shape == (model.adata.n_obs, model.adata.n_vars)
    assert np.allclose(a.sum(axis=1), 1e4, rtol=1e-3)
    # decoding in another batch changes the output, ISG15 most of all (IFN response)
    diff = (b - a).mean(axis=0)
    assert "ISG15" in diff.sort_values(ascending=False).index[:20]


def test_scvi_tools_methods_on_the_model_tl_integrate_returns(kang_integrated, capsys):
    """The model keeps the data's obs columns, so scvi-tools' differential expression groups by
    them (stimulated vs control: interferon genes on top); bad groups are named, not a
    ZeroDivisionError; view_anndata_setup prints (scvi-tools' printer lacked an import)."""
    _, model = kang_integrated
    de = model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", mode="change", batch_size=512
    )
    top = set(de.sort_values("lfc_mean", ascending=False).index[:30])
    assert len(top & {"ISG15", "IFI6", "IFIT3", "IFIT1", "ISG20", "MX1", "LY6E"}) >= 3
    with pytest.raises(KeyError, match="groupby='nope' is not a column"):
        model.differential_expression(groupby="nope", group1="stim")
    # a typo is named as one (it was read as a column written since, and the copy failed);
    # the name may also be a column written since (scdl_cell_type beside cell_type): both said
    typo = r"obs \(columns: .*\)\. Did you mean 'condition'\? Otherwise: `model\.adata\.obs` is"
    with pytest.raises(KeyError, match=typo):
        model.differential_expression(groupby="conditon", group1="stim")
    with pytest.raises(ValueError, match=r"\['Stim'\] not among the values"):
        model.differential_expression(groupby="condition", group1="Stim")
    model.view_anndata_setup()
    assert "batch" in capsys.readouterr().out.lower()
    expr = model.get_normalized_expression(gene_list=["ISG15", "IFI6"], n_samples=1)
    assert list(expr.columns) == ["ISG15", "IFI6"]
    with pytest.raises(KeyError, match=r"gene_list holds 1 genes.*\['NOT_A_GENE'\]"):
        model.get_normalized_expression(gene_list=["ISG15", "NOT_A_GENE"])  # scvi: dropped
    # positionally (scvi-tools' order: adata, indices, transform_batch, gene_list) too
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        model.get_normalized_expression(None, None, None, ["ISG15", "NOT_A_GENE"])
    one = model.get_normalized_expression(gene_list="ISG15", indices=[0, 1, 2])
    assert list(one.columns) == ["ISG15"] and one.shape == (3, 1)


def test_differential_expression_groups_as_scvi_tools_reads_them(kang_integrated):
    """A number is one group of a numeric column (scvi-tools' reading), and compared by value:
    "0" there has no cells; one vs rest skips a category without cells."""
    adata, model = kang_integrated
    # a column written after tl.integrate ran (its clusters) is not in the model's copy of obs:
    # the message says so and gives the copy that fixes it
    with pytest.raises(KeyError, match=r"written since.*model.adata.obs\['later'\] = adata"):
        model.differential_expression(groupby="later", group1="a")
    obs = model.adata.obs
    obs["code"] = obs["condition"].astype("category").cat.codes.astype(int)
    obs["cond2"] = obs["condition"].astype("category").cat.add_categories(["unused"])
    try:
        de = model.differential_expression(groupby="code", group1=0, batch_size=512)
        assert len(de) and set(de["group1"].astype(str)) == {"0"}
        with pytest.raises(ValueError, match=r"\['0'\] not among the values.*Pass 0 for '0'"):
            model.differential_expression(groupby="code", group1="0")
        # scanpy's Leiden ids are text: a number given for one is named with its fix
        obs["leiden"] = obs["code"].astype(str).astype("category")
        with pytest.raises(ValueError, match=r"\[0\] not among.*\['0', '1'\].*Pass '0' for 0"):
            model.differential_expression(groupby="leiden", group1=0)
        with pytest.raises(ValueError, match=r"\[99, 0\] not among.*Pass '0' for 0"):
            model.differential_expression(groupby="leiden", group1=99, group2=0)
        de = model.differential_expression(groupby="cond2", batch_size=512)
        assert set(de["group1"].astype(str)) == set(obs["condition"].astype(str))
    finally:
        del obs["code"], obs["cond2"], obs["leiden"]


def test_batch_embeddings_are_refused(kang):
    adata = kang[::8].copy()
    scdl.models.VAE.setup_anndata(adata, batch_key="sample")
    with pytest.raises(ValueError, match="batch_representation='embedding' is not supported"):
        scdl.models.VAE(adata, batch_representation="embedding")


def test_reference_mapping_places_query_next_to_its_type(kang):
    ref = kang[kang.obs["sample"] != "stim107"].copy()
    query = kang[kang.obs["sample"] == "stim107"].copy()
    # 40 + 20 epochs: accuracy 0.85 on both supported stacks (0.88 at 60 + 40, 1.4-2x the time)
    model = scdl.tl.integrate(ref, batch_key="sample", max_epochs=40, progress_bar=False)
    ref_latent_before = model.get_latent_representation()
    qm = VAE.load_query_data(query, model)
    qm.train(max_epochs=20, plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
    zq = qm.get_latent_representation()
    knn = KNeighborsClassifier(15).fit(ref.obsm["X_scdl"], ref.obs["cell_type"])
    acc = (knn.predict(zq) == query.obs["cell_type"].to_numpy()).mean()
    assert acc > 0.8, acc
    # the reference model itself is untouched
    np.testing.assert_array_equal(model.get_latent_representation(), ref_latent_before)
    assert qm.summary_stats.n_batch == 4


def test_query_genes_are_aligned_to_the_reference(kang_integrated):
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"].copy()
    query = query[:, query.var_names[::-1]].copy()  # same genes, another order
    qm = VAE.load_query_data(query, model)
    assert list(qm.adata.var_names) == list(model.adata.var_names)
    assert query.var_names[0] == adata.var_names[-1]  # the user's query is not reordered


def test_padding_a_query_keeps_its_dtype_sparsity_and_uns(kang_integrated, tmp_path):
    """scvi-tools pads with dense float64 zeros (the query upcast, a dense block of every cell
    by every missing gene) and drops ``uns``; scdl's padding is sparse, of the query's dtype."""
    from scipy import sparse

    adata, model = kang_integrated
    genes = list(model.adata.var_names)
    query = adata[adata.obs["sample"] == "stim107", genes[:0:-1]].copy()  # one gene missing
    query.X = sparse.csr_matrix(query.X, dtype=np.float32)
    query.layers["counts"] = query.X.copy()
    query.uns["log1p"] = {"base": None}
    query.obsm["X_other"] = np.ones((query.n_obs, 2))
    query.var["highly_variable"] = True  # scanpy's HVG column: True/False/NaN once padded
    before = query.X.toarray()
    full = adata[adata.obs["sample"] == "stim107", genes[::-1]].copy()  # a reorder only
    out = VAE.prepare_query_anndata(full, model, inplace=False)
    assert list(out.var_names) == genes and list(full.var_names) == genes[::-1]  # a new one
    VAE.prepare_query_anndata(query, model)  # in place
    assert list(query.var_names) == genes
    assert sparse.issparse(query.X) and query.X.dtype == np.float32
    assert query.layers["counts"].dtype == np.float32
    assert query.uns["log1p"] == {"base": None} and "X_other" in query.obsm
    assert not query.X[:, 0].toarray().any()  # the missing gene: zeros
    np.testing.assert_array_equal(query.X[:, 1:].toarray(), before[:, ::-1])
    query.write_h5ad(tmp_path / "padded.h5ad")  # the padded var is writable
    twice = full[:, [0, 0, *range(1, full.n_vars)]].copy()
    with pytest.raises(ValueError, match="duplicate"):  # scdl's message, not pandas'
        VAE.prepare_query_anndata(twice, model, inplace=False)
    with pytest.raises(ValueError, match=r"Only 0 of the reference.s \d+ genes"):
        VAE.prepare_query_anndata(query[:, :0].copy(), model)


def test_a_query_can_be_subset_in_place_as_scvi_tools_does(kang_integrated):
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"].copy()
    query = query[:, query.var_names[::-1]].copy()
    query.obs["sample"] = "new"
    qm = VAE.load_query_data(query, model, inplace_subset_query_vars=True)
    assert qm.adata is query and list(query.var_names) == list(model.adata.var_names)


def test_mapping_onto_a_reference_without_batches_or_with_labels_is_said(kang):
    """A reference trained without a batch key has no batch weights to train (mapping would
    change nothing, silently); a labels column of the query is checked as the batch one is."""
    import warnings

    from conftest import assert_unchanged, snapshot

    ref = kang[kang.obs["sample"] != "stim107"][::4].copy()
    query = kang[kang.obs["sample"] == "stim107"][:100].copy()
    VAE.setup_anndata(ref)
    plain = VAE(ref, n_latent=4)
    plain.train(max_epochs=1, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="trained without a batch_key"):
        VAE.load_query_data(query.copy(), plain)
    with warnings.catch_warnings():  # every weight trains: the query moves
        warnings.filterwarnings("error", message=".*trained without a batch_key")
        VAE.load_query_data(query.copy(), plain, unfrozen=True)
    VAE.setup_anndata(ref, batch_key="sample", labels_key="cell_type")
    labelled = VAE(ref, n_latent=4)
    labelled.train(max_epochs=1, enable_progress_bar=False)
    unlabelled = query.copy()
    del unlabelled.obs["cell_type"]
    snap = snapshot(unlabelled)
    with pytest.raises(KeyError, match=r"labels_key.*query.obs\['cell_type'\] = 'unknown'"):
        VAE.load_query_data(unlabelled, labelled)
    assert_unchanged(unlabelled, snap)
    unlabelled.obs["cell_type"] = np.arange(unlabelled.n_obs)  # numbers, the reference's text
    snap = snapshot(unlabelled)
    with pytest.raises(TypeError, match="cell_type"):
        VAE.load_query_data(unlabelled, labelled)
    assert_unchanged(unlabelled, snap)
    unlabelled.obs["cell_type"] = "unknown"  # a label the reference does not know: taken
    assert VAE.load_query_data(unlabelled, labelled).summary_stats.n_batch == 4


def test_query_cells_empty_in_the_reference_genes_are_said_as_such(kang_integrated):
    """Cells whose counts all lie in the query's extra genes are empty in the copy mapped:
    said of the reference's genes, with a filter that drops them (filter_cells on the whole
    query would keep them)."""
    import warnings

    import anndata as ad
    from scipy import sparse

    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"][:100].copy()
    x = query.X.tolil()
    x[:3] = 0
    extra = ad.AnnData(
        sparse.csr_matrix(np.r_[np.full((3, 2), 5.0), np.zeros((97, 2))].astype(np.float32)),
        obs=query.obs[[]],
    )
    extra.var_names = ["EXTRA1", "EXTRA2"]
    query.X = x.tocsr()
    query = ad.concat([query, extra], axis=1, merge="first")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VAE.load_query_data(query, model)
    said = [str(w.message) for w in caught if "no counts" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith(
        f"3 of 100 query cells have no counts in the reference's {model.adata.n_vars} genes"
    )
    keep = np.asarray(query[:, model.get_var_names()].X.sum(1)).ravel() > 0  # the fix it names
    assert keep.sum() == 97


def test_a_backed_query_is_aligned_in_memory(kang_integrated, tmp_path):
    """A backed query (``backed="r"``) with the genes in another order: its subset is read
    into memory (a copy of a backed AnnData needs a file); padding a backed query in place is
    refused with the fix, and ``inplace=False`` pads a copy in memory."""
    import anndata as ad

    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"].copy()
    query[:, query.var_names[::-1]].copy().write_h5ad(tmp_path / "q.h5ad")
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    qm = VAE.load_query_data(backed, model)
    assert list(qm.adata.var_names) == list(model.adata.var_names)
    assert backed.isbacked and backed.var_names[0] == adata.var_names[-1]
    genes = list(model.adata.var_names)
    query[:, genes[10:]].copy().write_h5ad(tmp_path / "lacking.h5ad")  # 10 genes missing
    lacking = ad.read_h5ad(tmp_path / "lacking.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"backed.*adata\.to_memory\(\)"):
        VAE.prepare_query_anndata(lacking, model)
    padded = VAE.prepare_query_anndata(lacking, model, inplace=False)
    assert list(padded.var_names) == genes and not padded.isbacked


def test_batch_penalty_brings_the_batches_closer(kang_integrated):
    """The default batch MMD weight leaves the batches closer in the latent than weight 0."""
    from scipy.spatial.distance import cdist

    def batch_mmd(z, batch):  # an RBF MMD of each batch against the rest, written here
        d2 = cdist(z, z, "sqeuclidean")
        k = np.exp(-d2 / np.median(d2))
        out = []
        for b in np.unique(batch):
            i = batch == b
            out.append(k[i][:, i].mean() + k[~i][:, ~i].mean() - 2 * k[i][:, ~i].mean())
        return float(np.mean(out))

    adata, _ = kang_integrated
    plain = adata.copy()
    scdl.tl.integrate(
        plain,
        batch_key="sample",
        max_epochs=adata.uns["X_scdl"]["params"]["max_epochs"],
        progress_bar=False,
        model_kwargs={"batch_mmd_weight": 0.0},
    )
    batch = adata.obs["sample"].to_numpy()
    with_penalty = batch_mmd(adata.obsm["X_scdl"], batch)
    without = batch_mmd(plain.obsm["X_scdl"], batch)
    assert "batch_mmd_train" not in plain.uns["X_scdl"]["history"]
    assert with_penalty < 0.9 * without, (with_penalty, without)


def test_same_seed_same_latent(kang):
    small = kang[np.sort(np.random.default_rng(0).choice(kang.n_obs, 400, replace=False))].copy()
    z = []
    for _ in range(2):
        a = small.copy()
        scdl.tl.integrate(
            a, batch_key="sample", max_epochs=3, batch_size=64, progress_bar=False, random_state=7
        )
        z.append(a.obsm["X_scdl"])
    np.testing.assert_array_equal(z[0], z[1])
    other = small.copy()
    scdl.tl.integrate(
        other, batch_key="sample", max_epochs=3, batch_size=64, progress_bar=False, random_state=8
    )
    assert not np.array_equal(other.obsm["X_scdl"], z[0])  # the seed is used, not a constant


def test_cluster_recovers_cell_types(kang_integrated):
    from sklearn.metrics import adjusted_rand_score

    adata, _ = kang_integrated
    scdl.tl.cluster(adata, resolution=0.5)
    ari = adjusted_rand_score(adata.obs["cell_type"], adata.obs["scdl_cluster"])
    assert ari > 0.5, ari
    assert "scdl_cluster_neighbors_connectivities" in adata.obsp
    assert "neighbors" not in adata.uns  # the default graph is not touched


def test_integration_metrics_rank_vae_above_pca(kang_integrated, monkeypatch):
    import logging

    # a session without logging set up: scib-metrics' own logging.info call gave the root
    # logger a stderr handler for good (every later record printed twice)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    adata, _ = kang_integrated
    adata = adata.copy()
    adata.obsm["X_pca"] = unintegrated_pca(adata)
    adata.obsm["_pre"] = adata.obsm["X_pca"][:, :5]  # a user's key: scored as given
    before = {k: adata.obsm[k].copy() for k in ("X_pca", "X_scdl")}
    adata = adata[:]  # a view: made actual before the table is written, warned as tl steps do
    with pytest.warns(UserWarning, match="adata is a view: it is made an actual AnnData"):
        df = scdl.tl.integration_metrics(
            adata,
            batch_key="sample",
            label_key="cell_type",
            embeddings=["X_pca", "X_scdl", "_pre"],
        )
    assert not adata.is_view
    assert logging.getLogger().handlers == []
    assert df.loc["_pre", "Bio conservation"] != df.loc["X_pca", "Bio conservation"]
    for k, v in before.items():  # scores only: the embeddings stay bit for bit
        np.testing.assert_array_equal(adata.obsm[k], v)
    assert {"Batch correction", "Bio conservation", "Total"} <= set(df.columns)
    assert df.loc["X_scdl", "Batch correction"] > df.loc["X_pca", "Batch correction"]
    assert df.loc["X_scdl", "Total"] > df.loc["X_pca", "Total"]
    assert adata.uns["scdl_integration_metrics"].shape == df.shape
    df.loc["X_scdl", "Total"] = -1.0  # the returned table is the caller's: the stored one stays
    assert adata.uns["scdl_integration_metrics"].loc["X_scdl", "Total"] > 0


def test_integration_metrics_start_arpack_from_a_fixed_vector(kang_integrated):
    """scib-metrics' kBET diffusion embedding calls ``eigsh`` without a start vector: ARPACK's
    random one (from the process's earlier calls; from the OS since SciPy 1.18) flipped
    eigenvector signs between calls and moved kBET by 0.05 for the same input. While the
    metrics run, the same matrix gives the same eigenvectors; scipy is restored after."""
    import scipy.sparse.linalg as linalg
    from sklearn.neighbors import kneighbors_graph

    from scdl.tl._scib_run import fixed_arpack_start

    adata, _ = kang_integrated
    graph = kneighbors_graph(adata.obsm["X_scdl"][:400], 15, include_self=False)
    graph = (graph + graph.T).astype(np.float64)
    original = linalg.eigsh
    with fixed_arpack_start():
        first, again = (linalg.eigsh(graph, k=6)[1] for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert linalg.eigsh is original


def test_integration_metrics_search_kbets_neighbours_exactly(kang_integrated):
    """kBET's neighbours within each type come from scib-metrics' ``pynndescent``, whose numba
    compilation took about 35 s of a first call: while the metrics run, a search of up to
    50,000 cells is exact (scikit-learn), and scib-metrics' own function is put back after."""
    import scib_metrics.nearest_neighbors as nn
    from sklearn.neighbors import NearestNeighbors

    from scdl.tl._scib_run import exact_diffusion_neighbors

    x = kang_integrated[0].obsm["X_scdl"][:300].astype(np.float64)
    original = nn.pynndescent
    with exact_diffusion_neighbors(), exact_diffusion_neighbors():  # nested calls: one patch
        assert nn.pynndescent is not original
        found = nn.pynndescent(x, n_neighbors=16)
        # kBET asks 11 neighbours of a type of 10: every cell, then -1 / inf as pynndescent
        # pads (scikit-learn refused, and kBET scored such a type 0 instead of its score)
        few = nn.pynndescent(x[:10], n_neighbors=11)
    assert nn.pynndescent is original
    assert few.indices.shape == few.distances.shape == (10, 11)
    assert (few.indices[:, -1] == -1).all() and np.isinf(few.distances[:, -1]).all()
    assert all(sorted(row) == list(range(10)) for row in few.indices[:, :10])
    dist, idx = NearestNeighbors(n_neighbors=16).fit(x).kneighbors(x)
    np.testing.assert_array_equal(found.indices, idx)
    np.testing.assert_allclose(found.distances, dist)
    assert (found.indices[:, 0] == np.arange(len(x))).all()  # each cell its own first, as before


def test_integration_metrics_freeze_the_sessions_objects_only_while_they_run():
    """scib-metrics collects garbage before every metric: the session's objects are frozen
    meanwhile (those collections walk only the new ones) and thawed after; objects frozen
    already (a user's ``gc.freeze``; Python 3.12.1 starts with some) are left as they were."""
    import gc

    from scdl.tl._scib_run import session_objects_frozen

    def frozen_inside() -> int:
        with session_objects_frozen():
            return gc.get_freeze_count()

    before = gc.get_freeze_count()
    inside = frozen_inside()
    # left as it was: not thawed (Python 3.12.1 starts with objects frozen) nor frozen further;
    # a few fewer only where another thread (pytest-xdist's channel) freed some meanwhile
    assert 0.99 * before <= gc.get_freeze_count() <= before
    assert inside > 0 if before == 0 else 0.99 * before < inside <= before
    if before == 0:  # a user's own freeze (not done where the interpreter's is: it can't be undone)
        gc.freeze()
        try:
            frozen = gc.get_freeze_count()
            # at most the user's objects, not one more frozen nor all thawed; a few fewer where
            # another thread (pytest-xdist's channel) freed some of them meanwhile
            assert 0.99 * frozen < frozen_inside() <= frozen
            assert 0.99 * frozen < gc.get_freeze_count() <= frozen
        finally:
            gc.unfreeze()


def test_integration_metrics_say_where_a_score_rests_on_little(kang_integrated):
    """A NaN metric (PCR comparison of an embedding with a constant column) leaves its totals
    on fewer metrics, and a one-cell type scored as isolated gives 0.5 whatever the embedding:
    both were silent (scib-metrics' own values, passed through)."""
    adata, _ = kang_integrated
    adata = adata.copy()
    # a constant column, the embedding's shape kept (JAX compiles once per shape)
    adata.obsm["flat"] = adata.obsm["X_scdl"].copy()
    adata.obsm["flat"][:, -1] = 0.0
    types = adata.obs["cell_type"].astype(str).to_numpy().copy()
    types[0] = "Lonely"
    # cells without a type, scored as one (two of each sample: not an isolated label)
    sample = adata.obs["sample"].astype(str).to_numpy()
    types[[i for s in np.unique(sample) for i in np.flatnonzero(sample == s)[5:7]]] = "NA"
    adata.obs["types"] = types
    samples = adata.obs["sample"].astype(str).to_numpy().copy()
    samples[[1, 2, -1]] = "stray"  # a batch of three cells: iLISI's divisor grows by one
    adata.obs["samples"] = samples
    with pytest.warns(UserWarning) as record:
        df = scdl.tl.integration_metrics(
            adata, batch_key="samples", label_key="types", embeddings=["X_scdl", "flat"]
        )
    said = " ".join(str(w.message) for w in record)
    assert "is NaN for 'flat'" in said and "is NaN for 'X_scdl'" not in said
    assert "Lonely (1 cells)" in said
    assert "batches of a few cells (stray (3 cells))" in said
    code = next(str(w.message) for w in record if "stray" in str(w.message)).split("`")[1]
    namespace = {"adata": adata}
    exec(code, namespace)  # the message's code drops them
    assert namespace["adata"].n_obs == adata.n_obs - 3
    assert "'NA' (8 cells), scored as a cell type" in said
    assert np.isnan(df.loc["flat", "PCR comparison"]) and np.isfinite(df.loc["X_scdl"]).all()
    assert df.loc["X_scdl", "Isolated labels"] == pytest.approx(0.5)


def test_bad_cells_or_batch_size_leave_a_new_query_unchanged(kang_integrated):
    """scvi-tools registers a new AnnData (writing ``_scvi_*`` fields into it) before its data
    loader reads ``indices`` and ``batch_size``; scdl checks them first."""
    from conftest import assert_unchanged, snapshot

    adata, model = kang_integrated
    query = adata[:80].copy()
    query.obs_names = [f"q{i}" for i in range(query.n_obs)]
    snap = snapshot(query)
    with pytest.raises(IndexError, match="outside the 80 cells"):
        model.get_latent_representation(query, indices=[10_000])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.get_latent_representation(query, batch_size=0)
    with pytest.raises(ValueError, match="selects no cells"):
        model.get_normalized_expression(query, indices=[])
    assert_unchanged(query, snap)
    # a numpy integer (np.ceil(...).astype(int)) as torch's DataLoader needs it: an int
    latent = model.get_latent_representation(query, indices=[0, 5], batch_size=np.int64(1))
    assert model.get_normalized_expression(query, batch_size=np.int64(64)).shape == query.shape
    np.testing.assert_allclose(latent, model.get_latent_representation(query)[[0, 5]], atol=1e-6)


def test_an_edited_batch_column_is_read_again_or_refused(kang_integrated):
    """scvi-tools reads the batch codes it copied when it registered an AnnData; an edit of
    the column after that is used (a query) or refused (the model's own AnnData)."""
    from conftest import assert_unchanged, snapshot

    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"][:60].copy()
    before = model.get_latent_representation(query)  # registers the query
    query.obs["sample"] = "ctrl101"
    moved = model.get_latent_representation(query)
    fresh = adata[adata.obs["sample"] == "stim107"][:60].copy()
    fresh.obs["sample"] = "ctrl101"
    np.testing.assert_array_equal(moved, model.get_latent_representation(fresh))
    assert not np.array_equal(before, moved)
    query.obs["sample"] = "stim999"
    snap = snapshot(query)
    with pytest.raises(
        ValueError, match=r"categories the VAE was not trained on \(\['stim999'\]\)"
    ):
        model.get_latent_representation(query)
    assert_unchanged(query, snap)
    # read without pandas' deprecated Categorical of values outside its categories (an error
    # from pandas 4 on)
    import warnings

    from scdl.data import edited_obs_columns

    registry = model.get_anndata_manager(query).registry
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        assert edited_obs_columns(query, registry) == ["sample"]

    small = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, 200, replace=False))].copy()
    VAE.setup_anndata(small, batch_key="sample")
    own = VAE(small, n_latent=np.int64(5))  # numpy integers, as scvi-tools takes them
    assert own.module.n_latent == 5
    own.train(max_epochs=1, enable_progress_bar=False)
    small.obs["sample"] = small.obs["sample"].cat.reorder_categories(
        list(small.obs["sample"].cat.categories[::-1])
    )  # same values, new category order: not an edit
    own.get_latent_representation()
    small.obs["sample"] = small.obs["sample"].astype(str).replace({"ctrl101": "stim107"})
    with pytest.raises(ValueError, match=r"adata.obs \['sample'\] changed after the VAE was set"):
        own.get_latent_representation()
    with pytest.raises(ValueError, match="use_observed_lib_size is fixed to True"):
        VAE(small, use_observed_lib_size=False)


def test_another_models_setup_on_the_same_anndata_leaves_the_model_working(kang):
    """scvi-tools lets several models register one AnnData in turn; each setup rewrites the
    shared copies (``obs["_scvi_batch"]``). The first model registers it again with its own
    categories, as scvi-tools' models do, rather than blaming an edit nobody made."""
    import scvi

    from scdl.models import ContrastiveVAE

    adata = kang[np.sort(np.random.default_rng(1).choice(kang.n_obs, 200, replace=False))].copy()
    VAE.setup_anndata(adata, batch_key="sample")
    model = VAE(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    z = model.get_latent_representation()
    scvi.model.SCVI.setup_anndata(adata, batch_key="condition")
    ContrastiveVAE.setup_anndata(adata)
    other = ContrastiveVAE(adata)
    other.train(groupby="condition", background="ctrl", max_epochs=1, enable_progress_bar=False)
    np.testing.assert_array_equal(model.get_latent_representation(), z)
    assert model.get_normalized_expression().shape == (adata.n_obs, adata.n_vars)
    # and back: the other model registers it again too (scvi-tools' own replay)
    assert other.get_latent_representation().shape == (adata.n_obs, 10)
    np.testing.assert_array_equal(model.get_latent_representation(), z)
    # a category the model never saw is still refused after another setup
    scvi.model.SCVI.setup_anndata(adata, batch_key="condition")
    adata.obs["sample"] = adata.obs["sample"].astype(str).replace({"ctrl101": "ctrl999"})
    with pytest.raises(ValueError, match="ctrl999"):
        model.get_latent_representation()


def test_a_copy_used_by_another_model_keeps_its_own_models_registration(kang):
    """A model set up on a copy (a subset) of another model's AnnData: the first model given
    that copy gives it a new id and writes its own batch codes into it (scvi-tools' copy
    rule). The second model then read those codes: its inference blamed an edit nobody made,
    and its training read the other model's batches (a crash with more of them, wrong batches
    silently with fewer)."""
    import scvi

    adata = kang[np.sort(np.random.default_rng(2).choice(kang.n_obs, 300, replace=False))].copy()
    VAE.setup_anndata(adata, batch_key="condition")
    first = VAE(adata, n_latent=5)
    first.train(max_epochs=1, enable_progress_bar=False)
    sub = adata[:200].copy()  # carries the parent's id
    VAE.setup_anndata(sub, batch_key="sample")
    second = VAE(sub, n_latent=5)
    scvi.settings.seed = 0
    second.train(max_epochs=1, enable_progress_bar=False)
    z = second.get_latent_representation()
    clean = sub.copy()
    assert first.get_latent_representation(sub).shape == (200, 5)  # re-ids `sub`
    np.testing.assert_array_equal(second.get_latent_representation(), z)
    # training reads its own four samples again, not the first model's two conditions
    codes = second.adata_manager.get_from_registry(scvi.REGISTRY_KEYS.BATCH_KEY).ravel()
    mapping = second.registry_["field_registries"]["batch"]["state_registry"]["categorical_mapping"]
    np.testing.assert_array_equal(np.asarray(mapping)[codes], sub.obs["sample"].astype(str))
    scvi.settings.seed = 1
    second.train(max_epochs=1, enable_progress_bar=False)  # crashed: more batches than codes
    assert np.isfinite(second.get_latent_representation(clean)).all()


def test_covariate_scaling_reads_the_models_own_column_after_another_setup(kang):
    """``VAE(adata)`` standardises its continuous covariates from the registered column; another
    class's setup since (here scvi-tools' SCVI with another covariate) rewrote the shared copy,
    and the model was scaled by that column instead (sd 129 for the covariate's 0.6)."""
    import scvi

    adata = kang[np.sort(np.random.default_rng(3).choice(kang.n_obs, 200, replace=False))].copy()
    counts = np.asarray(adata.X.sum(1)).ravel()
    adata.obs["log_total"] = np.log1p(counts)
    adata.obs["n_genes"] = np.asarray((adata.X > 0).sum(1)).ravel().astype(float)
    VAE.setup_anndata(adata, continuous_covariate_keys=["log_total"])
    scvi.model.SCVI.setup_anndata(adata, continuous_covariate_keys=["n_genes"])
    model = VAE(adata, n_latent=5)
    clean = adata.copy()
    for key in [k for k in clean.uns if k.startswith("_scvi")]:
        del clean.uns[key]
    VAE.setup_anndata(clean, continuous_covariate_keys=["log_total"])
    reference = VAE(clean, n_latent=5)
    for buffer in ("cont_cov_center", "cont_cov_scale"):
        np.testing.assert_allclose(
            getattr(model.module, buffer).numpy(),
            getattr(reference.module, buffer).numpy(),
            rtol=1e-6,
        )
    assert abs(float(model.module.cont_cov_scale[0]) - adata.obs["log_total"].std()) < 0.05


def test_counts_normalised_in_place_after_registration_are_refused(kang_integrated):
    """scanpy's normalize_total and log1p rewrite X in place after the model registered it."""
    import scanpy as sc

    adata, model = kang_integrated
    query = adata[:80].copy()
    query.obs_names = [f"q{i}" for i in range(query.n_obs)]
    model.get_latent_representation(query)  # registers the query (checked in full)
    sc.pp.normalize_total(query)
    sc.pp.log1p(query)
    with pytest.raises(ValueError, match="non-integer values.*the VAE reads raw counts from"):
        model.get_latent_representation(query)
    dense = adata[:80].copy()
    dense.X = dense.X.toarray()
    assert scdl.data.sampled_counts_ok(dense, None)
    dense.X = np.log1p(dense.X)
    assert not scdl.data.sampled_counts_ok(dense, None)


def test_unseen_numbered_batches_are_named_as_the_user_wrote_them(kang):
    """Batch labels that are numbers: the message shows 999 and [101, 107], not the strings
    or numpy's np.int64(101)."""
    import pandas as pd

    idx = np.sort(np.random.default_rng(0).choice(kang.n_obs, 150, replace=False))
    adata = kang[idx, :300].copy()
    donor = adata.obs["sample"].astype(str).str[-3:].astype(int)
    adata.obs["donor"] = pd.Categorical(donor)
    VAE.setup_anndata(adata, batch_key="donor")
    model = VAE(adata, n_latent=4)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = adata[:40].copy()
    query.obs["donor"] = pd.Categorical(np.full(query.n_obs, 999))
    with pytest.raises(ValueError, match=r"\(\[999\]\); it knows \[101, 107\]"):
        model.get_latent_representation(query)
