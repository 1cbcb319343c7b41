"""Cost of ``scdl.tl.cluster`` beside scanpy's clustering of a PCA, on real PBMCs.

Kang 2018's 14k PBMCs (every gene; batch = condition, control / stimulated), resampled with
replacement to each size. A VAE latent is trained once per size (``tl.integrate`` with
``batch_key="condition"``, a few epochs: the cost of clustering does not depend on how well the
latent is trained), then on the same AnnData, one core:

- **scanpy**: the usual steps on counts (``normalize_total``, ``log1p``, 2,000 HVGs,
  ``pca``, ``neighbors`` with 15 neighbours, Leiden at 1.0, igraph);
- **scanpy + Harmony**: the same with the PCA harmonised over the condition (harmonypy) before
  the graph, the peer of ``tl.cluster``'s default on a batch latent;
- **scdl**: ``tl.cluster`` at 1.0 with its default (the latent's 30-neighbour graph averaged
  with a harmonised PCA's, the PCA computed from the counts), with ``pca_key=None`` (the
  latent's graph alone), with ``resolution="auto"`` (11 Leiden runs and silhouettes), and with
  its default on the same file read ``backed="r"`` (the PCA reads the matrix in chunks of rows).

Printed: wall seconds and the RSS increase over each step, their ratios to scanpy's, and the
increase as a multiple of the count matrix's CSR bytes. At each size scanpy's steps run once
unmeasured first (numba compiles pynndescent's paths, which scanpy's kNN uses from 4,096 cells, on
first use).

    python benchmarks/cluster_cost.py                    # 14k and 50k cells
    python benchmarks/cluster_cost.py --cells 14000
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _common import measure, write_resampled_kang

warnings.filterwarnings("ignore")


def scanpy_steps(adata, harmony: bool) -> None:
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
    sc.pp.pca(a, n_comps=50, random_state=0)
    rep = "X_pca"
    if harmony:
        import harmonypy

        out = harmonypy.run_harmony(
            a.obsm["X_pca"].T, a.obs, "condition", random_state=0, verbose=False
        )
        a.obsm["X_harmony"] = np.asarray(out.Z_corr, dtype=np.float32)
        rep = "X_harmony"
    sc.pp.neighbors(a, n_neighbors=15, use_rep=rep, random_state=0)
    sc.tl.leiden(a, resolution=1.0, flavor="igraph", n_iterations=2, directed=False)


def run(n_cells: int, epochs: int) -> pd.DataFrame:
    import anndata as ad

    import scdl

    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "kang.h5ad"
    write_resampled_kang(n_cells, path, hvg=False)
    adata = ad.read_h5ad(path)
    scdl.tl.integrate(
        adata, batch_key="condition", max_epochs=epochs, random_state=0, progress_bar=False
    )
    adata.write_h5ad(path)  # with the latent, for the backed run
    backed = ad.read_h5ad(path, backed="r")
    csr_mib = (adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes) / 2**20
    steps = {
        "scanpy (PCA graph)": lambda: scanpy_steps(adata, harmony=False),
        "scanpy + Harmony": lambda: scanpy_steps(adata, harmony=True),
        "scdl tl.cluster (default)": lambda: scdl.tl.cluster(adata, key_added="c"),
        "scdl tl.cluster(pca_key=None)": lambda: scdl.tl.cluster(adata, pca_key=None),
        'scdl tl.cluster(resolution="auto")': lambda: scdl.tl.cluster(adata, resolution="auto"),
        "scdl tl.cluster (default), backed": lambda: scdl.tl.cluster(backed),
    }
    # unmeasured: numba compiles pynndescent's paths (scanpy's kNN from 4,096 cells) on first use
    scanpy_steps(adata, harmony=False)
    rows = []
    for name, step in steps.items():
        with measure() as m:
            step()
        rows.append({"cells": n_cells, "step": name, "s": m["seconds"], "MiB": m["peak_mib"]})
        print(f"{n_cells} {name}: {m['seconds']:.1f} s, +{m['peak_mib']:.0f} MiB", flush=True)
    backed.file.close()
    tmp.cleanup()
    out = pd.DataFrame(rows)
    out["s / scanpy"] = out["s"] / out["s"].iloc[0]
    out["MiB / scanpy"] = out["MiB"] / max(out["MiB"].iloc[0], 1.0)
    out["MiB / CSR"] = out["MiB"] / csr_mib
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", type=int, default=[14000, 50000])
    p.add_argument("--epochs", type=int, default=3, help="VAE epochs (the latent's quality)")
    args = p.parse_args()
    table = pd.concat([run(n, args.epochs) for n in args.cells])
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
