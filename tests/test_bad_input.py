"""Bad input gets a clear error naming the fix, and the user's AnnData is left unchanged."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import scdl
from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE


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
    [
        (0.5, "non-integer"),
        (-1.0, "negative"),
        (np.nan, "NaN"),
        (np.inf, "infinite"),
        (3e12, "far above any count"),  # a damaged file: its sums and samplers overflow
    ],
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


def test_counts_with_float_round_off_are_told_to_round(kang):
    """Counts recovered from log values (expm1 of float32 log1p) miss whole numbers by ~1e-4:
    the refusal says so and names the rounding, for the count models and for annotate (which
    would otherwise diagnose them as a badly normalised log matrix); rounded, they train."""
    adata = _small(kang)
    adata.X.data = np.expm1(np.log1p(adata.X.data).astype(np.float32)).astype(np.float32)
    assert (adata.X.data != np.round(adata.X.data)).any()
    snap = snapshot(adata)
    for step in (
        lambda a: scdl.tl.integrate(a, batch_key="sample", max_epochs=1),
        lambda a: scdl.tl.annotate(a),
    ):
        with pytest.raises(ValueError, match=r"round-off .* `adata.X.data = np.round"):
            step(adata)
        assert_unchanged(adata, snap)
    adata.X.data = np.round(adata.X.data)
    scdl.tl.integrate(adata, batch_key="sample", max_epochs=1, progress_bar=False)
    assert np.isfinite(adata.obsm["X_scdl"]).all()


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


def test_counts_kept_in_raw_are_pointed_to(kang):
    import scanpy as sc

    adata = _small(kang)
    adata.raw = adata.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    snap = snapshot(adata)
    with pytest.raises(
        ValueError, match=r"adata\.raw holds raw counts.*adata\.raw\[:, adata\.var_names\]\.X"
    ):
        scdl.tl.integrate(adata, batch_key="sample", max_epochs=1)
    assert_unchanged(adata, snap)
    adata.layers["counts"] = adata.raw[:, adata.var_names].X  # the fix the message names
    VAE.setup_anndata(adata, layer="counts", batch_key="sample")


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


def test_zero_count_genes_are_kept_by_setup_and_dropped_by_integrate(kang):
    adata = _small(kang)
    x = adata.X.tolil()
    x[:, 5] = 0
    adata.X = x.tocsr()
    # valid input (scvi-tools accepts it): registered as it is, the gene kept
    VAE.setup_anndata(adata)
    assert VAE(adata).summary_stats.n_vars == adata.n_vars
    # integrate selects expressed genes itself: an all-zero gene is simply not used
    scdl.tl.integrate(adata, max_epochs=1, progress_bar=False, batch_size=64)
    assert adata.var_names[5] not in set(adata.uns["X_scdl"]["var_names"])


def test_empty_anndata(kang, tmp_path, capsys):
    """An AnnData without cells is said to be empty, also where a batch or group column is
    checked first (its empty column was blamed: "0 categories", "values present: []")."""
    from scdl.cli import main

    adata = kang[:0].copy()
    with pytest.raises(ValueError, match="empty"):
        VAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="The AnnData is empty"):
        scdl.tl.integrate(adata, batch_key="sample")
    with pytest.raises(ValueError, match="The AnnData is empty"):
        scdl.tl.contrastive(adata, groupby="condition", background="ctrl", batch_key="sample")
    adata.write_h5ad(tmp_path / "empty.h5ad")
    args = ["integrate", str(tmp_path / "empty.h5ad"), "-o", str(tmp_path / "o.h5ad")]
    assert main([*args, "--batch-key", "sample"]) == 2
    assert "holds 0 cells" in capsys.readouterr().err


def test_non_numeric_matrix(kang):
    import anndata

    adata = anndata.AnnData(X=np.array([["1", "2"], ["3", "4"]], dtype=object))
    with pytest.raises(TypeError, match="numeric"):
        VAE.setup_anndata(adata)


def test_duplicate_gene_names_refused_only_where_genes_are_matched_by_name(kang):
    adata = _expressed(kang)
    names = adata.var_names.tolist()
    names[1] = names[0]
    adata.var_names = names
    # the annotator matches query genes by name: refused at registration
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="var_names_make_unique"):
        SETUPS["CellTypeTransformer"](adata)
    assert_unchanged(adata, snap)
    # valid for the VAE (scvi-tools and scanpy take it): a warning, as scanpy gives
    with pytest.warns(UserWarning, match="duplicates.*used as separate genes"):
        scdl.tl.integrate(adata, n_top_genes=None, max_epochs=1, progress_bar=False)
    assert adata.var_names.equals(snap["var_names"])  # the user's names are not renamed
    used = list(adata.uns["X_scdl"]["var_names"])
    assert names[0] in used and f"{names[0]}-1" in used
    # a query must then hold the same genes in the same order
    model = _trained_vae(adata)
    query = adata[:50].copy()
    assert np.isfinite(model.get_latent_representation(query)).all()
    with pytest.raises(ValueError, match="var_names_make_unique"):
        VAE.load_query_data(query[:, ::-1].copy(), model)
    # annotate: refused only when a duplicated name is one of the model's genes
    heldout = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    heldout.var_names = [heldout.var_names[1], *heldout.var_names[1:]]
    with pytest.raises(ValueError, match=r"duplicates among the model's genes.*make_unique"):
        scdl.tl.annotate(heldout)


def _trained_vae(adata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        VAE.setup_anndata(adata, batch_key="sample")
        model = VAE(adata)
        model.train(max_epochs=1, enable_progress_bar=False)
    return model


def test_fewer_cells_than_a_batch_trains_in_one_minibatch(kang):
    import scanpy as sc

    adata = kang[:50].copy()
    sc.pp.filter_genes(adata, min_cells=1)
    VAE.setup_anndata(adata)
    model = VAE(adata)
    with pytest.warns(UserWarning, match="one minibatch"):
        model.train(max_epochs=2, enable_progress_bar=False)
    assert model.is_trained_
    assert np.isfinite(model.get_latent_representation()).all()


def test_batch_size_below_two_is_refused(kang):
    adata = _expressed(kang)
    VAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        VAE(adata).train(max_epochs=1, batch_size=1)


def test_query_gene_mismatch(kang_integrated):
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"][:, 10:].copy()
    snap = snapshot(query)
    with pytest.raises(ValueError, match="lacks 10 of the model's"):
        VAE.load_query_data(query, model)
    assert_unchanged(query, snap)


def test_a_query_of_two_cells_maps_without_scvi_tools_labels_warning(kang_integrated):
    """A query of 1-2 cells is valid (mapped as scvi-tools maps it); scvi-tools' warning on a
    small category named its own ``_scvi_labels`` column, which the user never set."""
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"][:2].copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = VAE.load_query_data(query, model)
    assert not [w for w in caught if "_scvi_labels" in str(w.message)]
    assert mapped.adata.n_obs == 2


def test_query_genes_renamed_by_r_are_named_with_the_fix(kang_integrated):
    """Seurat objects and CSV exports write 'HLA-DRA' as 'HLA.DRA' (R's make.names): the
    message says so and gives the names back, without offering zero padding (their counts
    are in the file); its fix works."""
    import re

    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"].copy()
    renamed = query.var_names.str.replace(r"[^A-Za-z0-9._]", ".", regex=True)
    assert (renamed != query.var_names).sum() >= 5  # symbols R renames
    query.var_names = renamed
    with pytest.raises(ValueError, match=r"as R's make.names writes them") as info:
        VAE.load_query_data(query, model)
    assert "pad" not in str(info.value)
    back = {re.sub(r"[^A-Za-z0-9._]", ".", g): g for g in model.get_var_names()}
    query.var_names = [back.get(g, g) for g in query.var_names]
    VAE.load_query_data(query, model)


def test_ensembl_ids_differing_in_their_version_are_matched_by_the_hint():
    ids = pd.Index([f"ENSG{n:011d}" for n in range(1, 41)])
    versioned = ids + ".3"
    for genes, names in ((ids, versioned), (versioned, ids), (versioned, ids + ".4")):
        hint = scdl.data.renamed_hint(genes, names)
        assert "another version suffix" in hint, hint
        fix = {"genes": list(genes), "names": list(names)}  # the fix as printed, run
        code = hint[hint.index("`import re") + 1 : hint.index("` (`genes`:")]
        exec(code.replace("adata.var_names = ", "out = ").replace("adata.var_names", "names"), fix)
        assert fix["out"] == list(genes)
    # R's make.names, leading digits included (mouse RIKEN genes), restored by the printed fix
    genes = pd.Index(["0610009B22Rik", "HLA-DRA", ".5S"] + [f"Gm{n}-ps" for n in range(20)])
    made = pd.Index(["X0610009B22Rik", "HLA.DRA", "X.5S"] + [f"Gm{n}.ps" for n in range(20)])
    hint = scdl.data.renamed_hint(genes, made)
    fix = {"genes": list(genes), "names": list(made)}
    code = hint[hint.index("`import re") + 1 : hint.index("` (`genes`:")]
    exec(code.replace("adata.var_names = ", "out = ").replace("adata.var_names", "names"), fix)
    assert fix["out"] == list(genes)
    hint = scdl.data.renamed_hint(made, genes)  # a model trained on an R export
    fix = {"names": list(genes)}
    code = hint[hint.index("`import re") + 1 : hint.index("`, then")]
    exec(code.replace("adata.var_names = ", "out = ").replace("adata.var_names", "names"), fix)
    assert fix["out"] == list(made)
    # the printed fix touches Ensembl IDs only: a symbol's dotted suffix is its own name
    hint = scdl.data.renamed_hint(ids.append(pd.Index(["RP11-473M20.14"])), versioned)
    fix = {"genes": [*ids, "RP11-473M20.14"], "names": [*versioned, "RP11-473M20.7"]}
    code = hint[hint.index("`import re") + 1 : hint.index("` (`genes`:")]
    exec(code.replace("adata.var_names = ", "out = ").replace("adata.var_names", "names"), fix)
    assert fix["out"] == [*ids, "RP11-473M20.7"]
    # R's duplicate suffixes ('CRYBG3.1') in a model whose other names R never touched: writing
    # the data's names as R does would lose more genes than it finds, so no hint
    model = pd.Index([f"G{n}.1" for n in range(20)] + [f"RP{n}-2" for n in range(50)])
    data = pd.Index([f"G{n}-1" for n in range(20)] + [f"RP{n}-2" for n in range(50)])
    assert scdl.data.renamed_hint(model, data) is None
    assert scdl.data.renamed_hint(ids, ids) is None
    assert scdl.data.renamed_hint(ids, pd.Index([f"Gm{n}" for n in range(40)])) is None
    message = scdl.data.gene_mismatch_message(ids, versioned)
    assert "version suffix" in message and "pad" not in message


def test_query_without_batch_column(kang_integrated):
    adata, model = kang_integrated
    query = adata[adata.obs["sample"] == "stim107"].copy()
    del query.obs["sample"]
    with pytest.raises(KeyError, match=r"lacks 'sample'.*query.obs\['sample'\] = 'query'"):
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
    assert isinstance(adata.X, np.ndarray)  # registered as given, not converted
    model = VAE(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, model.module.n_latent) and np.isfinite(z).all()


# --- every model's setup_anndata refuses the same way (shared checks in scdl.data) ---------

SETUPS = {
    "VAE": lambda a, **kw: VAE.setup_anndata(a, **kw),
    "ContrastiveVAE": lambda a, **kw: scdl.models.ContrastiveVAE.setup_anndata(a, **kw),
    "CellTypeTransformer": lambda a, **kw: scdl.models.CellTypeTransformer.setup_anndata(
        a, labels_key="cell_type", **kw
    ),
}


def _with_embedding(kang, n=100):
    """n cells with a random 5-dimensional obsm["X_scdl"] (what clustering, metrics and plots
    read)."""
    adata = _small(kang, n)
    adata.obsm["X_scdl"] = np.random.default_rng(0).normal(size=(adata.n_obs, 5))
    return adata


def _expressed(kang, n=300):
    adata = _small(kang, n)
    return adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()


def _bad(kind, adata):
    """Return (AnnData to pass, setup kwargs) for one kind of bad input."""
    x = adata.X.toarray()
    if kind in ("negative", "nan", "inf", "fraction"):
        x[2, 3] = {"negative": -2.0, "nan": np.nan, "inf": np.inf, "fraction": 1.5}[kind]
        adata.X = sparse.csr_matrix(x)
    elif kind == "strings":
        adata.X = x.astype(int).astype(str).astype(object)
    elif kind == "sparse_array":
        adata.X = sparse.csr_array(adata.X)
    elif kind == "view":
        return adata[:200], {}
    elif kind == "empty":
        return adata[:0].copy(), {}
    elif kind == "layer_typo":
        adata.layers["counts"] = adata.X.copy()
        return adata, {"layer": "count"}
    elif kind == "batch_typo":
        return adata, {"batch_key": "sampel"}
    elif kind == "float_batch":
        adata.obs["depth"] = np.random.default_rng(0).random(adata.n_obs)
        return adata, {"batch_key": "depth"}
    elif kind == "batch_missing_values":
        adata.obs["sample"] = adata.obs["sample"].astype(object)
        adata.obs.iloc[5, adata.obs.columns.get_loc("sample")] = None
        return adata, {"batch_key": "sample"}
    return adata, {}


BAD_SETUP = [
    ("negative", ValueError, "negative values"),
    ("nan", ValueError, "NaN or infinite"),
    ("inf", ValueError, "NaN or infinite"),
    ("fraction", ValueError, "non-integer.*layer="),
    ("strings", TypeError, "numeric"),
    ("sparse_array", TypeError, r"sparse array \(csr_array\).*scipy\.sparse\.csr_matrix"),
    ("view", ValueError, r"view.*\.copy\(\)"),
    ("empty", ValueError, "empty"),
    ("layer_typo", KeyError, "Did you mean 'counts'"),
    ("batch_typo", KeyError, "Did you mean 'sample'"),
    ("float_batch", TypeError, "astype\\(str\\)"),
    ("batch_missing_values", ValueError, "missing values"),
]


@pytest.mark.parametrize("model", list(SETUPS))
@pytest.mark.parametrize(("kind", "error", "match"), BAD_SETUP, ids=[b[0] for b in BAD_SETUP])
def test_every_model_refuses_bad_setup_input(kang, model, kind, error, match):
    adata, kwargs = _bad(kind, _expressed(kang))
    snap = snapshot(adata)
    with pytest.raises(error, match=match):
        SETUPS[model](adata, **kwargs)
    assert_unchanged(adata, snap)
    assert "_scvi_uuid" not in adata.uns


@pytest.mark.parametrize("model", ["VAE", "ContrastiveVAE"])
def test_single_level_batch_is_registered_with_a_warning(kang, model):
    """Valid, as in scvi-tools (one sample's cells): one batch, and a warning naming
    ``batch_key=None`` to silence it (the annotator's labels still need two types)."""
    adata = _expressed(kang)
    adata.obs["one"] = "run1"
    with pytest.warns(UserWarning, match="one category .*batch_key=None") as said:
        SETUPS[model](adata, batch_key="one")
    assert "_scvi_uuid" in adata.uns
    # only a VAE reference is mapped onto (the reason to keep the key is the VAE's alone)
    text = " ".join(str(w.message) for w in said if "one category" in str(w.message))
    assert ("load_query_data" in text) == (model == "VAE")


def test_not_an_anndata(kang):
    df = _expressed(kang).to_df()
    with pytest.raises(TypeError, match="Expected an AnnData"):
        VAE.setup_anndata(df)
    with pytest.raises(TypeError, match="Expected an AnnData"):
        scdl.tl.integrate(df, max_epochs=1)
    with pytest.raises(TypeError, match="Expected an AnnData"):
        scdl.tl.annotate(df)
    with pytest.raises(TypeError, match="Expected an AnnData"):
        scdl.tl.contrastive(df, groupby="condition", background="ctrl")
    with pytest.raises(TypeError, match="Expected an AnnData"):
        scdl.tl.cluster(df)


def test_model_methods_take_only_an_anndata(kang_integrated):
    """A DataFrame given to a trained model's methods is named, not met with AttributeError."""
    _, model = kang_integrated
    df = model.adata.to_df()
    for call in (
        lambda: model.get_latent_representation(df),
        lambda: model.get_normalized_expression(df),
        lambda: VAE.load_query_data(df, model),
        lambda: VAE.prepare_query_anndata(df, model),
        lambda: scdl.models.DrugResponseModel.setup_anndata(df, response_key="ic50"),
    ):
        with pytest.raises(TypeError, match="Expected an AnnData .* got DataFrame"):
            call()


@pytest.mark.parametrize(
    ("kwargs", "n", "match"),
    [
        ({"n_comps": 0}, 50, "n_comps must be a positive integer"),
        ({"n_top_genes": 0}, 50, "n_top_genes must be a positive integer"),
        ({}, 1, "A PCA needs at least 2 cells"),
    ],
)
def test_baseline_pca_refuses_sizes_it_cannot_use(kang, kwargs, n, match):
    from scdl.data import genes_pca, unintegrated_pca

    adata = _small(kang, n)
    with pytest.raises(ValueError, match=match):
        unintegrated_pca(adata, **kwargs)
    if "n_top_genes" not in kwargs:
        with pytest.raises(ValueError, match=match):
            genes_pca(adata, list(adata.var_names[:20]), **kwargs)


def test_estimated_counts_are_told_to_round(kang):
    """Fractional counts of a quantifier (Salmon, RSEM, kallisto) are not normalised data:
    the refusal names rounding beside the raw-count layer, and the rounded counts train."""
    adata = _small(kang, 200)
    scale = np.random.default_rng(0).uniform(0.8, 1.2, adata.X.nnz).astype(np.float32)
    adata.X.data = adata.X.data * scale
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"estimated counts.*np.round\(adata.X.data\)"):
        VAE.setup_anndata(adata)
    assert_unchanged(adata, snap)
    adata.X.data = np.round(adata.X.data)
    VAE.setup_anndata(adata)
    # log-normalised values are not told to round (that makes them small integers, accepted)
    logged = _small(kang, 200)
    logged.X.data = np.log1p(logged.X.data)
    with pytest.raises(ValueError, match="looks normalised or log-transformed") as err:
        VAE.setup_anndata(logged)
    assert "np.round" not in str(err.value)


def test_log2_of_normalised_counts_is_named_with_its_conversion():
    """log2(TPM + 1) is a common published form; it was refused as a gene subset or scaled
    data, and the fix named then (normalize_total + log1p of it) gave other calls. It is named
    with the conversion to natural log, which gives the counts' calls."""
    cells = scdl.datasets.kang_pbmc_heldout()
    counts = cells.copy()
    log2 = cells.copy()
    log2.X = sparse.csr_matrix(
        log2.X.multiply(1e6 / np.asarray(log2.X.sum(1)).clip(1)), dtype=np.float32
    )
    log2.X.data = np.log2(log2.X.data + 1)
    snap = snapshot(log2)
    with pytest.raises(ValueError, match=r"log2\(x \+ 1\) of counts normalised to 1e\+06"):
        scdl.tl.annotate(log2, model="pbmc_kang2018")
    assert_unchanged(log2, snap)
    log2.X.data = np.log1p(np.exp2(log2.X.data) - 1)  # the conversion the message names
    with pytest.warns(UserWarning, match="log1p of counts normalised to 1e\\+06"):
        scdl.tl.annotate(log2, model="pbmc_kang2018")
    scdl.tl.annotate(counts, model="pbmc_kang2018")
    same = log2.obs["scdl_cell_type"].to_numpy() == counts.obs["scdl_cell_type"].to_numpy()
    assert same.mean() >= 0.99


def _per_million(counts, lengths=None) -> sparse.csr_matrix:
    """Counts (divided by gene ``lengths``: TPM) scaled to 1e6 per cell."""
    x = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    if lengths is not None:
        x = x @ sparse.diags(1.0 / lengths)
    x = sparse.diags(1e6 / np.asarray(x.sum(1)).ravel()) @ x
    return sparse.csr_matrix(x, dtype=np.float32)


def test_tpm_is_named_for_count_models_and_rounded_tpm_is_said(kang):
    """TPM was refused as "normalised or log-transformed" with only a rounding command (its
    values are above a log scale), and the rounded matrix then trained as a million molecules
    per cell without a word: TPM / CPM is named, rounding is not offered, and whole numbers
    summing to nearly one total per cell are said in a warning."""
    adata = _small(kang)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    lengths = np.random.default_rng(0).lognormal(7.5, 0.6, adata.n_vars)
    adata.X = _per_million(adata.X, lengths)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="every cell with any sums to 1e\\+06") as err:
        VAE.setup_anndata(adata)
    assert "CPM, TPM" in str(err.value) and "np.round" not in str(err.value)
    assert_unchanged(adata, snap)
    adata.X.data = np.round(adata.X.data)
    with pytest.warns(UserWarning, match="rounded CPM/TPM"):
        VAE.setup_anndata(adata)
    import scanpy as sc

    counts = _small(kang)
    counts = counts[np.asarray(counts.X.sum(1)).ravel() >= 300].copy()
    same_depth = counts.copy()  # counts downsampled to one depth sum to it exactly
    sc.pp.downsample_counts(same_depth, counts_per_cell=300, random_state=0)
    filtered = same_depth[:, np.asarray((same_depth.X > 0).sum(0)).ravel() >= 5].copy()
    assert np.ptp(np.asarray(filtered.X.sum(1)).ravel()) > 0  # nearly one total, not exactly
    with warnings.catch_warnings():  # real counts (molecules: many ones) are not said
        warnings.simplefilter("error", UserWarning)
        scdl.data.check_counts(counts)
        scdl.data.check_counts(same_depth)
        scdl.data.check_counts(filtered)


def test_log1p_of_fpkm_is_told_how_to_become_tpm():
    """log1p(FPKM) (per-cell totals differ by design) was blamed on a gene subset or scaling;
    the message now says how FPKM becomes TPM, and that conversion is annotated."""
    cells = scdl.datasets.kang_pbmc_heldout()
    fpkm = cells.copy()
    lengths = np.random.default_rng(0).lognormal(7.5, 0.6, fpkm.n_vars)
    x = sparse.csr_matrix(fpkm.X, dtype=np.float64) @ sparse.diags(1e3 / lengths)
    x = sparse.diags(1e6 / np.asarray(fpkm.X.sum(1)).ravel().clip(1)) @ x
    fpkm.X = sparse.csr_matrix(x, dtype=np.float32)
    fpkm.X.data = np.log1p(fpkm.X.data)
    with pytest.raises(ValueError, match="FPKM / RPKM: take expm1, scale each cell to 1e6"):
        scdl.tl.annotate(fpkm, model="pbmc_kang2018")
    fpkm.X.data = np.expm1(fpkm.X.data)  # the conversion the message names
    import scanpy as sc

    sc.pp.normalize_total(fpkm, target_sum=1e6)
    sc.pp.log1p(fpkm)
    with pytest.warns(UserWarning, match="log1p of counts normalised to 1e\\+06"):
        scdl.tl.annotate(fpkm, model="pbmc_kang2018")


def test_annotator_labels_refused_with_the_annotators_fix(kang):
    """A reference of one type is told to give two (not to pass ``labels_key=None``, which
    the annotator refuses); fractional numbers are not pointed to a parameter it lacks."""
    adata = _expressed(kang)
    adata.obs["one"] = "T"
    adata.obs["score"] = np.linspace(0.0, 1.0, adata.n_obs)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="at least two types") as err:
        CellTypeTransformer.setup_anndata(adata, labels_key="one")
    assert "labels_key=None" not in str(err.value)
    with pytest.raises(TypeError, match="non-integer numbers") as err:
        CellTypeTransformer.setup_anndata(adata, labels_key="score")
    assert "continuous_covariate_keys" not in str(err.value)
    assert_unchanged(adata, snap)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (VAE, {"size_factor_key": "sf"}),
        (ContrastiveVAE, {"labels_key": "cell_type"}),
        (CellTypeTransformer, {"labels_key": "cell_type", "unlabeled_category": "x"}),
        ("DrugResponseModel", {"batch_key": "sample"}),
    ],
)
def test_setup_options_of_other_scvi_tools_models_are_refused_by_name(kang, cls, options):
    """scvi-tools' ``register_fields`` names no option and no fix for a keyword the model's
    setup does not take; the setup names it and its own options, before writing anything."""
    if cls == "DrugResponseModel":
        cls = scdl.models.DrugResponseModel
    adata = _small(kang, 100)
    adata.obs["sf"] = 1.0
    snap = snapshot(adata)
    unknown = [k for k in options if k not in ("labels_key",) or cls is ContrastiveVAE]
    with pytest.raises(TypeError, match=rf"does not take \['{unknown[0]}'\].*its options are"):
        cls.setup_anndata(adata, **options)
    assert_unchanged(adata, snap)


def test_a_per_cell_number_is_not_a_batch(kang):
    """A numeric column with about one value per cell (total counts, genes per cell) is not
    registered as hundreds of batches; numeric batch codes are."""
    adata = _expressed(kang)
    adata.obs["total_counts"] = np.asarray(adata.X.sum(1)).ravel()
    adata.obs["plate"] = np.arange(adata.n_obs) % 4
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="a per-cell measurement.*continuous_covariate_keys"):
        VAE.setup_anndata(adata, batch_key="total_counts")  # the parameter it has for these
    with pytest.raises(ValueError, match="a per-cell measurement.*continuous_covariate_keys"):
        scdl.tl.integrate(adata, batch_key="total_counts", max_epochs=1)
    assert_unchanged(adata, snap)
    VAE.setup_anndata(adata, batch_key="plate")
    assert VAE(adata).summary_stats.n_batch == 4


def test_covariate_key_types(kang):
    adata = _expressed(kang)
    adata.obs["depth"] = np.log(np.asarray(adata.X.sum(1)).ravel())
    adata.obs.iloc[0, adata.obs.columns.get_loc("depth")] = np.inf
    snap = snapshot(adata)
    with pytest.raises(TypeError, match=r"list of obs column names.*\['sample'\]"):
        VAE.setup_anndata(adata, categorical_covariate_keys="sample")
    with pytest.raises(ValueError, match="infinite"):
        VAE.setup_anndata(adata, continuous_covariate_keys=["depth"])
    with pytest.raises(TypeError, match="must be numeric"):
        VAE.setup_anndata(adata, continuous_covariate_keys=["sample"])
    assert_unchanged(adata, snap)


def test_backed_anndata(kang, tmp_path):
    import hashlib

    import anndata

    path = tmp_path / "cells.h5ad"
    cells = _expressed(kang)
    cells.obsm["X_pca"] = np.zeros((cells.n_obs, 2), np.float32)
    cells.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    backed = anndata.read_h5ad(path, backed="r")
    snap = snapshot(backed)
    with pytest.raises(KeyError, match="Did you mean 'sample'"):
        VAE.setup_anndata(backed, batch_key="Sample")
    assert_unchanged(backed, snap)
    VAE.setup_anndata(backed, batch_key="sample")  # backed (read-only) counts are read in chunks
    # a view of a backed file cannot hold results: refused before any training, not after
    view = backed[: backed.n_obs // 2]
    for tool, kwargs in (
        (scdl.tl.integrate, {"batch_key": "sample"}),
        (scdl.tl.contrastive, {"groupby": "sample", "background": str(view.obs["sample"].iloc[0])}),
        (scdl.tl.cluster, {"use_rep": "X_pca"}),
        (scdl.tl.integration_metrics, {"batch_key": "sample", "label_key": "cell_type"}),
    ):
        with pytest.raises(ValueError, match=r"view of a backed AnnData.*to_memory\(\)"):
            tool(view, **kwargs)
    backed.file.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the file is untouched


# --- train ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_epochs", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_bad_max_epochs(kang, max_epochs, error):
    adata = _expressed(kang)
    VAE.setup_anndata(adata)
    with pytest.raises(error, match="max_epochs"):  # -1 would mean "train forever" to Lightning
        VAE(adata).train(max_epochs=max_epochs)
    scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(error, match="max_epochs"):
        scdl.models.CellTypeTransformer(adata).train(max_epochs=max_epochs)


@pytest.mark.parametrize("train_size", [0.0, 1.5, "0.9"])
def test_bad_train_size(kang, train_size):
    """scvi-tools trains at its default 0.9 when given train_size=0: refused here."""
    adata = _expressed(kang, 100)
    VAE.setup_anndata(adata)
    model = VAE(adata)
    with pytest.raises(ValueError, match=r"train_size must be a fraction in \(0, 1\]"):
        model.train(max_epochs=1, train_size=train_size)
    assert not model.is_trained_
    scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    annotator = scdl.models.CellTypeTransformer(adata)
    with pytest.raises(ValueError, match=r"train_size must be a fraction in \(0, 1\]"):
        annotator.train(max_epochs=1, train_size=train_size)
    assert not annotator.is_trained_


def test_annotator_trains_on_every_cell_and_refuses_plan_options_it_ignores(kang):
    """train_size=1.0 is scvi-tools' way to train on every cell (it was refused); scvi-tools'
    plan options the annotator's own optimiser and loss replace are refused, not ignored."""
    adata = _expressed(kang, 120)
    scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(adata)
    for option in ({"eps": 0.5}, {"optimizer": "Adam"}):
        with pytest.raises(ValueError, match=f"plan_kwargs \\['{next(iter(option))}'\\]"):
            model.train(max_epochs=1, plan_kwargs=option)
        assert not model.is_trained_
    with pytest.warns(UserWarning, match="No reference cell is held out"):
        model.train(max_epochs=2, train_size=1.0, enable_progress_bar=False)
    assert model.is_trained_ and len(model.train_indices_) == adata.n_obs
    assert len(model.predict(adata)) == adata.n_obs


def test_bad_model_size(kang):
    adata = _expressed(kang)
    VAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="n_latent must be a positive integer"):
        VAE(adata, n_latent=0)
    with pytest.raises(ValueError, match=r"dropout_rate must be a fraction in \[0, 1\)"):
        VAE(adata, dropout_rate=1.0)
    with pytest.raises(ValueError, match="batch_mmd_weight must be a finite number >= 0"):
        VAE(adata, batch_mmd_weight=-1)
    ContrastiveVAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="n_salient_latent must be a positive integer"):
        ContrastiveVAE(adata, n_salient_latent=0)
    with pytest.raises(TypeError, match="n_shared_latent must be a positive integer"):
        ContrastiveVAE(adata, n_shared_latent=2.5)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(ValueError, match="n_tokens must be a positive integer"):
        CellTypeTransformer(adata, n_tokens=0)
    with pytest.raises(ValueError, match="d_model=30 must be a multiple of n_heads=4"):
        CellTypeTransformer(adata, d_model=30)
    with pytest.raises(ValueError, match=r"gene_dropout must be a fraction in \[0, 1\)"):
        CellTypeTransformer(adata, gene_dropout=1.0)


def test_a_reference_label_named_like_the_unknown_call_is_refused(kang):
    """scANVI marks unlabelled cells "Unknown": as an annotator's type it could not be told
    from the Unknown call (tl.annotate failed on the duplicate category)."""
    adata = _expressed(kang)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    adata.obs.iloc[:30, adata.obs.columns.get_loc("cell_type")] = "Unknown"
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"holds the label 'Unknown'.*!= 'Unknown'\]\.copy\(\)"):
        CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    assert_unchanged(adata, snap)


# --- a trained model given new data (latent space, expression) ------------------------------


def _query(kind, adata):
    if kind == "unseen_batch":
        adata.obs["sample"] = adata.obs["sample"].astype(str).replace("ctrl101", "new_donor")
    elif kind == "gene_order":
        adata = adata[:, adata.var_names[::-1]].copy()
    elif kind == "missing_genes":
        adata = adata[:, 7:].copy()
    elif kind == "negative":
        x = adata.X.toarray()
        x[0, 0] = -1
        adata.X = sparse.csr_matrix(x)
    elif kind == "no_batch_column":
        del adata.obs["sample"]
    elif kind == "int_batch":
        adata.obs["sample"] = 7
    elif kind == "sparse_array":
        adata.X = sparse.csr_array(adata.X)
    return adata


BAD_QUERY = [
    ("unseen_batch", ValueError, r"not trained on \(\['new_donor'\]\).*load_query_data"),
    ("gene_order", ValueError, "different order"),
    ("missing_genes", ValueError, "lacks 7 of the model's"),
    ("negative", ValueError, "negative values"),
    ("no_batch_column", KeyError, "lacks the column 'sample'"),
    ("int_batch", TypeError, r"holds number values \(e.g. 7\).*astype\(str\)"),
    ("sparse_array", TypeError, r"sparse array \(csr_array\).*scipy\.sparse\.csr_matrix"),
]


@pytest.mark.parametrize(("kind", "error", "match"), BAD_QUERY, ids=[b[0] for b in BAD_QUERY])
def test_trained_vae_checks_new_data(kang_integrated, kind, error, match):
    _, model = kang_integrated
    query = _query(kind, model.adata[:200].copy())
    snap = snapshot(query)
    with pytest.raises(error, match=match):
        model.get_latent_representation(query)
    assert_unchanged(query, snap)


@pytest.mark.parametrize("kind", ["unseen_batch", "negative", "no_batch_column", "int_batch"])
def test_loading_a_vae_onto_new_data_checks_it_as_its_methods_do(kang_integrated, kind, tmp_path):
    """load(dir, adata=) names the problem as get_latent_representation does (scvi-tools'
    transfer would name an option load lacks), the AnnData left unchanged."""
    _, model = kang_integrated
    model.save(tmp_path / "m")
    error, match = {k: (e, m) for k, e, m in BAD_QUERY}[kind]
    query = _query(kind, model.adata[:200].copy())
    snap = snapshot(query)
    with pytest.raises(error, match=match):
        VAE.load(tmp_path / "m", adata=query)
    assert_unchanged(query, snap)


def test_query_mapping_names_a_batch_column_of_another_kind(kang_integrated):
    """scvi-tools compares category values, so 7 is not "7": its own error was numpy's
    "'<' not supported between instances of 'int' and 'str'"."""
    _, model = kang_integrated
    query = _query("int_batch", model.adata[:200].copy())
    snap = snapshot(query)
    with pytest.raises(TypeError, match=r"holds number values.*astype\(str\)"):
        VAE.load_query_data(query, model)
    assert_unchanged(query, snap)


def test_new_data_without_counts_in_x_names_where_the_model_reads(kang_integrated):
    """A model reads counts where it was set up (tl.integrate copies a layer into X): the
    error says to put them there, not to pass a `layer=` its methods do not take, and names
    the layer that holds them (it named a 'counts' layer the query lacked); its fix runs."""
    _, model = kang_integrated
    query = model.adata[:200].copy()
    query.layers["detected"] = query.X > 0  # 0/1 flags: integers, but no counts to name
    query.layers["raw"] = query.X.copy()
    query.X = query.X.astype(np.float32) * 0.5
    snap = snapshot(query)
    fix = r"adata\.layers\['raw'\] holds them.*`query = adata\.copy\(\); query\.X = adata\.layers"
    for call in (model.get_latent_representation, lambda q: VAE.load_query_data(q, model)):
        with pytest.raises(ValueError, match=r"reads raw counts from adata\.X, and " + fix):
            call(query)
        assert_unchanged(query, snap)
    adata = query  # the fix as written
    query = adata.copy()
    query.X = adata.layers["raw"]
    assert model.get_latent_representation(query).shape == (200, model.module.n_latent)
    del query.layers["raw"], query.layers["detected"]  # nowhere: bring the counts
    query.X = query.X.astype(np.float32) * 0.5
    with pytest.raises(ValueError, match=r"cells' raw counts there \(`query\.X = counts`"):
        model.get_latent_representation(query)


def test_counts_in_raw_are_named_only_where_the_copy_runs(kang):
    """`.raw` holding counts is named with a copy that reads every gene of the AnnData; where
    the genes were renamed since, that copy would raise a KeyError: not offered."""
    from scdl.data._query import counts_elsewhere_hint

    adata = kang[:50].copy()
    adata.raw = adata
    adata.X = adata.X.astype(np.float32) * 0.5
    hint = counts_elsewhere_hint(adata, None)
    code = re.search(r"`(adata\.layers\['counts'\] = .*?)`", hint)[1]
    exec(code)
    assert scdl.data.sampled_counts_ok(adata, "counts")
    del adata.layers["counts"]
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    assert counts_elsewhere_hint(adata, None) == ""


def test_trained_contrastive_checks_new_data(kang):
    adata = _expressed(kang)
    scdl.models.ContrastiveVAE.setup_anndata(adata)
    model = scdl.models.ContrastiveVAE(adata)
    model.train(groupby="condition", background="ctrl", max_epochs=1, enable_progress_bar=False)
    query = adata[:, ::-1].copy()
    snap = snapshot(query)
    with pytest.raises(ValueError, match="different order"):
        model.get_latent_representation(query)
    assert_unchanged(query, snap)
    model.get_latent_representation(adata[:, model.get_var_names()].copy())  # same genes: fine


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [("negative", ValueError, "negative"), ("strings", TypeError, "numeric")],
)
def test_annotator_predict_checks_counts(kind, error, match):
    query = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    query, _ = _bad(kind, query)
    snap = snapshot(query)
    with pytest.raises(error, match=match):
        scdl.pretrained.load("pbmc_kang2018").predict(query)
    assert_unchanged(query, snap)


# --- tl functions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"resolution": 0}, ValueError, "resolution must be > 0"),
        ({"resolution": float("inf")}, ValueError, "resolution must be > 0 and finite"),
        ({"resolution": "best"}, ValueError, 'number > 0 or "auto"'),
        ({"resolution": None}, TypeError, 'number > 0 or "auto"'),
        ({"n_clusters": 0}, ValueError, "n_clusters must be between 1"),
        ({"n_clusters": 2.5}, TypeError, "n_clusters must be an integer"),
        ({"n_neighbors": 1}, ValueError, "n_neighbors must be >= 2"),
        ({"key_added": 3}, TypeError, "key_added"),
        ({"random_state": "abc"}, TypeError, "random_state must be an integer seed"),
        ({"random_state": -1}, ValueError, r"random_state must be an integer from 0 to 2\*\*32"),
        ({"nan": True}, ValueError, "NaN or infinite"),
        ({"sparse": True}, TypeError, r"sparse matrix.*\.toarray\(\)"),
        # would replace tl.integrate's record, which the next tl.cluster reads
        ({"key_added": "X_scdl"}, ValueError, r"would overwrite adata\.uns\['X_scdl'\]"),
        # a stored X_pca means no PCA is computed: the typo is still refused
        ({"layer": "cuonts", "pca_key": "X_pca"}, KeyError, "cuonts"),
        # one key, not a list (was "unhashable type: 'list'")
        ({"use_rep": ["X_scdl"]}, TypeError, r"use_rep must be one adata.obsm key"),
        ({"pca_key": ["X_pca"]}, TypeError, r"pca_key must be one adata.obsm key"),
    ],
)
def test_cluster_bad_arguments(kang, kwargs, error, match):
    adata = _with_embedding(kang, 300)
    if kwargs.pop("nan", False):
        adata.obsm["X_scdl"][3, 1] = np.nan
    if kwargs.pop("sparse", False):
        adata.obsm["X_scdl"] = sparse.csr_matrix(adata.obsm["X_scdl"])
    adata.obsm["X_pca"] = adata.obsm["X_scdl"]
    snap = snapshot(adata)
    with pytest.raises(error, match=match):
        scdl.tl.cluster(adata, **kwargs)
    assert_unchanged(adata, snap)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key_added": 3}, TypeError, "key_added"),
        ({"n_top_genes": 0}, ValueError, "n_top_genes"),
        ({"n_latent": 0}, ValueError, "n_latent"),
        ({"max_epochs": -1}, ValueError, "max_epochs"),
        ({"batch_key": "condition", "layer": "counts"}, KeyError, "not found in adata.layers"),
        # refused before training: scvi-tools' seed setter gave numpy's errors, a float failed
        # inside Lightning's first epoch
        ({"random_state": 1.5}, TypeError, "random_state must be an integer seed"),
        ({"random_state": -1}, ValueError, r"random_state must be an integer from 0 to 2\*\*32"),
        ({"random_state": 2**32}, ValueError, "random_state must be an integer from 0"),
    ],
)
def test_integrate_bad_arguments(kang, kwargs, error, match):
    adata = _small(kang)
    snap = snapshot(adata)
    with pytest.raises(error, match=match):
        scdl.tl.integrate(adata, progress_bar=False, **kwargs)
    assert_unchanged(adata, snap)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key_added": 3}, TypeError, "key_added"),
        ({"shared_key": ""}, ValueError, "key_added"),
        ({"key_added": "X_c", "shared_key": "X_c"}, ValueError, "shared space would overwrite"),
        ({"n_top_genes": 0}, ValueError, "n_top_genes must be a positive integer"),
        ({"random_state": "x"}, TypeError, "random_state must be an integer seed"),
        ({"random_state": -1}, ValueError, "random_state must be an integer from 0"),
    ],
)
def test_contrastive_bad_arguments(kang, kwargs, error, match):
    adata = _small(kang)
    snap = snapshot(adata)
    with pytest.raises(error, match=match):
        scdl.tl.contrastive(adata, groupby="condition", background="ctrl", **kwargs)
    assert_unchanged(adata, snap)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key_added": 3}, TypeError, "key_added"),
        ({"key_added": "scdl/ct"}, ValueError, r"holds '/'.*'scdl_ct'"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"min_gene_overlap": 2}, ValueError, r"min_gene_overlap must be a fraction in \[0, 1\]"),
        ({"unknown": None}, TypeError, "unknown must be True or False"),
        ({"majority_voting": "yes"}, TypeError, "majority_voting must be True or False"),
        ({"min_support": "high"}, TypeError, r"min_support must be a number in \[0, 1\]"),
        ({"adapt_to_query": 1.5}, ValueError, r"adapt_to_query must be a fraction in \[0, 1\]"),
    ],
)
def test_annotate_bad_arguments(kwargs, error, match):
    query = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    snap = snapshot(query)
    with pytest.raises(error, match=match):
        scdl.tl.annotate(query, **kwargs)
    assert_unchanged(query, snap)


def _mouse_cased(query):
    query.var_names = query.var_names.str.capitalize()  # "CD3E" -> "Cd3e"


def _ids_with_symbols_in_var(query):
    query.var["symbol"] = query.var_names.to_numpy()
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]


def _no_shared_gene(query):
    query.var_names = [f"gene{i}" for i in range(query.n_vars)]


def _lower_case_with_a_few_ids_in_var(query):
    """Human symbols written in lower case, beside a var column of which a few match (it was
    advised, though renaming by it would leave most genes missing)."""
    query.var["gene_ids"] = [
        g if i < 100 else f"ENSG{i:011d}" for i, g in enumerate(query.var_names)
    ]
    query.var_names = query.var_names.str.lower()


def _cut_to_a_few_genes(query):
    return query[:, :600].copy()


def _cut_keeping_raw(query):
    query.raw = query  # scanpy's layout: every gene in .raw, a few in X
    return query[:, :600].copy()


@pytest.mark.parametrize(
    ("model_genes", "query_genes"),
    [
        (["Cd3e", "Isg15", "Hes4", "Ms4a1"], str.upper),  # mouse symbols, upper-cased query
        (["CD3E", "ISG15", "HES4", "MS4A1"], str.lower),  # human symbols, lower-cased query
        (["WBGene00000001", "WBGene00000002", "WBGene00000003"], str.lower),  # worm codes
    ],
    ids=["mouse", "human", "worm"],
)
def test_the_case_hint_s_fix_matches_every_gene(model_genes, query_genes):
    """Names that differ from the model's only in case: the code the message gives, run as
    written, matches every model gene (upper()/lower() only fit one-case vocabularies)."""
    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(
        sparse.csr_matrix(np.ones((3, len(model_genes)), dtype=np.float32)),
        var=pd.DataFrame(index=[query_genes(g) for g in model_genes]),
    )
    genes = pd.Index(model_genes)
    with pytest.raises(ValueError, match="another case") as err:
        scdl.data.align_to_genes(adata, genes)
    fix = re.search(r"match them: `([^`]+)`", str(err.value)).group(1)
    exec(fix, {"adata": adata, "genes": genes})
    _, present = scdl.data.align_to_genes(adata, genes)
    assert present.all(), (fix, adata.var_names.tolist())


@pytest.mark.parametrize(
    ("edit", "kwargs", "match"),
    [
        (_mouse_cased, {}, r"of them occur in adata.var_names in another case \(e.g. \[.KLHL17."),
        (_ids_with_symbols_in_var, {}, r"adata.var\['symbol'\] holds \d+ of them"),
        (_lower_case_with_a_few_ids_in_var, {}, r"another case.*match them: `spelling = "),
        (_cut_to_a_few_genes, {}, r"The data hold 600 genes: if they were cut.*start again"),
        (_cut_keeping_raw, {}, r"600 genes: .*adata\.raw holds 2000 of them \(`adata\.raw\.to_"),
        (
            _no_shared_gene,
            {"min_gene_overlap": 0},
            r"Only 0 of the model's.*at least one is needed.*another species",
        ),
    ],
)
def test_annotate_names_the_gene_identifiers_to_use(edit, kwargs, match):
    """Too few model genes by name: the message points at the fix the data allows."""
    query = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    query = edit(query) or query
    snap = snapshot(query)
    with pytest.raises(ValueError, match=match):
        scdl.tl.annotate(query, **kwargs)
    assert_unchanged(query, snap)


def test_metrics_and_plots_name_the_missing_step(kang):
    adata = _with_embedding(kang)
    snap = snapshot(adata)
    with pytest.raises(TypeError, match="key_added"):
        scdl.tl.integration_metrics(adata, batch_key="sample", label_key="cell_type", key_added=3)
    with pytest.raises(KeyError, match=r"Run `scdl.tl.annotate"):
        scdl.pl.annotation(adata, groupby="cell_type", show=False)
    assert_unchanged(adata, snap)


def test_integration_metrics_needs_two_columns(kang):
    adata = _with_embedding(kang)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="batch_key and label_key are both 'sample'"):
        scdl.tl.integration_metrics(adata, batch_key="sample", label_key="sample")
    with pytest.raises(TypeError, match="embeddings must be an obsm key or a list"):
        scdl.tl.integration_metrics(
            adata, batch_key="sample", label_key="cell_type", embeddings=None
        )
    assert_unchanged(adata, snap)


def test_a_failing_plot_leaves_no_umap_behind(kang):
    """scanpy refusing an option after the UMAP was cached: the cache is taken back."""
    adata = _with_embedding(kang)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="n_neighbors must be >= 2"):
        scdl.pl.embedding(adata, color="sample", n_neighbors=1, show=False)
    with pytest.raises(ValueError, match="bogus"):  # scanpy's (matplotlib's) refusal
        scdl.pl.embedding(adata, color="sample", legend_loc="bogus", show=False)
    with pytest.raises(TypeError, match="as a string, e.g. color='5'"):  # was "not iterable"
        scdl.pl.embedding(adata, color=5, show=False)
    assert_unchanged(adata, snap)
    scdl.pl.embedding(adata, color="sample", show=False)  # the same call, valid: cached
    assert adata.obsm["X_scdl_umap"].shape == (100, 2)


def _nan_counts(adata):
    adata.X = adata.X.astype(np.float32)
    adata.X.data[0] = np.nan


def _sparse_embedding(adata):
    adata.obsm["X_scdl"] = sparse.csr_matrix(adata.obsm["X_scdl"])


def _one_batch(adata):
    adata.obs["sample"] = "one"


def _ninety_cells(adata):
    adata._inplace_subset_obs(np.arange(90))


def _batch_is_the_type(adata):
    adata.obs["sample"] = adata.obs["cell_type"].astype(str)


@pytest.mark.parametrize(
    ("edit", "kwargs", "error", "match"),
    [
        (None, {"pre_integrated": "X_harmony"}, KeyError, r"'X_harmony'.*pre_integrated=None"),
        (None, {"pre_integrated": ["X_pca"]}, TypeError, "pre_integrated must be one adata.obsm"),
        (None, {"layer": "counts"}, KeyError, "Layer 'counts' not found"),
        (None, {"embeddings": ["X_scdl", "X_scdl"]}, ValueError, r"lists \['X_scdl'\] more"),
        (_nan_counts, {}, ValueError, "NaN"),
        (_sparse_embedding, {}, TypeError, r"dense numeric embedding.*toarray"),
        (_one_batch, {}, ValueError, "no batch correction to score with one batch"),
        (None, {"batch_key": None}, ValueError, "for one batch, score the embeddings' cell"),
        (_ninety_cells, {}, ValueError, "needs more than 90 cells"),
        (_batch_is_the_type, {}, ValueError, "No 'cell_type' type occurs in two 'sample'"),
        (None, {"n_jobs": 0}, ValueError, r"n_jobs must be a positive integer or -1"),
        (None, {"n_jobs": "a"}, TypeError, r"n_jobs must be a positive integer or -1"),
    ],
)
def test_integration_metrics_checks_its_inputs_first(kang, edit, kwargs, error, match):
    """The keys and the data of the fallback PCA are checked before scib-metrics runs: a
    mistyped key is not replaced by a PCA, nor NaN counts left to scikit-learn's message."""
    adata = _with_embedding(kang)
    if edit is not None:
        edit(adata)
    snap = snapshot(adata)
    with pytest.raises(error, match=match):
        kwargs = {"batch_key": "sample", "label_key": "cell_type", **kwargs}
        scdl.tl.integration_metrics(adata, **kwargs)
    assert_unchanged(adata, snap)


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (["integrate", "{missing}"], "does not exist"),
        (["integrate", "{not_h5ad}"], "could not read .* as an .h5ad"),
        (["integrate", "{nan}"], "NaN or infinite"),
        (["integrate", "{good}", "--batch-key", "sampel"], "Did you mean 'sample'"),
        (["annotate", "{nan}"], "NaN or infinite"),
        (["annotate", "{good}"], "Only 214 of the model's 2000 genes.*--min-gene-overlap"),
    ],
)
def test_cli_reports_bad_input(kang, tmp_path, capsys, command, match):
    from scdl.cli import main

    good = _small(kang, 200)
    bad = good.copy()
    _set_value(bad, np.nan)
    files = {"missing": tmp_path / "missing.h5ad", "not_h5ad": tmp_path / "text.h5ad"}
    files["not_h5ad"].write_text("not an h5ad file")
    for name, adata in (("good", good), ("nan", bad)):
        files[name] = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(files[name])
    before = {p: p.read_bytes() for p in files.values() if p.exists()}
    args = [a.format(**files) for a in command] + ["-o", str(tmp_path / "out.h5ad"), "-q"][
        : 2 if command[0] == "annotate" else 3
    ]
    assert main(args) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out.h5ad").exists()
    assert {p: p.read_bytes() for p in before} == before


def test_gene_overlap_message_shows_the_shortfall():
    """One gene short of the threshold: the message gives the count needed, not two equal
    percentages (999 of 2000 read "50%; at least 50% are needed")."""
    import anndata as ad

    from scdl.data import gene_columns

    genes = [f"g{i}" for i in range(2000)]
    adata = ad.AnnData(np.zeros((2, 999), dtype=np.float32))
    adata.var_names = genes[:999]
    with pytest.raises(
        ValueError, match=r"Only 999 of the model's 2000 genes .*at least 1000 \(50%\)"
    ):
        gene_columns(adata, genes, min_overlap=0.5)
    adata = ad.AnnData(np.zeros((2, 1000), dtype=np.float32))
    adata.var_names = genes[:1000]
    assert gene_columns(adata, genes, min_overlap=0.5)[1].sum() == 1000


def test_public_helpers_refuse_impossible_arguments_by_name(kang):
    """The documented helpers below the models (``scdl.data``, ``scdl.module``,
    ``scdl.dataloaders``) refuse what they cannot do, naming the argument, rather than
    returning an empty or all-NaN result or failing in numpy, sklearn or their own message."""
    from scdl.data import (
        check_key_added,
        check_non_negative,
        check_positive_int,
        check_positive_number,
        gene_columns,
        genes_pca,
        matched_reference,
        profiles_from_expression,
        sampled_counts_ok,
        select_model_genes,
    )
    from scdl.dataloaders import CSRBatches
    from scdl.module import drug_table

    cells = kang[:200].copy()
    for n_top, error in ((0, ValueError), (-5, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="n_top_genes must be a positive integer"):
            select_model_genes(cells, n_top_genes=n_top)
    assert len(select_model_genes(cells, n_top_genes=50)) == 50
    profiles = profiles_from_expression(
        np.log1p(cells.X[:, :100].toarray()), cells.var_names[:100], cells.var_names[:100]
    )
    with pytest.raises(ValueError, match="n_neighbors must be a positive integer"):
        matched_reference(profiles[:10], profiles, 0)
    with pytest.raises(ValueError, match="got 0 target and 200 bulk rows"):
        matched_reference(profiles[:0], profiles, 5)
    p = matched_reference(profiles[:10], profiles, 5)
    assert np.isclose(p.sum(), 1.0) and (p >= 0).all()
    with pytest.raises(ValueError, match=r"scale must be one of \['rank', 'zscore'\]"):
        genes = cells.var_names[:100]
        profiles_from_expression(profiles, genes, genes, scale="ranks")
    with pytest.raises(ValueError, match="No genes given"):
        gene_columns(cells, [])
    with pytest.raises(ValueError, match=r"min_gene_overlap \(min_overlap\) must be a fraction"):
        gene_columns(cells, cells.var_names[:5], min_overlap=2)
    with pytest.raises(ValueError, match="A PCA needs at least 2 genes; 1 given"):
        genes_pca(cells, cells.var_names[:1])
    assert genes_pca(cells, cells.var_names[:2]).shape == (200, 1)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            CSRBatches(cells.X, batch_size=bad)
    with pytest.raises(ValueError, match="3 drug names for 2 response columns"):
        drug_table(np.zeros((5, 2)), np.zeros((5, 2)), ["a", "b", "c"])
    # wrong types are TypeErrors and wrong values ValueErrors, across the scalar checks
    for check in (check_positive_number, check_non_negative):
        with pytest.raises(TypeError):
            check(None, "x")
        with pytest.raises(TypeError):
            check("5", "x")
        with pytest.raises(ValueError):
            check(-1.0, "x")
    with pytest.raises(TypeError):
        check_positive_int(True, "x")
    with pytest.raises(ValueError, match="non-empty string"):
        check_key_added("")
    with pytest.raises(TypeError, match="non-empty string"):
        check_key_added(None)
    # a 0/1 matrix is counts to check_counts, and to the later re-check
    flags = cells.copy()
    flags.X = (cells.X > 0).astype(bool)
    assert sampled_counts_ok(flags, None)


def test_category_columns_that_fail_later_are_refused_at_setup(kang):
    """Text mixed with numbers (anndata.concat of a numbered and a named batch) failed inside
    scvi-tools' registration ("'<' not supported"); dates and pd.cut intervals trained and then
    could not be saved or loaded. Both are refused with the conversion, the AnnData unchanged."""
    from conftest import assert_unchanged, snapshot

    adata = _expressed(kang, 120)
    mixed = np.array(["pbmc_b"] * adata.n_obs, dtype=object)
    mixed[0::2] = 1  # Python ints beside text
    adata.obs["mixed"] = pd.Series(mixed, index=adata.obs_names, dtype=object)
    adata.obs["when"] = pd.to_datetime(["2024-01-01", "2024-02-01"] * (adata.n_obs // 2))
    adata.obs["binned"] = pd.cut(np.arange(adata.n_obs), 2)
    snap = snapshot(adata)
    for key, match in (
        ("mixed", r"mixes text with other values.*astype\(str\)"),
        ("when", r"datetime64.*cannot store.*astype\(str\)"),
        ("binned", r"interval.*cannot store.*astype\(str\)"),
    ):
        with pytest.raises(TypeError, match=match):
            VAE.setup_anndata(adata, batch_key=key)
        with pytest.raises(TypeError, match=match):
            scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key=key)
    assert_unchanged(adata, snap)
    adata.obs["mixed"] = adata.obs["mixed"].astype(str).astype("category")  # the fix given
    VAE.setup_anndata(adata, batch_key="mixed")


def test_batch_codes_are_compared_by_value(kang):
    """Numbers are categories by value, as scvi-tools maps them: a query batch 1 is the model's
    1.0 (it was refused as unseen, with load_query_data as the fix)."""
    adata = _expressed(kang, 120)
    adata.obs["code"] = np.where(np.arange(adata.n_obs) % 2 == 0, 1.0, 2.0)
    VAE.setup_anndata(adata, batch_key="code")
    model = VAE(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = adata.copy()
    query.obs["code"] = query.obs["code"].astype(int)
    np.testing.assert_allclose(
        model.get_latent_representation(query), model.get_latent_representation(), atol=1e-5
    )
    adata.obs["dose"] = adata.obs["code"].astype(str)
    with pytest.raises(TypeError, match=r"must be numeric.*pd.to_numeric"):
        VAE.setup_anndata(adata, continuous_covariate_keys=["dose"])


def test_a_broken_scikit_misc_install_is_named_not_read_as_a_loess_fit(kang, monkeypatch):
    """scikit-misc 0.3 wheels raise ValueError at import on numpy 2; the highly-variable-gene
    ranking caught it as a singular loess fit and trained on every gene with a warning that
    blamed the data. It is an install problem, said as one, before any work."""
    import importlib.abc
    import sys

    class BrokenLoess(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "skmisc.loess":
                raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")
            return None

    for name in [m for m in sys.modules if m == "skmisc" or m.startswith("skmisc.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [BrokenLoess(), *sys.meta_path])
    adata = kang[:200].copy()
    snap = snapshot(adata)
    with pytest.raises(ImportError, match=r"scikit-misc.*binary incompatibility.*pip install"):
        scdl.tl.integrate(adata, n_top_genes=300, max_epochs=1, progress_bar=False)
    assert_unchanged(adata, snap)
