"""What users do to an AnnData after scdl wrote into it (concatenate, copy a column across,
join with new cells), then scdl again: said, not silently different."""

from __future__ import annotations

import contextlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import scdl


def _halves(adata: ad.AnnData) -> list[ad.AnnData]:
    middle = adata.n_obs // 2
    return [adata[:middle].copy(), adata[middle:].copy()]


def test_cluster_says_when_concat_dropped_the_integrate_record(kang_integrated):
    """`anndata.concat` drops uns by default: the same latent then clustered on its own graph,
    without the PCA graph tl.integrate's latents are joined with, and said nothing."""
    adata, _ = kang_integrated
    joined = ad.concat(_halves(adata))  # cells, order and latent as they were
    assert "X_scdl" not in joined.uns
    with pytest.warns(UserWarning, match=r"no record in adata.uns\['X_scdl'\].*uns_merge='same'"):
        scdl.tl.cluster(joined, key_added="c")
    assert joined.uns["c_neighbors"]["params"]["pca"] == ""
    kept = ad.concat(_halves(adata), uns_merge="same")  # the record kept: the joined graph
    with warnings_as_errors("no record in adata.uns"):
        scdl.tl.cluster(kept, key_added="c")
    assert "harmonised over obs['sample']" in kept.uns["c_neighbors"]["params"]["pca"]
    with warnings_as_errors("no record in adata.uns"):  # the user's own choice: no warning
        scdl.tl.cluster(joined, key_added="c", pca_key=None)


@contextlib.contextmanager
def warnings_as_errors(message: str):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=f".*{message}")
        yield


def test_differential_expression_says_cells_without_a_group_join_the_rest(kang_integrated):
    """A column copied across from a subset leaves NaN for the other cells, which scvi-tools
    counts in "Rest": a comparison against other cell types than the user meant."""
    adata, model = kang_integrated
    t_cells = adata[adata.obs["cell_type"].astype(str).str.contains("T")].copy()
    t_cells.obs["t_sub"] = np.where(np.arange(t_cells.n_obs) % 2, "a", "b")
    model.adata.obs["t_sub"] = t_cells.obs["t_sub"]  # matched by name: NaN elsewhere
    try:
        n_na = int(model.adata.obs["t_sub"].isna().sum())
        assert 0 < n_na < model.adata.n_obs
        with pytest.warns(UserWarning, match=rf"{n_na} of \d+ cells have no obs\['t_sub'\]"):
            model.differential_expression(groupby="t_sub", group1="a", batch_size=512)
        with warnings_as_errors("have no obs"):  # a group2 given: no Rest
            model.differential_expression(groupby="t_sub", group1="a", group2="b", batch_size=512)
    finally:
        del model.adata.obs["t_sub"]


def test_cells_without_a_latent_are_named_as_cells(kang_integrated):
    """An outer-join concat pads new cells' rows with NaN: the error counts cells and says
    where they come from, not "a diverged training"."""
    adata, _ = kang_integrated
    new = ad.AnnData(
        np.ones((5, adata.n_vars), dtype=np.float32),
        obs=pd.DataFrame(index=[f"new{i}" for i in range(5)]),
        var=pd.DataFrame(index=adata.var_names),
    )
    joined = ad.concat([adata, new], join="outer")
    assert np.isnan(joined.obsm["X_scdl"][-5:]).all()
    with pytest.raises(ValueError, match=r"for 5 of 1561 cells.*join='outer'"):
        scdl.tl.cluster(joined)
    with pytest.raises(ValueError, match=r"for 5 of 1561 cells"):
        scdl.pl.embedding(joined, color="cell_type", show=False)


def test_contrastive_plot_refuses_cells_without_values(kang):
    """Rows of NaN (an outer-join concat) were read as target cells and failed in sklearn."""
    adata = kang[np.random.default_rng(0).choice(kang.n_obs, 400, replace=False)].copy()
    scdl.tl.contrastive(adata, groupby="condition", background="ctrl", max_epochs=2,
                        progress_bar=False)  # fmt: skip
    adata.obsm["X_scdl_salient"][:3] = np.nan
    with pytest.raises(ValueError, match=r"for 3 of 400 cells"):
        scdl.pl.contrastive(adata, show=False)


def test_annotation_plot_takes_duplicated_cell_names():
    """Two samples' barcodes concatenated without index_unique: the agreement matrix failed."""
    calls = pd.DataFrame(
        {
            "scdl_cell_type": ["B", "NK", "B", "NK"],
            "scdl_cell_type_confidence": [0.9, 0.8, 0.7, 0.6],
            "truth": ["B", "NK", "NK", "NK"],
        },
        index=["AAAC-1", "AAAG-1", "AAAC-1", "AAAG-1"],
    )
    fig = scdl.pl.annotation(ad.AnnData(obs=calls), groupby="truth", show=False)
    assert isinstance(fig, Figure)
    assert fig.axes[1].get_title() == "Agreement 75.0%"


def test_scanpy_hints_name_no_field_scdl_did_not_write(kang_integrated):
    """At scanpy's "hint" verbosity its messages from scdl's own scratch AnnData (the Unknown
    call's graph, the UMAP cache) named .obsp['connectivities'] and X_umap as added."""
    import io

    import scanpy as sc

    adata = kang_integrated[0][:300].copy()
    log, before = io.StringIO(), (sc.settings.verbosity, sc.settings.logfile)
    sc.settings.logfile, sc.settings.verbosity = log, 3
    try:
        scdl.tl.annotate(adata, model="pbmc_kang2018", min_gene_overlap=0.1)
        scdl.pl.embedding(adata, color="cell_type", show=False)
        assert sc.settings.verbosity == 3  # put back
    finally:
        sc.settings.verbosity, sc.settings.logfile = before[0], before[1]
    text = log.getvalue()
    assert "connectivities" not in text and "X_umap" not in text, text
    assert "connectivities" not in adata.obsp and "X_umap" not in adata.obsm
