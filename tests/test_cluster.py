"""scdl.tl.cluster's resolution choice (``"auto"``, ``n_clusters``) on real data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import EPOCHS, read_shared
from sklearn.metrics import adjusted_rand_score

import scdl


@pytest.fixture(scope="module")
def cellbench():
    """CellBench, five lung cell lines on three CEL-seq2 plates, singlets, with PCA."""
    from scdl.data import unintegrated_pca

    adata = read_shared("cellbench_lung_5lines_3plates.h5ad")
    adata = adata[adata.obs["demuxlet"] == "SNG"].copy()
    adata.obsm["X_pca"] = unintegrated_pca(adata, n_comps=30)
    return adata


def test_auto_resolution_close_to_best(cellbench):
    adata = cellbench.copy()
    scdl.tl.cluster(adata, use_rep="X_pca", resolution="auto")
    info = adata.uns["scdl_cluster"]
    assert info["resolution_method"] == "auto"
    chosen = info["resolution"]
    assert chosen in info["scan"]["resolution"]
    auto = adjusted_rand_score(adata.obs["cell_line"], adata.obs["scdl_cluster"])
    scanned = dict(zip(info["scan"]["resolution"], info["scan"]["n_clusters"], strict=True))
    # the scan scores the partitions tl.cluster writes: the same count at every resolution
    assert adata.obs["scdl_cluster"].nunique() == scanned[chosen]
    best = 0.0
    for res in (0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0):
        scdl.tl.cluster(adata, use_rep="X_pca", resolution=res, key_added="fixed")
        best = max(best, adjusted_rand_score(adata.obs["cell_line"], adata.obs["fixed"]))
        assert adata.obs["fixed"].nunique() == scanned[res], res
    assert auto >= best - 0.1, (auto, best, chosen)
    # the numeric path at the chosen resolution gives the same clusters
    scdl.tl.cluster(adata, use_rep="X_pca", resolution=chosen, key_added="again")
    assert adjusted_rand_score(adata.obs["scdl_cluster"], adata.obs["again"]) == 1.0
    assert adata.uns["again"]["resolution_method"] == "fixed"
    fig = scdl.pl.cluster_resolution(adata, show=False)
    counts = fig.axes[1].get_yticks()  # the cluster axis: whole numbers only
    assert len(counts) and np.allclose(counts, np.round(counts))


@pytest.mark.parametrize("k", [3, 5, 8])
def test_n_clusters(cellbench, k):
    adata = cellbench.copy()
    scdl.tl.cluster(adata, use_rep="X_pca", n_clusters=k)
    assert abs(adata.obs["scdl_cluster"].nunique() - k) <= 1
    assert adata.uns["scdl_cluster"]["resolution_method"] == "n_clusters"
    steps = adata.uns["scdl_cluster"]["scan"]
    assert len(steps["resolution"]) == len(steps["n_clusters"]) >= 1
    assert adata.uns["scdl_cluster"]["n_clusters"] == adata.obs["scdl_cluster"].nunique()


def test_clusters_are_named_by_size_and_other_records_are_not_overwritten(cellbench):
    """Every path names clusters "0", "1", ... from the largest (the fixed and "auto" paths
    kept igraph's numbering, n_clusters named by size); a key_added holding another step's
    record (sc.pp.neighbors') is refused: it was replaced, and sc.tl.umap then failed."""
    import scanpy as sc
    from conftest import assert_unchanged, snapshot

    adata = cellbench.copy()
    scdl.tl.cluster(adata, use_rep="X_pca", resolution=0.3)
    sizes = adata.obs["scdl_cluster"].value_counts(sort=False)
    assert list(sizes.index) == [str(i) for i in range(len(sizes))]
    assert (np.diff(sizes.to_numpy()) <= 0).all()
    scdl.tl.cluster(adata, use_rep="X_pca", resolution=0.3)  # its own record: replaced
    # below the graph's five components (the lines), closest centroids merge
    with pytest.warns(UserWarning, match="resolution='auto' is ignored"):
        scdl.tl.cluster(adata, use_rep="X_pca", n_clusters=2, resolution="auto", key_added="k2")
    assert adata.obs["k2"].nunique() == 2 < adata.uns["k2"]["n_clusters_leiden"]
    # scanpy's sub-clustering on the graph written, as the docstring shows
    sc.tl.leiden(
        adata,
        restrict_to=("scdl_cluster", ["0"]),
        neighbors_key="scdl_cluster_neighbors",
        flavor="igraph",
        n_iterations=2,
        key_added="scdl_subcluster",
    )
    assert adata.obs["scdl_subcluster"].nunique() > adata.obs["scdl_cluster"].nunique()
    # per-sample clusterings concatenated: the thinned record beside its column is replaced
    halves = [adata[:200].copy(), adata[200:].copy()]
    for half, res in zip(halves, (0.3, 1.0)):
        scdl.tl.cluster(half, use_rep="X_pca", resolution=res)
    joined = ad.concat(halves, uns_merge="same")
    assert "resolution" not in joined.uns["scdl_cluster"].get("params", {})
    scdl.tl.cluster(joined, use_rep="X_pca", resolution=0.3)
    assert joined.uns["scdl_cluster"]["resolution"] == 0.3
    sc.pp.neighbors(adata, use_rep="X_pca", transformer="sklearn")
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"overwrite adata.uns\['neighbors'\].*sc.pp.neighbors"):
        scdl.tl.cluster(adata, use_rep="X_pca", key_added="neighbors")
    assert_unchanged(adata, snap)


def test_named_by_size_ranks_clusters_from_the_largest():
    from scdl.tl._cluster import named_by_size

    named = named_by_size(np.array([7, 3, 3, 9, 9, 9, 9, 7, 3]))  # sizes: 9 x4, 3 x3, 7 x2
    assert list(named) == ["2", "1", "1", "0", "0", "0", "0", "2", "1"]
    tied = named_by_size(pd.Categorical(["b", "a", "a", "b"]))  # a tie: the first cell's first
    assert list(tied) == ["0", "1", "1", "0"] and list(tied.categories) == ["0", "1"]


def test_n_clusters_beyond_reach_warns_with_the_count_reached(cellbench):
    adata = cellbench.copy()
    with pytest.warns(UserWarning, match=f"No resolution gives {adata.n_obs} Leiden clusters"):
        scdl.tl.cluster(adata, use_rep="X_pca", n_clusters=adata.n_obs)
    info = adata.uns["scdl_cluster"]
    assert info["n_clusters_requested"] == adata.n_obs
    assert info["n_clusters"] == adata.obs["scdl_cluster"].nunique() < adata.n_obs


def test_one_batch_gene_codes_defaults(cellbench):
    """One plate, Ensembl IDs instead of gene names, scdl's defaults end to end (fewer epochs)."""
    adata = cellbench[cellbench.obs["batch"] == cellbench.obs["batch"].cat.categories[0]].copy()
    adata.var_names = adata.var["gene_ids"].astype(str).to_numpy()
    del adata.obsm["X_pca"]
    scdl.tl.integrate(adata, max_epochs=EPOCHS, progress_bar=False)
    scdl.tl.cluster(adata, resolution="auto")
    k = adata.obs["scdl_cluster"].nunique()
    assert 2 <= k <= 10
    ari = adjusted_rand_score(adata.obs["cell_line"], adata.obs["scdl_cluster"])
    assert ari > 0.6, ari
    # resolution 1 on the default graph does not split the lines (a 15-neighbour graph on
    # this latent gives 6 clusters for 5 lines, ARI 0.84)
    scdl.tl.cluster(adata, key_added="res1")
    ari1 = adjusted_rand_score(adata.obs["cell_line"], adata.obs["res1"])
    assert ari1 > 0.9, (ari1, adata.obs["res1"].nunique())


def test_cluster_resolution_plot_needs_scan(cellbench):
    adata = cellbench.copy()
    scdl.tl.cluster(adata, use_rep="X_pca", resolution=0.5)
    with pytest.raises(KeyError, match="resolution='auto'"):
        scdl.pl.cluster_resolution(adata)
    assert np.isfinite(adata.uns["scdl_cluster"]["resolution"])


def test_auto_floor_when_silhouette_peaks_coarse():
    """A silhouette peak at a coarse resolution (as on Kang 2k: 2-3 lymphoid / myeloid-level
    groups for 7 types) is lifted to the floor; a finer peak is kept."""
    import pandas as pd

    from scdl.tl._resolution import FLOOR, choose

    res = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
    k = [2, 3, 6, 6, 6, 7, 9, 10]
    sil = [0.16, 0.16, 0.13, 0.14, 0.14, 0.14, 0.14, 0.12]
    coarse = pd.DataFrame({"resolution": res, "n_clusters": k, "silhouette": sil})
    assert choose(coarse) == FLOOR == 0.4
    fine = coarse.assign(silhouette=[0.10, 0.11, 0.12, 0.13, 0.14, 0.19, 0.2, 0.15])
    assert choose(fine) == 0.8


def test_auto_keeps_cells_that_no_partition_separates_together(cellbench):
    """Cells no partition separates (one real cell's profile repeated: every silhouette 0) stay
    one cluster; the tie band would otherwise hold every partition and return the finest (140
    clusters for 200 identical cells). Lines that do separate are unaffected."""
    one = cellbench[np.repeat(0, 200)].copy()
    one.obs_names_make_unique()
    scdl.tl.cluster(one, use_rep="X_pca", resolution="auto")
    assert np.nanmax(one.uns["scdl_cluster"]["scan"]["silhouette"]) <= 0.01
    assert one.obs["scdl_cluster"].nunique() == 1
    assert one.uns["scdl_cluster"]["resolution"] == 0.1


def test_fewer_cells_than_n_neighbors_clusters_with_a_warning(cellbench):
    """scanpy takes n_neighbors >= n_obs (adjusting it with a warning): so does tl.cluster, in
    each mode; 20 cells of two lines come apart."""
    lines = cellbench.obs["cell_line"].unique()[:2]
    idx = np.concatenate([np.flatnonzero(cellbench.obs["cell_line"] == g)[:10] for g in lines])
    adata = cellbench[idx].copy()
    for kwargs in ({}, {"resolution": "auto"}, {"n_clusters": 2}):
        with pytest.warns(
            UserWarning, match="20 cells cannot have n_neighbors=30; using n_neighbors=11"
        ):
            scdl.tl.cluster(adata, use_rep="X_pca", key_added="c", **kwargs)
        assert adata.uns["c_neighbors"]["params"]["n_neighbors"] == 11
    assert adjusted_rand_score(adata.obs["cell_line"], adata.obs["c"]) == 1.0
    with pytest.raises(ValueError, match="2 cells are too few"):
        scdl.tl.cluster(adata[:2].copy(), use_rep="X_pca")


@pytest.fixture(scope="module")
def cellbench_integrated(cellbench):
    """The three plates integrated as one batch (no batch key), without a stored PCA."""
    adata = cellbench.copy()
    del adata.obsm["X_pca"]
    scdl.tl.integrate(adata, max_epochs=EPOCHS, progress_bar=False)
    return adata


def test_one_batch_latent_averages_in_a_pca_of_the_counts(cellbench_integrated):
    """For a latent trained without a batch key the latent's graph is averaged with scanpy's
    graph on a PCA of the counts, computed when ``obsm["X_pca"]`` is missing and not stored; on
    the three plates the lines come apart at "auto", which the latent's graph alone does not
    manage (7 clusters)."""
    adata = cellbench_integrated.copy()
    scdl.tl.cluster(adata, resolution="auto")
    source = "computed from X, uns['X_scdl']['var_names']"
    assert adata.uns["scdl_cluster_neighbors"]["params"]["pca"] == source
    assert "X_pca" not in adata.obsm
    scdl.tl.cluster(adata, resolution="auto", pca_key=None, key_added="alone")
    assert adata.uns["alone_neighbors"]["params"]["pca"] == ""
    joint = adjusted_rand_score(adata.obs["cell_line"], adata.obs["scdl_cluster"])
    alone = adjusted_rand_score(adata.obs["cell_line"], adata.obs["alone"])
    assert joint > 0.95 and joint > alone + 0.05, (joint, alone)


def test_copy_returns_a_clustered_copy_and_leaves_the_input(cellbench_integrated):
    from conftest import assert_unchanged, snapshot

    adata = cellbench_integrated.copy()
    snap = snapshot(adata)
    out = scdl.tl.cluster(adata, resolution=0.5, copy=True)
    assert out is not adata and "scdl_cluster" in out.obs
    assert "scdl_cluster_neighbors_connectivities" in out.obsp
    assert_unchanged(adata, snap)
    assert scdl.tl.cluster(adata, resolution=0.5) is None
    assert adata.obs["scdl_cluster"].equals(out.obs["scdl_cluster"])
    # the same embedding as a DataFrame of nullable columns (`.convert_dtypes()`), which
    # scanpy reads, is clustered (it was refused as "dtype object")
    import pandas as pd

    frame = pd.DataFrame(adata.obsm["X_scdl"], index=adata.obs_names).convert_dtypes()
    adata.obsm["X_frame"] = frame
    scdl.tl.cluster(adata, use_rep="X_frame", pca_key=None, resolution=0.5, key_added="frame")
    assert adata.obs["frame"].nunique() > 1


def _cross_batch_share(graph, batches) -> float:
    """Share of a graph's edge weight that links cells of different batches."""
    coo = graph.tocoo()
    b = np.asarray(batches)
    return float(coo.data[b[coo.row] != b[coo.col]].sum() / coo.data.sum())


def test_a_batch_latent_averages_in_a_harmonised_pca(kang_integrated):
    """For a latent trained with a batch key, "auto" averages in the graph of a PCA harmonised
    over that key (a raw PCA carries the batches): its edges link the samples more than those of
    the raw PCA named by hand; a representation tl.integrate did not write stays alone."""
    adata = kang_integrated[0].copy()
    scdl.tl.cluster(adata, key_added="auto")
    source = "computed from X, uns['X_scdl']['var_names'], harmonised over obs['sample']"
    assert adata.uns["auto_neighbors"]["params"]["pca"] == source
    assert "X_pca" not in adata.obsm
    scdl.tl.cluster(adata, pca_key="X_pca", key_added="named")  # named: used as it is
    assert adata.uns["named_neighbors"]["params"]["pca"] == source.split(", harm")[0]
    scdl.tl.cluster(adata, pca_key=None, key_added="alone")
    assert adata.uns["alone_neighbors"]["params"]["pca"] == ""
    graphs = {k: adata.obsp[f"{k}_neighbors_connectivities"] for k in ("auto", "named", "alone")}
    # the PCA's own graph: twice the average, less the latent's
    share = {
        k: _cross_batch_share(2 * graphs[k] - graphs["alone"], adata.obs["sample"])
        for k in ("auto", "named")
    }
    assert share["auto"] > share["named"] + 0.1, share
    adata.obsm["X_other"] = adata.obsm["X_scdl"].copy()  # no tl.integrate record: alone
    scdl.tl.cluster(adata, use_rep="X_other", key_added="other")
    assert adata.uns["other_neighbors"]["params"]["pca"] == ""
    # up to 15 cells Harmony's default, round(cells / 30) clusters, is none: harmonised too
    two = adata.obs["sample"].unique()[:2]
    idx = np.concatenate(
        [np.flatnonzero(adata.obs["sample"] == b)[:n] for b, n in zip(two, (8, 7))]
    )
    small = adata[idx].copy()
    with pytest.warns(UserWarning, match="15 cells cannot have n_neighbors=30"):
        scdl.tl.cluster(small, key_added="small")
    assert small.uns["small_neighbors"]["params"]["pca"] == source
    # a batch value missing: refused before anything is written, the fix named
    from conftest import assert_unchanged, snapshot

    gap = adata.copy()
    gap.obs["sample"] = gap.obs["sample"].astype(object)
    gap.obs.iloc[:3, gap.obs.columns.get_loc("sample")] = np.nan
    snap = snapshot(gap)
    with pytest.raises(ValueError, match=r"obs\['sample'\].*3 missing values.*pca_key=None"):
        scdl.tl.cluster(gap, key_added="gap")
    assert_unchanged(gap, snap)
    # the batch column dropped since training: a warning and the latent's graph alone
    del adata.obs["sample"]
    with pytest.warns(UserWarning, match="batch_key='sample', which is no longer in adata.obs"):
        scdl.tl.cluster(adata, key_added="dropped")
    assert adata.uns["dropped_neighbors"]["params"]["pca"] == ""


def test_a_square_pca_is_harmonised_along_the_cells():
    """A stored PCA with as many components as cells is read as cells x components: Harmony's
    correction of it is the one of the same cells without the last component, which is not
    square (read the other way round the two agree at a correlation of about 0.5)."""
    import anndata as ad
    import pandas as pd

    from scdl.tl._cluster_graph import harmonised

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 60)).astype(np.float32)
    x[:30] += 3.0  # the first batch's cells moved along every component
    obs = pd.DataFrame({"b": np.repeat(["a", "b"], 30)}, index=[str(i) for i in range(60)])
    adata = ad.AnnData(obs=obs)
    square, source = harmonised(adata, x, "b", "X_pca", random_state=0)
    assert square.shape == x.shape and source == "X_pca, harmonised over obs['b']"
    narrow, _ = harmonised(adata, x[:, :59], "b", "X_pca", random_state=0)
    moved = (square[:, :59] - x[:, :59]).ravel(), (narrow - x[:, :59]).ravel()
    assert np.corrcoef(*moved)[0, 1] > 0.99
    gap = [np.linalg.norm(z[:30].mean(0) - z[30:].mean(0)) for z in (x, square)]
    assert gap[1] < 0.7 * gap[0], gap


def test_a_stored_pca_is_used_and_the_graph_is_the_average(cellbench_integrated, cellbench):
    import anndata as ad
    import scanpy as sc

    adata = cellbench_integrated.copy()
    adata.obsm["X_pca"] = cellbench.obsm["X_pca"]
    scdl.tl.cluster(adata, key_added="joint")
    assert adata.uns["joint_neighbors"]["params"]["pca"] == "X_pca"
    scdl.tl.cluster(adata, pca_key=None, key_added="alone")
    pca = ad.AnnData(obs=adata.obs[[]].copy(), obsm={"X_pca": adata.obsm["X_pca"]})
    sc.pp.neighbors(pca, n_neighbors=15, use_rep="X_pca", random_state=0)
    expected = (adata.obsp["alone_neighbors_connectivities"] + pca.obsp["connectivities"]) / 2
    got = adata.obsp["joint_neighbors_connectivities"]
    assert abs(got - expected).max() < 1e-6
    assert got.dtype == np.float32  # as scanpy writes it (the average promoted it to float64)
    # the distances stay the latent's kNN graph
    assert (
        adata.obsp["joint_neighbors_distances"] != adata.obsp["alone_neighbors_distances"]
    ).nnz == 0


def test_pca_key_refusals_and_fallbacks(cellbench_integrated):
    from conftest import assert_unchanged, snapshot

    adata = cellbench_integrated.copy()
    snap = snapshot(adata)
    with pytest.raises(KeyError, match="pca_key='X_typo' is not in adata.obsm"):
        scdl.tl.cluster(adata, pca_key="X_typo")
    with pytest.raises(TypeError, match="pca_key must be"):
        scdl.tl.cluster(adata, pca_key=3)
    with pytest.raises(KeyError, match="missing"):
        scdl.tl.cluster(adata, layer="missing")
    assert_unchanged(adata, snap)
    # scaled data (neither counts nor log-normalised) and no PCA: the latent's graph alone
    scaled = adata.copy()
    x = scaled.X.toarray() if hasattr(scaled.X, "toarray") else np.asarray(scaled.X)
    scaled.X = (x - x.mean(0)) / (x.std(0) + 1e-6)
    with pytest.warns(UserWarning, match="neither counts nor log-normalised counts"):
        scdl.tl.cluster(scaled)
    assert scaled.uns["scdl_cluster_neighbors"]["params"]["pca"] == ""
    # a layer of counts given explicitly is read
    adata.layers["counts"] = adata.X.copy()
    scdl.tl.cluster(adata, layer="counts", key_added="from_layer")
    assert adata.uns["from_layer_neighbors"]["params"]["pca"].startswith("computed from counts")
    # the layer tl.integrate recorded, since dropped: X is read (it worked before the PCA)
    dropped = adata.copy()
    dropped.uns["X_scdl"] = {**dropped.uns["X_scdl"]}
    dropped.uns["X_scdl"]["params"] = {**dropped.uns["X_scdl"]["params"], "layer": "counts"}
    del dropped.layers["counts"]
    scdl.tl.cluster(dropped, key_added="dropped")
    assert dropped.uns["dropped_neighbors"]["params"]["pca"].startswith("computed from X")


def test_computed_pca_is_scanpys_recipe_on_the_integrated_genes(cellbench_integrated):
    """The PCA computed for the graph copies only the genes the latent was trained on, each
    cell normalised by its total over all genes: scanpy's normalize_total + log1p, then the
    gene subset and its PCA, to the sign of each component."""
    import scanpy as sc

    from scdl.data import genes_pca
    from scdl.tl._cluster_graph import params_genes

    adata = cellbench_integrated
    genes = params_genes(adata, "X_scdl")
    assert genes == list(adata.uns["X_scdl"]["var_names"]) and len(genes) < adata.n_vars
    before = adata.X.copy()
    ours = genes_pca(adata, genes)
    assert abs(adata.X - before).max() == 0  # the columns are normalised in a copy
    everything = genes_pca(adata, list(adata.var_names))  # every column, in order
    assert everything.shape[0] == adata.n_obs and abs(adata.X - before).max() == 0
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    ref = ref[:, genes].copy()
    sc.pp.pca(ref, n_comps=50, random_state=0)
    theirs = ref.obsm["X_pca"]
    sign = np.sign((ours * theirs).sum(0))
    np.testing.assert_allclose(ours, theirs * sign, atol=2e-3 * np.abs(theirs).max())


def test_genes_pca_reads_any_matrix_in_blocks_and_names_missing_genes(
    cellbench_integrated, monkeypatch
):
    """The same PCA from CSR, CSC and dense counts read in several blocks of rows as from CSR
    in one block, the matrix untouched; a gene the data lack is a KeyError naming it."""
    from scipy import sparse

    import scdl.data._rows as rows_module
    from scdl.data import genes_pca
    from scdl.tl._cluster_graph import params_genes

    adata = cellbench_integrated.copy()
    genes = params_genes(adata, "X_scdl")
    one_block = genes_pca(adata, genes)
    monkeypatch.setattr(rows_module, "ROW_BLOCK", 64)
    for x in (sparse.csr_matrix(adata.X), sparse.csc_matrix(adata.X), adata.X.toarray()):
        before = x.copy()
        adata.X = x
        np.testing.assert_allclose(genes_pca(adata, genes), one_block, atol=1e-4)
        assert abs(adata.X - before).max() == 0
    with pytest.raises(KeyError, match="not_a_gene"):
        genes_pca(adata, [*genes[:5], "not_a_gene"])
    twice = adata.copy()
    names = list(twice.var_names)
    twice.var_names = [names[1], *names[1:]]  # one name on the first two columns
    with pytest.raises(ValueError, match="var_names_make_unique"):
        genes_pca(twice, genes)


def test_backed_data_cluster_as_in_memory(cellbench_integrated, tmp_path, monkeypatch):
    """On a backed AnnData the PCA reads the matrix in blocks of rows (only the trained genes'
    columns kept): the same PCA, graph and clusters as in memory in one block."""
    import anndata as ad

    import scdl.data._rows as rows_module
    from scdl.data import genes_pca
    from scdl.tl._cluster_graph import params_genes

    memory = cellbench_integrated.copy()
    memory.write_h5ad(tmp_path / "cells.h5ad")
    genes = params_genes(memory, "X_scdl")
    assert memory.n_obs < rows_module.ROW_BLOCK  # one block in memory
    in_memory = genes_pca(memory, genes)
    scdl.tl.cluster(memory, resolution="auto")
    monkeypatch.setattr(rows_module, "ROW_BLOCK", 100)  # several blocks on a small set
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    assert backed.isbacked and backed.n_obs > 3 * rows_module.ROW_BLOCK
    np.testing.assert_allclose(genes_pca(backed, genes), in_memory, atol=1e-4)
    scdl.tl.cluster(backed, resolution="auto")
    assert backed.uns["scdl_cluster_neighbors"]["params"]["pca"].startswith("computed from X")
    assert (backed.obs["scdl_cluster"] == memory.obs["scdl_cluster"]).all()
    assert (
        abs(
            backed.obsp["scdl_cluster_neighbors_connectivities"]
            - memory.obsp["scdl_cluster_neighbors_connectivities"]
        ).max()
        < 1e-6
    )


def test_graphs_of_up_to_20000_cells_hold_the_exact_neighbours():
    """From 8,192 cells scanpy's search is pynndescent's (approximate, and compiled by numba on
    its first call in a process: about half of a first ``tl.cluster`` of 14,000 cells); scdl's
    own graphs search exactly up to 20,000 cells: every cell's neighbours are its true nearest."""
    import anndata as ad
    from sklearn.neighbors import NearestNeighbors

    from scdl.tl._cluster_graph import pca_connectivities

    x = np.random.default_rng(0).normal(size=(9000, 10)).astype(np.float32)
    adata = ad.AnnData(obsm={"X_rep": x})
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    scdl.tl.cluster(adata, use_rep="X_rep", pca_key=None, resolution=0.5, n_neighbors=15)
    graph = adata.obsp["scdl_cluster_neighbors_distances"].tocsr()
    exact = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x, return_distance=False)
    found = np.split(graph.indices, graph.indptr[1:-1])
    assert all(set(f) == set(e[1:]) for f, e in zip(found, exact, strict=True))
    # the PCA graph tl.cluster averages in: the same search
    joined = pca_connectivities(x, 0).tocsr()
    assert all(set(e[1:]) <= set(joined[i].indices) for i, e in enumerate(exact[:500]))
