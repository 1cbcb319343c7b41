"""``tl.annotate(batch_key=...)``: a query of several samples, each read as a dataset of its own.

Real data: CellBench's five lung lines (three CEL-seq2 plates) annotate the two-batch file,
whose query holds a CEL-seq2 and a Drop-seq batch of three of those lines.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import assert_unchanged, read_shared, snapshot

import scdl

KEY = "scdl_cell_type"


def _singlets(name: str) -> ad.AnnData:
    a = read_shared(name)
    a = a[a.obs["demuxlet"] == "SNG"].copy()
    a.obs["cell_type"] = a.obs["cell_line"].astype(str)
    return a


@pytest.fixture(scope="module")
def lines():
    """A model trained on the plates, and the two-batch query on the same 2,000 genes."""
    import scvi

    ref = _singlets("cellbench_lung_5lines_3plates.h5ad")
    query = _singlets("cellbench_lung_lines_2batches.h5ad")
    genes = ref.var_names.intersection(query.var_names)
    ref = ref[:, genes].copy()
    sc.pp.filter_genes(ref, min_cells=1)
    hv = sc.pp.highly_variable_genes(ref, flavor="seurat_v3", n_top_genes=2000, inplace=False)
    keep = ref.var_names[hv["highly_variable"].to_numpy()]
    ref, query = ref[:, keep].copy(), query[:, keep].copy()
    scvi.settings.seed = 0
    scdl.models.CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(ref)
    model.train(max_epochs=30, enable_progress_bar=False)
    return model, query


def test_each_sample_is_annotated_as_its_own_query(lines):
    model, query = lines
    joined = scdl.tl.annotate(query, model=model, batch_key="batch", copy=True)
    batch = query.obs["batch"].astype(str).to_numpy()
    for name in np.unique(batch):
        part = scdl.tl.annotate(query[batch == name].copy(), model=model, copy=True)
        mine = joined[batch == name]
        assert (mine.obs[KEY].astype(str).to_numpy() == part.obs[KEY].astype(str).to_numpy()).all()
        np.testing.assert_allclose(
            mine.obsm[f"{KEY}_probabilities"].to_numpy(),
            part.obsm[f"{KEY}_probabilities"].to_numpy(),
            rtol=1e-5,
        )
        np.testing.assert_array_equal(
            mine.obs[f"{KEY}_unknown"].to_numpy(), part.obs[f"{KEY}_unknown"].to_numpy()
        )
    table = joined.uns[KEY]["batches"]
    assert list(table.index) == sorted(np.unique(batch))
    assert table["n_cells"].sum() == query.n_obs
    assert joined.uns[KEY]["params"]["batch_key"] == "batch"
    assert "adapt_to_query" not in joined.uns[KEY]  # given per sample instead
    # the whole query read as one dataset records it as before
    whole = scdl.tl.annotate(query, model=model, copy=True)
    assert "batches" not in whole.uns[KEY] and "adapt_to_query" in whole.uns[KEY]


def test_known_lines_of_two_chemistries_are_not_called_unknown(lines):
    """Every query line is a reference line: with each chemistry read apart, (almost) none is
    Unknown and the calls are right, whatever the query read whole gives."""
    model, query = lines
    joined = scdl.tl.annotate(query, model=model, batch_key="batch", copy=True)
    calls = joined.obs[KEY].astype(str).to_numpy()
    truth = query.obs["cell_type"].to_numpy()
    assert (calls == "Unknown").mean() <= 0.02
    assert (calls == truth).mean() >= 0.95


def test_voting_clusters_stay_within_a_sample(lines, tmp_path):
    model, query = lines
    joined = scdl.tl.annotate(
        query, model=model, batch_key="batch", majority_voting=True, copy=True
    )
    clusters = joined.obs[f"{KEY}_over_clustering"].astype(str)
    per_cluster = pd.crosstab(clusters, query.obs["batch"].astype(str).to_numpy())
    assert ((per_cluster > 0).sum(axis=1) == 1).all()  # no cluster spans two samples
    path = tmp_path / "joined.h5ad"
    joined.write_h5ad(path)
    back = ad.read_h5ad(path).uns[KEY]["batches"]
    assert back["n_cells"].tolist() == joined.uns[KEY]["batches"]["n_cells"].tolist()


def test_a_small_sample_is_named_in_the_warning(lines):
    model, query = lines
    query = query.copy()
    batch = query.obs["batch"].astype(str).to_numpy()
    small = np.flatnonzero(batch == "sc_dropseq")[:40]
    keep = np.sort(np.concatenate([np.flatnonzero(batch != "sc_dropseq"), small]))
    query = query[keep].copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        joined = scdl.tl.annotate(query, model=model, batch_key="batch", copy=True)
    said = [str(w.message) for w in caught if "needs at least" in str(w.message)]
    assert len(said) == 1 and said[0].endswith("(sample 'sc_dropseq')")
    # the advice fits a sample read apart: it has no more cells of its own to be read with
    assert "annotate it without `batch_key`" in said[0] and "more cells of" not in said[0]
    assert joined.uns[KEY]["batches"].loc["sc_dropseq", "n_cells"] == 40
    # the same cells as a query of their own, or as its one sample, are told to join more
    # cells of their sample (there are no other samples to be read with)
    alone = query[batch[keep] == "sc_dropseq"].copy()
    for kwargs in ({}, {"batch_key": "batch"}):
        with pytest.warns(UserWarning, match="together with more cells of their sample") as w:
            model.annotate_cells(alone, **kwargs)
        assert not [x for x in w if "annotate it without `batch_key`" in str(x.message)]
    # the user's filters hold for the samples' warnings: ignored, or raised as errors
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="The query has 40 cells")
        calls, _ = model.annotate_cells(query, batch_key="batch")
    assert not [w for w in caught if "needs at least" in str(w.message)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The query has 40 cells")
        with pytest.raises(UserWarning, match="needs at least"):
            model.annotate_cells(query, batch_key="batch")
    # calls made by sample concatenate (their attrs hold no DataFrame for pandas to compare)
    assert len(pd.concat([calls, calls])) == 2 * query.n_obs


@pytest.mark.parametrize(
    ("batch_key", "error", "says"),
    [
        ("plate", KeyError, "batch_key='plate'"),
        (3, TypeError, "batch_key"),
        ("gaps", ValueError, "missing"),
        ("depth", TypeError, "non-integer numbers"),  # a per-cell measurement, not samples
    ],
)
def test_a_wrong_batch_key_is_refused_and_adata_left_unchanged(lines, batch_key, error, says):
    model, query = lines
    query = query.copy()
    query.obs["gaps"] = query.obs["batch"].astype(object)
    query.obs.iloc[:3, query.obs.columns.get_loc("gaps")] = np.nan
    query.obs["depth"] = np.asarray(query.X.sum(1)).ravel() / 7.0
    snap = snapshot(query)
    with pytest.raises(error, match=says):
        scdl.tl.annotate(query, model=model, batch_key=batch_key)
    assert_unchanged(query, snap)
