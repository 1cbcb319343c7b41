"""The tutorials run end to end.

Each notebook in ``tutorials/`` is executed from its committed source in memory (the
committed outputs are never overwritten), in a temporary working folder, with a kernel of
this Python. Notebooks that need ``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

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
CELL_TIMEOUT_S = 1200  # per cell; generous, as CI runs two suites side by side on two cores
KERNEL = "scdl-tutorial-test"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec running this interpreter, found first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    return root


def test_every_tutorial_is_tested():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    assert set(NEEDS_DATA) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs(path, kernel_env, tmp_path, monkeypatch):
    for name in NEEDS_DATA.get(path.name, ()):
        if not (DATA / name).is_file():
            pytest.skip(f"{DATA / name} not available")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
    monkeypatch.setenv("SCDL_DATA", str(DATA.resolve()))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures are drawn but not encoded
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(tmp_path)}},  # files the notebook writes go here
    )
    t0 = time.perf_counter()
    try:
        client.execute()  # stops at the first cell that raises (allow_errors=False)
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell raised {e.ename}: {e.evalue}", pytrace=False)
    elapsed = time.perf_counter() - t0
    print(f"{path.name}: {elapsed:.0f} s")
