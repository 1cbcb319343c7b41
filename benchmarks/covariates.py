"""Covariates beside the batch: scdl's VAE against scvi-tools' SCVI on the same inputs.

scvi-tools users register per-cell numbers (total counts, genes detected, percentage of
ribosomal counts) as ``continuous_covariate_keys``, in their raw units. For each labelled set
with batches, each covariate set and seed, both models train on the same 2,000 genes for the
same epochs; printed: kNN purity of the labels (15 neighbours), the labels' silhouette and
batch mixing (normalised entropy of batches among 30 neighbours), with scdl's ratio to SCVI.

    python benchmarks/covariates.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from _common import DATA, need
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

SETS = {
    # name: (file, batch key, label key)
    "kang1.5k": ("kang_pbmc_1.5k.h5ad", "sample", "cell_type"),
    "cellbench3": ("cellbench_lung_5lines_3plates.h5ad", "batch", "cell_line"),
}
COVARIATES = {
    "none": [],
    "total counts": ["total_counts"],
    "genes detected": ["n_genes"],
    "% ribosomal": ["pct_ribo"],
}


def load(name: str) -> tuple[ad.AnnData, str, str]:
    import scanpy as sc

    file, batch, label = SETS[name]
    a = ad.read_h5ad(need(DATA / file))
    if "demuxlet" in a.obs:  # CellBench: singlets only
        a = a[a.obs["demuxlet"].astype(str) == "SNG"].copy()
    a = a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()
    x = a.X
    a.obs["total_counts"] = np.asarray(x.sum(1)).ravel()
    a.obs["n_genes"] = np.asarray((x > 0).sum(1)).ravel().astype(np.int64)
    ribo = a.var_names.str.match(r"^RP[LS]\d")
    a.obs["pct_ribo"] = np.asarray(x[:, ribo].sum(1)).ravel() / a.obs["total_counts"] * 100
    a.obs[batch] = a.obs[batch].astype(str).astype("category")
    if a.n_vars > 2000:
        hvg = sc.pp.highly_variable_genes(
            a, n_top_genes=2000, flavor="seurat_v3", batch_key=batch, inplace=False
        )
        a = a[:, hvg["highly_variable"].to_numpy()].copy()
    return a, batch, label


def scores(z: np.ndarray, labels, batches) -> dict:
    labels, batches = np.asarray(labels), np.asarray(batches)
    idx = NearestNeighbors(n_neighbors=31).fit(z).kneighbors(z, return_distance=False)[:, 1:]
    purity = float((labels[idx[:, :15]] == labels[:, None]).mean())
    cats, codes = np.unique(batches, return_inverse=True)
    share = np.stack([(codes[idx] == c).mean(1) for c in range(len(cats))], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(share > 0, share * np.log(share), 0.0), 1)
    return {
        "purity": purity,
        "silhouette": float(silhouette_score(z, labels)),
        "mixing": float(ent.mean() / np.log(len(cats))),
    }


def run(a, batch, label, keys, method, seed, epochs) -> dict:
    import scvi

    from scdl.models import VAE

    cls = VAE if method == "scdl" else scvi.model.SCVI
    a = a.copy()
    scvi.settings.seed = seed
    cls.setup_anndata(a, batch_key=batch, continuous_covariate_keys=keys or None)
    model = cls(a, n_latent=10)
    t = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    out = scores(model.get_latent_representation(), a.obs[label], a.obs[batch])
    return {**out, "seconds": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--datasets", nargs="+", default=list(SETS))
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=["scdl", "SCVI"])
    p.add_argument("--out", help="CSV of every run")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("scvi", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    for name in args.datasets:
        a, batch, label = load(name)
        print(f"{name}: {a.n_obs} cells x {a.n_vars} genes, batch {batch!r}", flush=True)
        for cov, keys in COVARIATES.items():
            for seed in args.seeds:
                for method in args.methods:
                    r = run(a, batch, label, keys, method, seed, args.epochs)
                    rows.append(
                        {"dataset": name, "covariates": cov, "seed": seed, "method": method, **r}
                    )
                    print(
                        f"  {cov:15s} seed {seed} {method:5s} "
                        + "  ".join(f"{k} {v:.3f}" for k, v in r.items()),
                        flush=True,
                    )
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    mean = df.groupby(["dataset", "covariates", "method"], sort=False)[
        ["purity", "silhouette", "mixing"]
    ].agg(["mean", "std"])
    print("\nmean (sd over seeds)")
    print(mean.round(3).to_string())
    if set(args.methods) >= {"scdl", "SCVI"}:
        m = (
            df.groupby(["dataset", "covariates", "method"], sort=False)[
                ["purity", "silhouette", "mixing"]
            ]
            .mean()
            .unstack("method")
        )
        ratio = pd.DataFrame(
            {k: m[(k, "scdl")] / m[(k, "SCVI")] for k in ("purity", "silhouette", "mixing")}
        )
        print("\nscdl / SCVI (means)")
        print(ratio.round(3).to_string())


if __name__ == "__main__":
    main()
