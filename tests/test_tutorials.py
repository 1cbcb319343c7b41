"""The tutorials run end to end, and the results their text states hold.

Each notebook in ``tutorials/`` is executed from its committed source (the committed outputs are
never overwritten), cell by cell, in a temporary working folder, by an IPython shell inside the
test process: the machinery a Jupyter kernel runs cells with, without a kernel per notebook.
Every notebook starts from an empty namespace. Running in this process lets the notebooks reuse
what the other tests already imported and compiled (numba's UMAP, neighbour search and kBET
functions cost 30-100 s per fresh process), so ``conftest.py`` runs these tests last, where
the settings a notebook changes (log levels, scanpy's figure parameters) reach no other test.
Notebooks that need ``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import DATA

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("IPython")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
if not NOTEBOOKS:  # e.g. tests run from an sdist
    pytest.skip("no tutorials/ notebooks", allow_module_level=True)
# files of ../shared/data each notebook reads (the others use data bundled with scdl)
NEEDS_DATA = {
    "04_drug_response.ipynb": (
        "gdsc_bulk_expression.h5ad",
        "drug_response_long.csv.gz",
        "cellbench_lung_lines_2batches.h5ad",
    ),
}
CELL_TIMEOUT_S = 1200  # per cell: a cell that hangs fails its notebook, not the whole run


# --- what each tutorial's text states about its results, checked on the run's namespace ---


def _ari(truth, pred) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(truth, pred)


def _claims_integration(ns: dict) -> dict:
    adata, pca, metrics = ns["adata"], ns["pca"], ns["metrics"]
    scdl_ari = _ari(adata.obs["cell_type"], adata.obs["scdl_cluster"])
    pca_ari = _ari(adata.obs["cell_type"], pca.obs["leiden"])
    # "its clusters follow the samples as much as the cell types (ARI about 0.46 against
    # about 0.7)"
    assert abs(pca_ari - 0.46) <= 0.05 and abs(scdl_ari - 0.7) <= 0.06, (scdl_ari, pca_ari)
    # "auto" never goes below 0.4
    assert adata.uns["scdl_auto"]["resolution"] >= 0.4
    # the 60-epoch run mixes the samples better than PCA and scores below Harmony's 0.754
    assert metrics.loc["X_scdl", "Batch correction"] > metrics.loc["X_pca", "Batch correction"]
    assert metrics.loc["X_pca", "Total"] < metrics.loc["X_scdl", "Total"] < 0.754
    return {"scdl ARI": scdl_ari, "PCA ARI": pca_ari, "total": metrics.loc["X_scdl", "Total"]}


def _claims_annotation(ns: dict) -> dict:
    cells, query = ns["cells"], ns["query"]
    shipped = (cells.obs["scdl_cell_type"] == cells.obs["cell_type"].astype(str)).mean()
    # the shipped annotator on its held-out cells: above the card's logistic regression (87.1%)
    unknown = cells.obs["scdl_cell_type_unknown"].mean()  # the annotator's design rate: 5%
    assert shipped > 0.871 and unknown <= 0.05, (shipped, unknown)
    # own reference: "logistic regression does as well"
    own = (query.obs["scdl_cell_type"] == query.obs["cell_type"].astype(str)).mean()
    assert abs(own - ns["right"].mean()) <= 0.03, (own, ns["right"].mean())
    # without B cells: "it calls most of the query's B cells Unknown"
    is_b, unknown = ns["is_b"], ns["unknown"]
    assert unknown[is_b].mean() > 0.5 and unknown[~is_b].mean() <= 0.05
    return {"shipped": shipped, "own": own, "B Unknown": unknown[is_b].mean()}


def _claims_contrastive(ns: dict) -> dict:
    top = ns["adata"].uns["X_scdl_salient"]["salient_genes"]["gene"].head(10).tolist()
    # "interferon-stimulated genes (ISG15, IFIT1/3, IFI6, MX1, ...) come first"
    assert {"ISG15", "IFIT1", "IFIT3", "IFI6", "MX1"} <= set(top), top
    # "a Wilcoxon test of stimulated against control cells finds most of the same genes"
    shared = len(ns["wilcoxon"] & ns["salient"])
    assert shared > 25, shared
    return {"top 5": top[:5], "shared with Wilcoxon": shared}


def _claims_drug_response(ns: dict) -> dict:
    predicted, measured = ns["predicted"], ns["measured"]
    # "HCC827 is the lowest predicted line for all three inhibitors"
    lowest = predicted[ns["egfr"]].idxmin().tolist()
    assert lowest == ["HCC827"] * len(ns["egfr"]), lowest
    # "across all drugs, predictions track the measured values"
    from scipy.stats import spearmanr

    rho, baseline = {}, {}
    drug_mean = ns["bulk"].obsm["ln_ic50"].mean()
    for line in predicted.index:
        ok = measured.loc[line].notna()
        rho[line] = spearmanr(measured.loc[line, ok], predicted.loc[line, ok])[0]
        x = measured.loc[line, ok]
        baseline[line] = spearmanr(x, drug_mean.reindex(x.index), nan_policy="omit")[0]
    assert min(rho.values()) > 0.5, rho
    # "predicting every drug's mean ln IC50 over the training lines agrees as well (better on
    # NCI-H1975)"
    assert all(abs(rho[k] - baseline[k]) < 0.05 for k in rho), (rho, baseline)
    assert baseline["NCIH1975"] > rho["NCIH1975"], (rho, baseline)
    return {"Spearman per line": rho, "drug-mean baseline": baseline}


def _claims_reference_mapping(ns: dict) -> dict:
    mapped, projected = ns["accuracy"], ns["right"].mean()
    # "most query cells fall onto the matching reference cell types"; "here the simple
    # projection transfers labels better": the text says so, so a change that reverses it
    # must change the text too
    assert mapped > 0.8 and projected >= mapped, (mapped, projected)
    return {"mapped": mapped, "PCA projection": projected}


CLAIMS = {
    "01_integration.ipynb": _claims_integration,
    "02_annotation.ipynb": _claims_annotation,
    "03_contrastive.ipynb": _claims_contrastive,
    "04_drug_response.ipynb": _claims_drug_response,
    "05_reference_mapping.ipynb": _claims_reference_mapping,
}


@contextmanager
def time_limit(seconds: int):
    """Raise TimeoutError in the cell running after ``seconds`` (where SIGALRM exists)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"the cell ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """An IPython shell of this process, with its history kept in memory (nothing written to
    the user's ~/.ipython), cleared when the module ends so no later code finds it."""
    import matplotlib
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    matplotlib.use("Agg")  # figures are drawn but not shown or encoded
    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"  # tracebacks read plainly in pytest's report
    ipython_dir = tmp_path_factory.mktemp("ipython")
    main = sys.modules["__main__"]  # the shell installs its own namespace as __main__
    shell = InteractiveShell.instance(config=config, ipython_dir=str(ipython_dir))
    yield shell
    shell.reset(new_session=True)
    InteractiveShell.clear_instance()
    sys.modules["__main__"] = main


def test_every_tutorial_is_tested():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    assert set(NEEDS_DATA) <= {p.name for p in NOTEBOOKS}
    assert set(CLAIMS) == {p.name for p in NOTEBOOKS}


PLOTS = ("scdl.pl.", "sc.pl.", "plt.show(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_figures_are_there(path):
    """The rendered pages show the committed outputs: a notebook executed with a non-interactive
    backend (``MPLBACKEND=Agg``) keeps no figure, and its text then describes plots that are
    not there."""
    nb = nbformat.read(path, as_version=4)
    missing = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and any(p in cell.source for p in PLOTS)
        and not any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
    ]
    assert not missing, f"{path.name}: plotting cells without a figure: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs(path, shell, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    for name in NEEDS_DATA.get(path.name, ()):
        if not (DATA / name).is_file():
            pytest.skip(f"{DATA / name} not available")
    monkeypatch.setenv("SCDL_DATA", str(DATA.resolve()))
    monkeypatch.chdir(tmp_path)  # files the notebook writes go here
    # plt.show() has nothing to show on Agg; in Jupyter the inline backend draws instead
    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")
    shell.reset(new_session=True)  # an empty namespace, as a fresh kernel has
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert cells, f"{path.name} has no code"
    t0 = time.perf_counter()
    try:
        for i, cell in enumerate(cells, start=1):
            with time_limit(CELL_TIMEOUT_S):
                result = shell.run_cell(cell.source, store_history=False)
            if not result.success:  # stop at the first cell that raises, as nbclient does
                error = result.error_before_exec or result.error_in_exec
                pytest.fail(
                    f"{path.name}, code cell {i}: {type(error).__name__}: {error}", pytrace=False
                )
        # the results the notebook's text states hold on this run
        found = CLAIMS[path.name](shell.user_ns)
    finally:
        plt.close("all")
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s; {found}")
