"""Shared helpers for the benchmark scripts: data location, gene selection, peak memory, and
runs of scdl and its peer in fresh processes."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

DATA = Path(os.environ.get("SCDL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def need(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(
            f"{path} not found: set SCDL_DATA to the folder holding the data files (e.g. "
            ".../shared/data)."
        )
    return path


# Kang 2k's labels in PBMC 7k's words (its two monocyte types are one there)
KANG_TO_PBMC7K = {
    "CD4T": "CD4+ T-cells",
    "CD8T": "CD8+ T-cells",
    "B": "B-cells",
    "NK": "NK cells",
    "CD14+Mono": "Monocytes",
    "FCGR3A+Mono": "Monocytes",
    "Dendritic": "Dendritic",
}


def kang2k_study_monocyte_labels(a) -> np.ndarray:
    """Kang 2k's ``cell_type`` with its monocytes' labels taken from the study's own.

    Kang 2k's labels (the scGen repository's) call most IFN-beta-stimulated CD14 monocytes
    FCGR3A+Mono (IFN-beta lowers CD14). A logistic regression trained on the study's labels
    of muscat's Kang monocytes (``kang_pbmc_1.5k.h5ad``: its two monocyte types, both
    conditions; log1p of counts per 10,000 over the genes both files hold, standardised;
    C = 0.01, chosen by 5-fold accuracy on those cells) relabels Kang 2k's monocytes; other
    types keep their labels. Why, and how well it agrees with the study: benchmarks/README.md
    ("Stop 45: Kang 2k's monocyte labels").
    """
    import anndata as ad
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from scdl.data import log_normalize_counts

    study = ad.read_h5ad(need(DATA / "kang_pbmc_1.5k.h5ad"))
    genes = study.var_names.intersection(a.var_names)

    def lognorm(b):  # normalised over the shared genes: the two files hold different genes
        return log_normalize_counts(b[:, genes].X).toarray()

    names = {"CD14+ Monocytes": "CD14+Mono", "FCGR3A+ Monocytes": "FCGR3A+Mono"}
    types = study.obs["cell_type"].astype(str)
    mono = types.isin(list(names)).to_numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    clf.fit(lognorm(study[mono]), types[mono].map(names).to_numpy())
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    kang_mono = np.isin(labels, list(names.values()))
    labels[kang_mono] = clf.predict(lognorm(a[kang_mono]))
    return labels


def read_pbmc7k():
    """10x PBMC 7k (200 genes) without types of fewer than 20 cells and without "NA";
    ``obs["cell_type"]`` as strings."""
    import anndata as ad

    p7 = ad.read_h5ad(need(DATA / "pbmc_7k_200genes.h5ad"))
    p7.obs["cell_type"] = p7.obs["cell_type"].astype(str)
    counts = p7.obs["cell_type"].value_counts()
    return p7[p7.obs["cell_type"].isin(counts.index[counts >= 20]) & (p7.obs["cell_type"] != "NA")]


def load_crosslab():
    """Kang 2k and PBMC 7k (types of >= 20 cells, no "NA") on their shared genes, labels
    harmonised, ``obs["source"]`` the file."""
    import anndata as ad

    kang = ad.read_h5ad(need(DATA / "kang_pbmc_2k_celltypes.h5ad"))
    kang.obs["cell_type"] = kang.obs["cell_type"].astype(str).map(KANG_TO_PBMC7K)
    p7 = read_pbmc7k()
    shared = kang.var_names.intersection(p7.var_names)
    parts = {"kang": kang[:, shared].copy(), "pbmc7k": p7[:, shared].copy()}
    for part in parts.values():
        part.obs = part.obs[["cell_type"]]
    adata = ad.concat(parts, label="source", index_unique="-")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    return adata


def hvg_subset(adata, *, batch_key: str | None = None, n_top_genes: int = 2000):
    """``adata`` on the genes scdl's ``tl`` functions would pick (expressed, seurat_v3 HVGs),
    so every method in a benchmark sees the same genes."""
    from scdl.data import check_counts
    from scdl.tl._hvg import select_genes

    totals = check_counts(adata).gene_totals
    genes = select_genes(adata, totals, layer=None, batch_key=batch_key, n_top_genes=n_top_genes)
    return adata[:, genes].copy()


def write_resampled_kang(n_cells: int, path: Path, *, hvg: bool, seed: int = 0) -> None:
    """Real Kang 2018 PBMC profiles (the 14k set; its 2,000 HVGs when ``hvg``, else every
    gene) resampled with replacement to ``n_cells``, written as an h5ad (CSR, float32)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    src = ad.read_h5ad(need(DATA / "kang_pbmc_14k.h5ad"))
    if hvg:
        src = hvg_subset(src, batch_key="condition")
        src = src[np.asarray(src.X.sum(1)).ravel() > 0].copy()
    idx = np.sort(np.random.default_rng(seed).integers(0, src.n_obs, n_cells))
    out = ad.AnnData(
        X=sparse.csr_matrix(src.X[idx], dtype=np.float32),
        obs=pd.DataFrame(
            {"condition": src.obs["condition"].to_numpy()[idx]},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=src.var_names),
    )
    out.obs["condition"] = out.obs["condition"].astype("category")
    out.write_h5ad(path)


@contextmanager
def measure(interval: float = 0.02, kernel_peak: bool = False):
    """Wall seconds and RSS over the block, sampled every ``interval`` s.

    Fills ``seconds``, ``base_mib`` (RSS at entry), ``peak_total_mib`` and ``peak_mib`` (the
    increase). ``kernel_peak`` also reads the kernel's high-water mark, which a sampler can
    miss a short spike of; use it in a fresh process (the mark covers the process's life).
    """
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        stop.set()
        th.join()
        top = max(peak[0], proc.memory_info().rss)
        if kernel_peak:
            import resource

            top = max(top, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out["base_mib"], out["peak_total_mib"] = base / 2**20, top / 2**20
        out["peak_mib"] = (top - base) / 2**20


def peak_in_fresh_processes(script: str, args: list[str], impls=("peer", "scdl")) -> None:
    """Run ``script --_run *args IMPL`` for each implementation in a fresh process (so the
    kernel's high-water mark is that run's), read the JSON row each prints last, and print the
    table with scdl's peak memory increase over the peer's."""
    import json
    import subprocess
    import sys

    import pandas as pd

    rows = []
    for impl in impls:
        out = subprocess.run(
            [sys.executable, script, "--_run", *args, impl], capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(f"the {impl} run failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows).set_index("impl")
    print(table.round(2).to_string())
    ratio = table.loc["scdl", "peak_increase_mib"] / table.loc["peer", "peak_increase_mib"]
    print(f"\npeak memory increase, scdl / peer: x{ratio:.2f}")


def read_and_step_peak(path: Path, step, warm_up=None) -> tuple:
    """``step`` run once on 512 cells of the h5ad at ``path`` (``warm_up`` instead, if given:
    the baseline then holds the libraries' fixed costs), then the file read and ``step`` run
    under :func:`measure` (kernel high-water mark). Returns the AnnData and the measurement."""
    import gc

    import anndata as ad
    import numpy as np

    whole = ad.read_h5ad(path, backed="r")
    small = whole[np.linspace(0, whole.n_obs - 1, 512).astype(int)].to_memory()
    whole.file.close()
    (warm_up or step)(small)
    del small
    gc.collect()
    with measure(interval=0.01, kernel_peak=True) as mem:
        adata = ad.read_h5ad(path)
        step(adata)
    return adata, mem


def peak_row(impl: str, adata, mem: dict, **extra) -> dict:
    """The JSON row a fresh-process run prints: the data's size and CSR bytes, the peak
    increase and its multiple of those bytes, plus ``extra``."""
    x = adata.X
    csr = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    return {
        "impl": impl,
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "seconds": mem["seconds"],
        "csr_mib": csr / 2**20,
        "peak_increase_mib": mem["peak_mib"],
        "increase_x_csr": mem["peak_mib"] * 2**20 / csr,
        **extra,
    }


def model_genes_peak_row(impl: str, adata, mem: dict, genes, **extra) -> dict:
    """:func:`peak_row` plus the CSR bytes of the query over a model's ``genes`` and the peak
    increase as a multiple of them."""
    x = adata.X[:, adata.var_names.get_indexer(genes)]
    query = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    return peak_row(
        impl,
        adata,
        mem,
        **extra,
        query_csr_mib=query / 2**20,
        increase_x_query=mem["peak_mib"] * 2**20 / query,
    )


def cells_also_in(a, b) -> np.ndarray:
    """Which of ``a``'s cells are also in ``b``: the same barcode (its nucleotides, without a
    file's suffix) and identical counts over the genes both hold. The Kang files share cells
    (104 of Kang 1.5k's are in Kang 2k), which a reference must not hold when the other file
    is its query."""
    import re

    from scipy import sparse

    def barcode(name: str) -> str:
        found = re.match(r"[ACGT]+", name)
        return found.group(0) if found else name

    genes = a.var_names.intersection(b.var_names)
    xa, xb = a[:, genes].X, b[:, genes].X
    xa = xa.tocsr() if sparse.issparse(xa) else sparse.csr_matrix(xa)
    xb = xb.tocsr() if sparse.issparse(xb) else sparse.csr_matrix(xb)
    where_b: dict[str, list[int]] = {}
    for j, name in enumerate(b.obs_names):
        where_b.setdefault(barcode(name), []).append(j)
    out = np.zeros(a.n_obs, dtype=bool)
    for i, name in enumerate(a.obs_names):
        for j in where_b.get(barcode(name), ()):
            if (xa[i] != xb[j]).nnz == 0:
                out[i] = True
                break
    return out
