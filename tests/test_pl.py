from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import scdl  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test's figures closed after it: pyplot keeps every figure a test leaves open (a
    worker held over 20 of them, matplotlib's memory warning)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_embedding_side_by_side(kang_integrated, tmp_path):
    adata, _ = kang_integrated
    fig = scdl.pl.embedding(
        adata, color=["sample", "cell_type"], show=False, save=tmp_path / "umap"
    )
    assert isinstance(fig, Figure)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    assert adata.obsm["X_scdl_umap"].shape == (adata.n_obs, 2)


def test_training_history_from_adata_and_model(kang_integrated, tmp_path):
    adata, model = kang_integrated
    fig = scdl.pl.training_history(adata, show=False, save=tmp_path / "h.png")
    assert isinstance(fig, Figure) and (tmp_path / "h.png").exists()
    line = fig.axes[0].get_lines()[0]
    assert len(line.get_xdata()) == adata.uns["X_scdl"]["params"]["max_epochs"]
    assert isinstance(scdl.pl.training_history(model, show=False), Figure)
    with pytest.raises(KeyError, match=r"Histories are under key=\['X_scdl'\].*integrate"):
        scdl.pl.training_history(adata, key="X_other", show=False)
    # a 5-epoch run (as tl.* writes its history): matplotlib alone ticks 0.5, 1.5, ...
    short = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    epochs = np.arange(5.0)
    short.uns["run"] = {"history": {"elbo_train": 100 - epochs, "elbo_train_epoch": epochs}}
    ticks = scdl.pl.training_history(short, key="run", show=False).axes[0].get_xticks()
    assert np.array_equal(ticks, np.round(ticks))  # whole epochs


def test_integration_metrics_plot(tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        {"Batch correction": [0.3, 0.6], "Bio conservation": [0.6, 0.7], "Total": [0.48, 0.66]},
        index=["X_pca", "X_scdl"],
    )
    fig = scdl.pl.integration_metrics(df, show=False, save=tmp_path / "m.png")
    assert isinstance(fig, Figure) and (tmp_path / "m.png").exists()
    assert len(fig.axes[0].patches) == 6
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['Total'\]"):
        scdl.pl.integration_metrics(df.drop(columns="Total"), show=False)
    with pytest.raises(TypeError, match="results is a dict; pass the DataFrame"):
        scdl.pl.integration_metrics(df.to_dict(), show=False)
    # scib-metrics' own Benchmarker.get_results(): its "Metric Type" row of words is left out
    kinds = pd.DataFrame([["Aggregate score"] * 3], columns=df.columns, index=["Metric Type"])
    table = pd.concat([df, kinds]).rename_axis("Embedding")
    assert len(scdl.pl.integration_metrics(table, show=False).axes[0].patches) == 6
    # scanpy's return_fig=True: the figure, not shown
    assert isinstance(scdl.pl.integration_metrics(df, return_fig=True), Figure)
    # twelve embeddings: twelve colours (matplotlib's cycle repeated after ten)
    many = pd.concat([df] * 6, ignore_index=True).set_axis([f"e{i}" for i in range(12)])
    fig = scdl.pl.integration_metrics(many, show=False)
    colors = {tuple(bar.get_facecolor()) for bar in fig.axes[0].patches}
    assert len(colors) == 12


def test_single_panel_plots_draw_on_given_axes(kang_integrated):
    """As scanpy's: ``ax=`` draws into the user's layout and returns the figure holding it."""
    import matplotlib.pyplot as plt
    import pandas as pd

    adata = kang_integrated[0].copy()
    scdl.tl.cluster(adata, use_rep="X_scdl", resolution="auto")
    df = pd.DataFrame(
        {"Batch correction": [0.3, 0.6], "Bio conservation": [0.6, 0.7], "Total": [0.48, 0.66]},
        index=["X_pca", "X_scdl"],
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    open_figures = set(plt.get_fignums())
    assert scdl.pl.training_history(adata, ax=axes[0], show=False) is fig
    assert scdl.pl.cluster_resolution(adata, ax=axes[1], show=False) is fig
    assert scdl.pl.integration_metrics(df, ax=axes[2], show=False) is fig
    assert len(axes[0].lines) >= 1 and len(axes[1].lines) >= 1 and len(axes[2].patches) == 6
    assert set(plt.get_fignums()) == open_figures  # no other figure was opened
    plt.close(fig)


def test_save_true_follows_scanpy_settings(tmp_path, monkeypatch):
    """save=True writes to scanpy's figdir in its figure format."""
    import pandas as pd
    import scanpy as sc

    monkeypatch.chdir(tmp_path)  # where a suffix misread as a path would land

    before = sc.settings.figdir, sc.settings.file_format_figs
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path / "figs", "pdf"
    try:
        df = pd.DataFrame({"Batch correction": [0.3], "Bio conservation": [0.6], "Total": [0.5]})
        scdl.pl.integration_metrics(df, show=False, save=True)
        # a string starting with "_" is scanpy's suffix, its format from its extension
        scdl.pl.integration_metrics(df, show=False, save="_ctrl")
        scdl.pl.integration_metrics(df, show=False, save="_stim.png")
        # a format alone, scanpy's `save=".svg"`: the plot's name in that format
        sc.settings.file_format_figs = "png"
        scdl.pl.integration_metrics(df, show=False, save=".svg")
    finally:
        sc.settings.figdir, sc.settings.file_format_figs = before
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert len(written) == 4 and written[0].endswith(".pdf")
    assert written[1].endswith(".svg") and written[1].removesuffix(".svg") + ".pdf" == written[0]
    assert written[2].endswith("_ctrl.pdf") and written[3].endswith("_stim.png")
    assert written[2].removesuffix("_ctrl.pdf") + ".pdf" == written[0]
    assert not list(tmp_path.glob(".*"))  # no hidden ".svg.png" in the working folder


def test_saved_figure_is_closed_as_scanpy_does(tmp_path):
    """save with show=None closes the figure (scanpy); show=False keeps it and returns it."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame({"Batch correction": [0.3], "Bio conservation": [0.6], "Total": [0.5]})
    plt.close("all")
    for i in range(3):
        assert scdl.pl.integration_metrics(df, save=tmp_path / f"m{i}.png") is None
    assert plt.get_fignums() == [] and len(list(tmp_path.iterdir())) == 3
    fig = scdl.pl.integration_metrics(df, save=tmp_path / "kept.png", show=False)
    assert isinstance(fig, Figure) and plt.get_fignums() == [fig.number]
    plt.close("all")
    # shown and saved: closed too (scanpy); save=None follows scanpy's autosave
    assert scdl.pl.integration_metrics(df, save=tmp_path / "shown.png", show=True) is None
    assert plt.get_fignums() == []


def test_a_saved_figure_is_shown_first_where_scanpy_shows_it(tmp_path, monkeypatch):
    """In a notebook (scanpy's ``autoshow``, on by default) ``save=`` with ``show=None`` shows
    the figure, then closes it, as scanpy's ``savefig_or_show`` does: it was closed unshown,
    so adding ``save=`` made the figure vanish from the notebook."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(plt.get_fignums()))
    df = pd.DataFrame({"Batch correction": [0.3], "Bio conservation": [0.6], "Total": [0.5]})
    plt.close("all")
    autoshow = sc.settings.autoshow  # a property: set and restored, not monkeypatched
    try:
        sc.settings.autoshow = True
        assert scdl.pl.integration_metrics(df, save=tmp_path / "a.png") is None
        assert len(shown) == 1 and len(shown[0]) == 1 and plt.get_fignums() == []
        sc.settings.autoshow = False  # a script: saved, closed, not shown
        assert scdl.pl.integration_metrics(df, save=tmp_path / "b.png") is None
        assert len(shown) == 1 and plt.get_fignums() == []
        fig = scdl.pl.integration_metrics(df)  # neither: the figure is the caller's
        assert isinstance(fig, Figure) and len(shown) == 1
    finally:
        sc.settings.autoshow = autoshow
        plt.close("all")


def test_autosave_and_sizes_follow_scanpy(tmp_path):
    """``sc.settings.autosave`` saves a figure given no ``save`` (scanpy's setting); an empty
    results table and a panel count below 1 are named, not a ZeroDivisionError."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    figdir, autosave = sc.settings.figdir, sc.settings.autosave
    sc.settings.figdir, sc.settings.autosave = tmp_path, True  # properties: set and restored
    df = pd.DataFrame({"Batch correction": [0.3], "Bio conservation": [0.6], "Total": [0.5]})
    try:
        assert scdl.pl.integration_metrics(df) is None
    finally:
        sc.settings.figdir, sc.settings.autosave = figdir, autosave
    assert [f.stem for f in tmp_path.iterdir()] == ["integration_metrics"]
    with pytest.raises(ValueError, match="no rows"):
        scdl.pl.integration_metrics(df.iloc[:0], show=False)
    attr = pd.DataFrame({"label": ["B", "B"], "gene": ["CD79A", "MS4A1"], "attribution": [2, 1]})
    for ncols in (0, -1):
        with pytest.raises(ValueError, match="ncols must be a positive integer"):
            scdl.pl.attributions(attr, ncols=ncols, show=False)
    plt.close("all")


def test_annotation_plots_take_a_string_column_and_name_an_empty_table():
    import anndata as ad
    import pandas as pd

    calls = pd.DataFrame(
        {"scdl_cell_type": ["B", "NK", "B"], "scdl_cell_type_confidence": [0.9, 0.8, 0.7]},
        index=list("abc"),
    )
    assert isinstance(scdl.pl.annotation(ad.AnnData(obs=calls), show=False), Figure)
    voted = ad.AnnData(obs=calls.rename(columns={"scdl_cell_type": "v_majority_voting"}))
    with pytest.raises(KeyError, match=r"'v_majority_voting_confidence'.*`key_added`"):
        scdl.pl.annotation(voted, key="v_majority_voting", show=False)
    empty = pd.DataFrame(columns=["label", "gene", "attribution", "rank"])
    with pytest.raises(ValueError, match="has no rows"):
        scdl.pl.attributions(empty, show=False)


def test_annotation_plot_draws_on_given_axes():
    """``pl.annotation(ax=)``: one Axes, or two with ``groupby``; a wrong count is named."""
    import anndata as ad
    import matplotlib.pyplot as plt
    import pandas as pd

    calls = pd.DataFrame(
        {
            "scdl_cell_type": ["B", "NK", "B", "NK"],
            "scdl_cell_type_confidence": [0.9, 0.8, 0.7, 0.6],
            "truth": ["B", "NK", "NK", "NK"],
        },
        index=list("abcd"),
    )
    adata = ad.AnnData(obs=calls)
    fig, axes = plt.subplots(1, 3)
    open_figures = set(plt.get_fignums())
    assert scdl.pl.annotation(adata, ax=axes[0], show=False) is fig
    assert scdl.pl.annotation(adata, groupby="truth", ax=axes[1:], show=False) is fig
    assert set(plt.get_fignums()) == open_figures
    assert axes[2].get_title() == "Agreement 75.0%"
    with pytest.raises(ValueError, match="sequence of 2 Axes"):
        scdl.pl.annotation(adata, groupby="truth", ax=axes[0], show=False)
    plt.close(fig)
    # label sets that differ (a known type never predicted, a predicted type never known):
    # rows and columns share one order, so correct calls sit on the diagonal
    adata.obs["truth"] = ["A", "NK", "B", "NK"]  # "A" is never predicted
    adata.obs["scdl_cell_type"] = ["B", "NK", "B", "pDC"]  # "pDC" is never known
    fig = scdl.pl.annotation(adata, groupby="truth", show=False)
    matrix = fig.axes[1]
    rows = [t.get_text().rsplit(" (", 1)[0] for t in matrix.get_yticklabels()]
    cols = [t.get_text() for t in matrix.get_xticklabels()]
    assert rows == ["A", "B", "NK"] and cols == ["A", "B", "NK", "pDC"]
    values = np.asarray(matrix.get_images()[0].get_array())
    assert values[1, 1] == 1.0 and values[2, 2] == 0.5  # B called B; one of two NK called NK
    plt.close(fig)


def test_annotation_groups_must_be_labels_and_axes_may_be_a_grid():
    """A per-cell number as ``groupby`` (total counts) drew one matrix row per value in a
    figure ~90 inches tall; it is refused as scanpy's violin refuses it, while integer codes
    and labels with missing values plot. A grid of Axes (``plt.subplots(1, 2)`` reshaped to
    2-D) is taken in row order."""
    import anndata as ad
    import matplotlib.pyplot as plt
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 300
    calls = pd.DataFrame(
        {
            "scdl_cell_type": rng.choice(["B", "NK"], n),
            "scdl_cell_type_confidence": rng.uniform(0.5, 1.0, n),
            "n_counts": rng.integers(500, 5000, n),
            "code": rng.integers(0, 3, n),
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(obs=calls)
    with pytest.raises(ValueError, match=r"'n_counts'\] holds \d+ distinct numbers"):
        scdl.pl.annotation(adata, groupby="n_counts", show=False)
    plt.close(scdl.pl.annotation(adata, groupby="code", show=False))
    adata.obs["truth"] = adata.obs["scdl_cell_type"].to_numpy().astype(object)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("truth")] = None  # unlabelled cells
    fig, axes = plt.subplots(1, 2)
    grid = np.asarray(axes, dtype=object).reshape(1, 2)
    assert scdl.pl.annotation(adata, groupby="truth", ax=grid, show=False) is fig
    plt.close(fig)


def test_embedding_umap_follows_the_representation(kang_integrated):
    """A new representation under the same key (e.g. a second tl.integrate) gets a new UMAP;
    an unchanged one reuses the cached UMAP."""
    adata, _ = kang_integrated
    adata = adata.copy()
    scdl.pl.embedding(adata, show=False)
    first = adata.obsm["X_scdl_umap"].copy()
    scdl.pl.embedding(adata, show=False)
    np.testing.assert_array_equal(adata.obsm["X_scdl_umap"], first)  # reused, not recomputed
    # same shape, other content: as after integrating again into key_added="X_scdl"
    adata.obsm["X_scdl"] = np.random.default_rng(0).normal(size=adata.obsm["X_scdl"].shape)
    scdl.pl.embedding(adata, show=False)
    assert not np.allclose(adata.obsm["X_scdl_umap"], first)
    assert adata.uns["X_scdl_umap"]["params"]["n_neighbors"] == 15


def test_embedding_keeps_its_layout_for_the_same_cells_in_another_order(kang_integrated):
    """Cells sorted (e.g. by type for a heatmap) keep their cached layout, as scanpy keeps
    X_umap; the representation's rows moved without the layout's get a new one."""
    adata = kang_integrated[0].copy()
    scdl.pl.embedding(adata, show=False)
    order = np.argsort(adata.obs["cell_type"].astype(str).to_numpy(), kind="stable")
    layout = adata.obsm["X_scdl_umap"][order].copy()
    sorted_cells = adata[order].copy()
    scdl.pl.embedding(sorted_cells, show=False)
    np.testing.assert_array_equal(sorted_cells.obsm["X_scdl_umap"], layout)
    sorted_cells.obsm["X_scdl_umap"] = -layout  # a layout the user flipped is theirs
    scdl.pl.embedding(sorted_cells, show=False)
    np.testing.assert_array_equal(sorted_cells.obsm["X_scdl_umap"], -layout)
    layout = -layout
    sorted_cells.obsm["X_scdl"] = sorted_cells.obsm["X_scdl"][::-1].copy()  # layout unmoved
    scdl.pl.embedding(sorted_cells, show=False)
    assert not np.allclose(sorted_cells.obsm["X_scdl_umap"], layout)


def test_embedding_writes_only_its_umap_cache(kang_integrated):
    """scanpy stores palettes in uns and makes string obs columns categorical; the docstring
    promises the cached UMAP is all scdl.pl.embedding writes."""
    from conftest import assert_unchanged, snapshot

    adata = kang_integrated[0].copy()
    adata.obs["sample_name"] = adata.obs["sample"].astype(str)
    strings = adata.obs["sample_name"].dtype  # object (pandas 2) or str (pandas 3)
    adata.uns["cell_type_colors"] = ["#000000"]  # too short for 5 types: scanpy replaces it
    scdl.pl.embedding(adata, show=False)  # computes and caches the UMAP
    snap = snapshot(adata)
    fig = scdl.pl.embedding(adata, color=["sample_name", "cell_type"], show=False)
    assert isinstance(fig, Figure)
    assert_unchanged(adata, snap)
    assert adata.obs["sample_name"].dtype == strings  # not made categorical
    assert list(adata.uns["cell_type_colors"]) == ["#000000"]


def _sparse_basis(adata):
    from scipy import sparse

    adata.obsm["X_scdl"] = sparse.csr_matrix(adata.obsm["X_scdl"])


def _nan_basis(adata):
    adata.obsm["X_scdl"] = adata.obsm["X_scdl"].copy()
    adata.obsm["X_scdl"][0, 0] = np.nan


@pytest.mark.parametrize(
    ("edit", "kwargs", "error", "match"),
    [
        (None, {"color": "cell_typ"}, KeyError, "neither an obs column.*'cell_type'"),
        (_nan_basis, {}, ValueError, "NaN or infinite"),
        (_sparse_basis, {}, TypeError, "dense numeric embedding"),
        (None, {"basis": ["X_scdl"]}, TypeError, "basis must be one adata.obsm key"),
        # scanpy reads these only when it draws, after the UMAP: checked before it
        (None, {"legend_loc": "upper rigth"}, ValueError, "legend_loc='upper rigth' is not"),
        (None, {"layer": "count", "color": "ISG15"}, KeyError, "layer='count' is not in"),
        (None, {"palette": "Set-1"}, ValueError, r"not a matplotlib colormap \(close: \['Set1'"),
    ],
)
def test_embedding_checks_before_writing_its_cache(kang_integrated, edit, kwargs, error, match):
    from conftest import assert_unchanged, snapshot

    adata = kang_integrated[0][:300].copy()
    for key in [k for k in adata.obsm if k.endswith("_umap")]:
        del adata.obsm[key]
    if edit is not None:
        edit(adata)
    snap = snapshot(adata)
    with pytest.raises(error, match=match):
        scdl.pl.embedding(adata, show=False, **kwargs)
    assert_unchanged(adata, snap)
    assert "X_scdl_umap" not in adata.obsm


def test_embedding_takes_random_state_none(kang_integrated):
    adata = kang_integrated[0][:300].copy()
    assert isinstance(scdl.pl.embedding(adata, random_state=None, show=False), Figure)
    assert adata.uns["X_scdl_umap"]["params"]["random_state"] == 0


def test_embedding_default_colour_needs_the_recorded_batch_column(kang_integrated):
    """The default colour is the batch key tl.integrate recorded while that column exists; a
    renamed column, or an ``uns`` entry of the basis's name that is not a record, gives no
    colour rather than an error."""
    adata = kang_integrated[0][:300].copy()
    batch = adata.uns["X_scdl"]["params"]["batch_key"]
    adata.obs = adata.obs.rename(columns={batch: "renamed"})
    fig = scdl.pl.embedding(adata, show=False)
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is None  # one uncoloured panel
    adata.obsm["X_other"] = adata.obsm["X_scdl"]
    adata.uns["X_other"] = "a note, not a record"
    assert isinstance(scdl.pl.embedding(adata, basis="X_other", show=False), Figure)


def test_embedding_draws_numbered_batches_as_categories(kang_integrated):
    """Batch codes 0, 1, ... that tl.integrate read as categories are drawn as categories by
    default (a legend, not scanpy's colour bar for numbers); the column is left as it was."""
    adata = kang_integrated[0][:300].copy()
    batch = adata.uns["X_scdl"]["params"]["batch_key"]
    adata.obs[batch] = adata.obs[batch].cat.codes.astype(np.int64)
    fig = scdl.pl.embedding(adata, show=False)
    assert len(fig.axes) == 1  # no colour bar beside the panel
    legend = fig.axes[0].get_legend()
    labels = {t.get_text() for t in legend.get_texts()} if legend else set()
    assert labels == {str(c) for c in adata.obs[batch].unique()}
    assert adata.obs[batch].dtype == np.int64 and f"{batch}_colors" not in adata.uns


def test_embedding_takes_scanpys_gene_symbols(kang_integrated):
    """``gene_symbols=`` goes to scanpy (as the docstring says of other options): a colour
    named in that var column is a gene, not refused; a missing column is named."""
    adata = kang_integrated[0][:300].copy()
    adata.var["symbol"] = ["sym_" + g for g in adata.var_names]
    gene = "sym_" + adata.var_names[0]
    fig = scdl.pl.embedding(adata, color=gene, gene_symbols="symbol", show=False)
    assert fig.axes[0].get_title() == gene
    with pytest.raises(KeyError, match="gene_symbols='nosuch' is not a column of adata.var"):
        scdl.pl.embedding(adata, color="sym_x", gene_symbols="nosuch", show=False)


def test_embedding_on_given_axes(kang_integrated):
    import matplotlib.pyplot as plt

    adata = kang_integrated[0].copy()
    fig, ax = plt.subplots()
    out = scdl.pl.embedding(adata, color="cell_type", ax=ax, show=False)
    assert out is fig
    assert len(ax.collections) > 0  # the cells were drawn on the given axes
    plt.close(fig)


def test_embedding_passes_scanpy_options(kang_integrated):
    """frameon and return_fig are scanpy options a user may pass (they were set twice)."""
    import matplotlib.pyplot as plt

    adata = kang_integrated[0].copy()
    fig = scdl.pl.embedding(adata, color="cell_type", frameon=True, return_fig=True, show=False)
    assert fig.axes[0].axison  # the frame the user asked for
    plt.close(fig)


def test_training_history_of_the_annotator(kang):
    """The docstring takes any trained scdl model; the annotator's history holds a loss, not
    an ELBO."""
    adata = kang[:300].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(adata)
    model.train(max_epochs=3, enable_progress_bar=False)
    fig = scdl.pl.training_history(model, show=False)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(
        ax.get_lines()[0].get_ydata(), model.history["train_loss"].iloc[:, 0].to_numpy(float)
    )
    assert "loss" in ax.get_ylabel()


def test_embedding_of_backed_data(kang_integrated, tmp_path):
    import anndata as ad

    adata = kang_integrated[0].copy()
    scdl.pl.embedding(adata, show=False)  # the cached UMAP is saved with the file
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    gene = str(adata.var_names[0])
    assert isinstance(scdl.pl.embedding(backed, color=["cell_type", gene], show=False), Figure)
    assert "cell_type_colors" not in backed.uns
    # a view of it cannot hold a cached UMAP: refused before the UMAP is computed, naming
    # to_memory() (anndata's copy error came after it)
    view = backed[backed.obs["cell_type"] == backed.obs["cell_type"].iloc[0]]
    with pytest.raises(ValueError, match="view of a backed AnnData.*to_memory"):
        scdl.pl.embedding(view, n_neighbors=5, show=False)


def test_annotation_agreement_leaves_unlabelled_cells_out():
    """Unlabelled cells (NaN) are out of the matrix, and out of the agreement in its title."""
    import anndata as ad
    import pandas as pd

    calls = pd.DataFrame(
        {
            "scdl_cell_type": ["B", "NK", "B", "NK"],
            "scdl_cell_type_confidence": [0.9, 0.8, 0.7, 0.6],
            "truth": ["B", None, None, "NK"],
        },
        index=list("abcd"),
    )
    fig = scdl.pl.annotation(ad.AnnData(obs=calls), groupby="truth", show=False)
    assert fig.axes[1].get_title() == "Agreement 100.0%"  # was 50.0%: NaN counted wrong


def test_annotation_agreement_needs_shared_label_names():
    """Known labels named otherwise than the model's types ("B cells" vs "B") share no name:
    the title says so instead of an agreement of 0% that reads as every call wrong."""
    import anndata as ad
    import pandas as pd

    calls = pd.DataFrame(
        {
            "scdl_cell_type": ["B", "NK", "B", "NK"],
            "scdl_cell_type_confidence": [0.9, 0.8, 0.7, 0.6],
            "truth": ["B cells", "NK cells", "B cells", "NK cells"],
        },
        index=list("abcd"),
    )
    fig = scdl.pl.annotation(ad.AnnData(obs=calls), groupby="truth", show=False)
    assert fig.axes[1].get_title() == "No truth label is named as a predicted type: compare by row"
    calls["truth"] = ["B", "NK cells", "B", "NK cells"]  # one shared name: a rate again
    fig = scdl.pl.annotation(ad.AnnData(obs=calls), groupby="truth", show=False)
    assert fig.axes[1].get_title() == "Agreement 50.0%"


def test_one_panel_plots_refuse_an_array_of_axes_by_name(kang_integrated):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match=r"draws 1 panel\(s\): pass `ax` as one"):
        scdl.pl.training_history(kang_integrated[0], ax=axes, show=False)
    plt.close(fig)


def test_save_expands_home_and_follows_the_save_dpi(kang_integrated, tmp_path, monkeypatch):
    """``save="~/figs/x.png"`` made a folder named "~" in the working directory; the saved
    figure's resolution is the user's ``savefig.dpi`` (``sc.set_figure_params(dpi_save=)``)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for dpi in (80, 160):
        monkeypatch.setitem(plt.rcParams, "savefig.dpi", dpi)
        scdl.pl.training_history(kang_integrated[0], save=f"~/figs/h{dpi}.png", show=False)
        plt.close("all")
    assert not (tmp_path / "~").exists()
    sizes = [Image.open(tmp_path / "home" / "figs" / f"h{d}.png").size for d in (80, 160)]
    assert sizes[1][0] == pytest.approx(2 * sizes[0][0], rel=0.05)
