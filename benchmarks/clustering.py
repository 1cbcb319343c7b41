"""Clustering benchmark: Leiden on the scdl VAE space vs scanpy's PCA + Leiden.

Adjusted Rand index (and NMI) of the clusters against known cell types, at the same Leiden
resolutions and neighbour count, on real data. Cells labelled "NA" are left out of scoring.

    python benchmarks/clustering.py
"""

from __future__ import annotations

import argparse
import warnings

import anndata as ad
import pandas as pd
from _common import DATA, measure, need

warnings.filterwarnings("ignore")

# file, label key, batch key for scdl (None = single-batch embedding)
DATASETS = {
    "pbmc7k": ("pbmc_7k_200genes.h5ad", "cell_type", None),
    "kang2k": ("kang_pbmc_2k_celltypes.h5ad", "cell_type", "condition"),
    "kang1.5k": ("kang_pbmc_1.5k.h5ad", "cell_type", "sample"),
}
RESOLUTIONS = (0.5, 1.0)


def scanpy_pca(adata: ad.AnnData) -> None:
    import scanpy as sc

    tmp = adata.copy()
    sc.pp.filter_genes(tmp, min_cells=1)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    if tmp.n_vars > 2000:
        sc.pp.highly_variable_genes(tmp, n_top_genes=2000, subset=True)
    sc.pp.pca(tmp, n_comps=min(50, tmp.n_vars - 1), random_state=0)
    adata.obsm["X_pca"] = tmp.obsm["X_pca"]


def run(name: str, seed: int) -> pd.DataFrame:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    import scdl

    fname, label_key, batch_key = DATASETS[name]
    adata = ad.read_h5ad(need(DATA / fname))
    rows = []
    with measure() as t_pca:
        scanpy_pca(adata)
    with measure() as t_vae:
        scdl.tl.integrate(adata, batch_key=batch_key, random_state=seed, progress_bar=False)
    keep = adata.obs[label_key].astype(str) != "NA"
    for rep, cost in (("X_pca", t_pca), ("X_scdl", t_vae)):
        for res in RESOLUTIONS:
            key = f"leiden_{rep}_{res}"
            scdl.tl.cluster(adata, use_rep=rep, resolution=res, key_added=key, random_state=seed)
            truth, pred = adata.obs[label_key][keep], adata.obs[key][keep]
            rows.append(
                {
                    "dataset": f"{name} ({adata.n_obs} cells)",
                    "space": "scanpy PCA (50)"
                    if rep == "X_pca"
                    else f"scdl VAE ({'batch=' + batch_key if batch_key else 'no batch'})",
                    "resolution": res,
                    "n_clusters": pred.nunique(),
                    "ARI": adjusted_rand_score(truth, pred),
                    "NMI": normalized_mutual_info_score(truth, pred),
                    "embed_seconds": cost["seconds"],
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = pd.concat([run(d, args.seed) for d in args.datasets], ignore_index=True)
    pd.set_option("display.width", 200)
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nARI scdl / PCA per dataset and resolution:")
    for (d, r), t in out.groupby(["dataset", "resolution"], sort=False):
        a = t.set_index(t["space"].str.startswith("scdl"))["ARI"]
        print(f"  {d} res={r}: {a[True]:.3f} vs {a[False]:.3f} (x{a[True] / a[False]:.2f})")


if __name__ == "__main__":
    main()
