"""Fixtures: real data from ../shared/data (skipped when absent) and the bundled Kang set."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

# One thread per test process, set before torch and numba are imported: the suite runs as two
# workers (pyproject's addopts), and on two cores torch's default two threads ran these small
# models slower than one (drug + annotator tests: 493 s on two threads, 403 s on one, 285 s as
# two one-thread workers). numba's count too: its first parallel call (scanpy's neighbours)
# starts a team of one thread per core in the OpenMP runtime torch shares, whose spinning
# threads took the other worker's core (the whole suite: 41 min instead of about 11). A count
# the caller set is kept.
for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

DATA = Path(os.environ.get("SCDL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    """The tutorials run last: they run in this process (see test_tutorials.py), reusing what
    the other tests compiled, and the settings a notebook changes then reach no other test."""
    items.sort(key=lambda item: item.path.name == "test_tutorials.py")  # stable: order kept


# small, fast settings: tests check outcomes, not the defaults' full training budget
EPOCHS = 60


@pytest.fixture(scope="session")
def fresh_session() -> dict:
    """What a fresh Python session reports (``fresh_session.py``): one subprocess for the
    tests of imports, seeds and thread counts that need one."""
    import json
    import subprocess
    import sys

    script = Path(__file__).with_name("fresh_session.py")
    args = [sys.executable, str(script), str(DATA / "kang_pbmc_1.5k.h5ad")]
    # without a thread count in its environment (the suite's or the caller's), as a user's
    # session starts: numba then moves torch's count, which test_reliability checks scdl puts back
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def forked_processes_on_one_thread(monkeypatch):
    """Training processes forked by the test run one OpenMP thread each. libgomp (torch's CPU
    wheel) hangs a forked child that starts a team of 2+ threads after its parent used one, and
    a forked child keeps the parent's torch thread count (Lightning sets cores // 2 only where
    ``OMP_NUM_THREADS`` is unset): on 4+ cores the tests hung. The count is put back after."""
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def session_part(report: dict, name: str) -> dict:
    """One part of ``fresh_session``'s report; its error, if it raised, fails the test."""
    part = report[name]
    assert "error" not in part, part.get("error")
    if "skipped" in part:
        pytest.skip(part["skipped"])
    return part


def read_shared(name: str) -> ad.AnnData:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return ad.read_h5ad(path)


def kang_reference_query(n_top_genes: int = 2000) -> tuple[ad.AnnData, ad.AnnData]:
    """Kang 2k (reference, 7 types) and Kang 1.5k (query: the same study, other processing) on
    the reference's most variable genes among those both hold (raw counts)."""
    import scanpy as sc

    ref = read_shared("kang_pbmc_2k_celltypes.h5ad")
    query = read_shared("kang_pbmc_1.5k.h5ad")
    genes = ref.var_names.intersection(query.var_names)
    ref, query = ref[:, genes].copy(), query[:, genes].copy()
    hv = sc.pp.highly_variable_genes(
        ref, flavor="seurat_v3", n_top_genes=n_top_genes, inplace=False
    )
    keep = genes[hv["highly_variable"].to_numpy()]
    return ref[:, keep].copy(), query[:, keep].copy()


@pytest.fixture(scope="session")
def kang() -> ad.AnnData:
    """Bundled Kang PBMCs: 1,556 cells, 4 samples, 5 cell types (raw counts)."""
    import scdl

    return scdl.datasets.kang_pbmc()


@pytest.fixture()
def kang_copy(kang) -> ad.AnnData:
    return kang.copy()


@pytest.fixture(scope="session")
def kang_integrated(kang):
    """Kang with a VAE trained once for the session (latent in obsm['X_scdl'])."""
    import scdl

    adata = kang.copy()
    model = scdl.tl.integrate(adata, batch_key="sample", max_epochs=EPOCHS, progress_bar=False)
    return adata, model


def snapshot(adata: ad.AnnData) -> dict:
    """Everything a failing call must leave unchanged, copied."""
    from scipy import sparse

    def dense(x):
        if hasattr(x, "to_memory"):  # backed sparse dataset
            x = x.to_memory()
        return x.toarray() if sparse.issparse(x) else np.asarray(x)

    import copy

    return {
        "X_type": (type(adata.X), getattr(adata.X, "dtype", None)),
        "X": dense(adata.X).copy(),
        "layers": {k: dense(v).copy() for k, v in adata.layers.items()},
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: dense(v).copy() for k, v in adata.obsm.items()},
        "obsp": {k: dense(v).copy() for k, v in adata.obsp.items()},
        "varm": {k: dense(v).copy() for k, v in adata.varm.items()},
        "raw": None
        if adata.raw is None
        else (dense(adata.raw.X).copy(), adata.raw.var_names.copy()),
        "uns_keys": sorted(adata.uns.keys()),
        "uns": copy.deepcopy(dict(adata.uns)),
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
    }


def assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    now = snapshot(adata)
    np.testing.assert_array_equal(now["X"], snap["X"])
    assert now["layers"].keys() == snap["layers"].keys()
    for k in snap["layers"]:
        np.testing.assert_array_equal(now["layers"][k], snap["layers"][k])
    assert now["obs"].equals(snap["obs"])
    assert now["var"].equals(snap["var"])
    for slot in ("obsm", "obsp", "varm"):
        assert now[slot].keys() == snap[slot].keys(), slot
        for k in snap[slot]:
            # NaN equals NaN: a refused embedding may hold NaN and must keep them
            np.testing.assert_array_equal(now[slot][k], snap[slot][k], err_msg=f"{slot}[{k!r}]")
            assert now[slot][k].dtype == snap[slot][k].dtype, f"{slot}[{k!r}] dtype"
    assert (now["raw"] is None) == (snap["raw"] is None), "raw"
    if snap["raw"] is not None:
        np.testing.assert_array_equal(now["raw"][0], snap["raw"][0])
        assert now["raw"][1].equals(snap["raw"][1])
    assert now["uns_keys"] == snap["uns_keys"]
    assert now["X_type"] == snap["X_type"]
    _assert_same(now["uns"], snap["uns"], "uns")
    assert now["obs_names"].equals(snap["obs_names"])
    assert now["var_names"].equals(snap["var_names"])


def _assert_same(a, b, where: str) -> None:
    """Deep equality of uns-like nested dicts/arrays/frames (NaN equals NaN)."""
    import pandas as pd

    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, pd.DataFrame | pd.Series):
        assert a.equals(b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def as_saved_before_config_checksum(folder) -> None:
    """Make a save look like one written before the config's checksum entered the weights'
    header (weights rewritten without it, the config's weights checksum updated), so that a
    test may edit config.json as an older scdl wrote it."""
    import json

    from safetensors.torch import load_file, save_file

    from scdl.datasets import sha256sum

    folder = Path(folder)
    weights = folder / "model.safetensors"
    save_file(load_file(weights), weights)
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = sha256sum(weights)
    (folder / "config.json").write_text(json.dumps(config))
