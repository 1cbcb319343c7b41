"""The tutorials run end to end.

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
if not TUTORIALS.is_dir():  # e.g. tests run from an sdist
    pytest.skip("no tutorials/ folder", allow_module_level=True)
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
# files of ../shared/data each notebook reads (the others use data bundled with scdl)
NEEDS_DATA = {
    "04_drug_response.ipynb": (
        "gdsc_bulk_expression.h5ad",
        "drug_response_long.csv.gz",
        "cellbench_lung_lines_2batches.h5ad",
    ),
}
CELL_TIMEOUT_S = 1200  # per cell: a cell that hangs fails its notebook, not the whole run


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
    finally:
        plt.close("all")
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s")
