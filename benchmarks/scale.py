"""Scale: one training epoch of the VAE on 100k and 1M cells x 2,000 genes, vs scvi-tools.

The cells are real Kang 2018 PBMC profiles (2,000 HVGs of the 14k set) resampled with
replacement to the target size and written to an h5ad (CSR, uncompressed). Each measurement
runs in a fresh process: read the file (in memory, or ``backed="r"`` for scdl's on-disk
path), register it, build the model (1 hidden layer of 128, 10 latent dims, NB, batch =
condition) and train one epoch (batch 128, 90% of the cells; the validation pass included).
Printed per run: cells/s of the epoch, the process's RSS before reading the data (after
imports and a warm-up training on 512 cells, so it holds the fixed costs of Lightning and
torch), its peak RSS over read + setup + training, and the increase as a multiple of the
CSR matrix's bytes (data + indices + indptr). Target: the increase stays within 2x the
CSR size (nothing densifies the whole matrix); for a backed file it is far below 1x.

    python benchmarks/scale.py                       # 100k and 1M, scdl and scvi-tools
    python benchmarks/scale.py --cells 100000 --runs scdl:memory scdl:backed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
from _common import measure, write_resampled_kang

warnings.filterwarnings("ignore")


def run_one(path: Path, impl: str, backed: bool) -> dict:
    """One epoch in this process; returns seconds, cells/s and memory figures."""
    import gc

    import anndata as ad
    import numpy as np
    import scvi
    import torch

    import scdl

    scvi.settings.seed = 0
    arch = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "nb"}

    def build(adata):
        if impl == "scvi":
            scvi.model.SCVI.setup_anndata(adata, batch_key="condition")
            return scvi.model.SCVI(
                adata,
                **arch,
                encode_covariates=True,
                use_layer_norm="both",
                use_batch_norm="none",
            )
        scdl.models.VAE.setup_anndata(adata, batch_key="condition")
        return scdl.models.VAE(adata, **arch)

    # warm-up on 512 cells: the baseline then holds what any training holds whatever the
    # data size (Lightning, torch's allocator and thread pools), so the increase is the data's
    whole = ad.read_h5ad(path, backed="r")
    small = whole[np.linspace(0, whole.n_obs - 1, 512).astype(int)].to_memory()
    whole.file.close()
    small = small[:, np.asarray(small.X.sum(0)).ravel() > 0].copy()
    build(small).train(max_epochs=1, batch_size=128, enable_progress_bar=False)
    del small
    gc.collect()
    with measure(interval=0.01, kernel_peak=True) as mem:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
        model = build(adata)
        t0 = time.perf_counter()
        model.train(max_epochs=1, batch_size=128, enable_progress_bar=False)
        seconds = time.perf_counter() - t0
    if backed:
        import h5py

        with h5py.File(path, "r") as f:
            csr_bytes = sum(
                f["X"][k].size * f["X"][k].dtype.itemsize for k in ("data", "indices", "indptr")
            )
    else:
        x = adata.X
        csr_bytes = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    elbo = float(model.history["elbo_train"].iloc[-1, 0])
    return {
        "cells": adata.n_obs,
        "impl": impl,
        "backed": backed,
        "seconds": seconds,
        "cells_per_s": adata.n_obs / seconds,
        "rss_base_mib": mem["base_mib"],
        "rss_peak_mib": mem["peak_total_mib"],
        "csr_mib": csr_bytes / 2**20,
        "increase_x_csr": mem["peak_mib"] * 2**20 / csr_bytes,
        "elbo_train": elbo,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "scdl_scale"
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=["scdl:memory", "scvi:memory", "scdl:backed"],
        choices=["scdl:memory", "scvi:memory", "scdl:backed"],
        help="which of scdl:memory, scvi:memory, scdl:backed to run",
    )
    p.add_argument("--_run", nargs=3, metavar=("PATH", "IMPL", "BACKED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._run:
        path, impl, backed = args._run
        print("RESULT " + json.dumps(run_one(Path(path), impl, backed == "1")))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.cells:
        path = args.workdir / f"kang_resampled_{n}.h5ad"
        if not path.exists():
            t0 = time.perf_counter()
            write_resampled_kang(n, path, hvg=True)
            print(
                f"wrote {path} ({path.stat().st_size / 2**20:,.0f} MiB) in "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        runs = [(r.split(":")[0], r.split(":")[1] == "backed") for r in args.runs]
        for impl, backed in runs:
            cmd = [sys.executable, __file__, "--_run", str(path), impl, "1" if backed else "0"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                print(f"{impl} backed={backed} on {n} cells failed:\n{out.stderr[-3000:]}")
                continue
            rows.append(json.loads(line[0][7:]))
            r = rows[-1]
            print(
                f"{n:>9,} cells  {impl:5s} {'backed' if backed else 'memory'}: "
                f"{r['cells_per_s']:,.0f} cells/s, peak RSS {r['rss_peak_mib']:,.0f} MiB "
                f"(+{r['increase_x_csr']:.2f}x CSR)",
                flush=True,
            )
    df = pd.DataFrame(rows)
    df["mode"] = df["backed"].map({True: "backed", False: "memory"})
    table = df.set_index(["cells", "impl", "mode"])[
        [
            "seconds",
            "cells_per_s",
            "csr_mib",
            "rss_base_mib",
            "rss_peak_mib",
            "increase_x_csr",
            "elbo_train",
        ]
    ]
    print("\n" + table.to_string(float_format=lambda v: f"{v:,.2f}"))
    for n in sorted(df["cells"].unique()):
        sub = df[(df["cells"] == n) & (df["mode"] == "memory")].set_index("impl")
        if {"scdl", "scvi"} <= set(sub.index):
            s, r = sub.loc["scdl"], sub.loc["scvi"]
            rss = (s.rss_peak_mib - s.rss_base_mib) / max(r.rss_peak_mib - r.rss_base_mib, 1)
            print(
                f"{n:,} cells in memory, scdl / scVI: cells/s "
                f"x{s.cells_per_s / r.cells_per_s:.2f}, peak RSS increase x{rss:.2f}"
            )
    ok = (df["increase_x_csr"] <= 2).all()
    print(f"\npeak RSS increase within 2x the CSR size in every run: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
