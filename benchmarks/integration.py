"""Integration benchmark: scdl VAE vs scvi-tools SCVI vs Harmony vs unintegrated PCA.

Every method gets the same cells and the same 2,000 highly variable genes (seurat_v3 on
counts, per batch; all of them where there are fewer). Scores are scib-metrics' (unscaled;
total = 0.4 batch + 0.6 bio). Datasets: muscat's Kang PBMCs (4 samples), CellBench's lung lines
(CEL-seq2 vs Drop-seq) and ``pbmc_crosslab``: Kang 2k and 10x PBMC 7k, two labs, on the 149
genes both files hold, labels mapped to PBMC 7k's (Kang's two monocyte types are one).

    python benchmarks/integration.py            # every dataset
    python benchmarks/integration.py --datasets kang
"""

from __future__ import annotations

import argparse
import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from _common import DATA, hvg_subset, load_crosslab, measure, need

warnings.filterwarnings("ignore")

DATASETS = {
    "kang": ("kang_pbmc_1.5k.h5ad", "sample", "cell_type"),
    "cellbench": ("cellbench_lung_lines_2batches.h5ad", "batch", "cell_line"),
    # two labs' PBMCs (Kang 2018 2k + 10x PBMC 7k) on their 149 shared genes
    "pbmc_crosslab": (None, "source", "cell_type"),
}


def load(name: str) -> tuple[ad.AnnData, str, str]:
    fname, batch_key, label_key = DATASETS[name]
    if fname is None:
        return load_crosslab(), batch_key, label_key
    adata = ad.read_h5ad(need(DATA / fname))
    if "demuxlet" in adata.obs:  # doublets have no single true label
        adata = adata[adata.obs["demuxlet"] == "SNG"].copy()
    return adata, batch_key, label_key


def run(name: str, seed: int, scdl_kwargs: dict) -> pd.DataFrame:
    import harmonypy
    import scvi

    import scdl
    from scdl.data import unintegrated_pca

    adata, batch_key, label_key = load(name)
    adata = hvg_subset(adata, batch_key=batch_key)
    rows = {}

    with measure() as m:
        adata.obsm["PCA"] = unintegrated_pca(adata, n_comps=50)
    rows["PCA (unintegrated)"] = m

    with measure() as m:
        ho = harmonypy.run_harmony(
            adata.obsm["PCA"], adata.obs, batch_key, random_state=seed, verbose=False
        )
        z = np.asarray(ho.Z_corr)
        adata.obsm["Harmony"] = z if z.shape[0] == adata.n_obs else z.T
    rows["Harmony"] = m

    with measure() as m:
        scvi.settings.seed = seed
        ref = adata.copy()
        scvi.model.SCVI.setup_anndata(ref, batch_key=batch_key)
        model = scvi.model.SCVI(ref)
        model.train(enable_progress_bar=False)
        adata.obsm["scVI"] = model.get_latent_representation()
    m["epochs"] = int(model.history["elbo_train"].shape[0])
    rows["scVI (scvi-tools defaults)"] = m

    with measure() as m:
        scdl.tl.integrate(
            adata,
            batch_key=batch_key,
            key_added="scdl",
            random_state=seed,
            n_top_genes=None,
            progress_bar=False,
            **scdl_kwargs,
        )
    m["epochs"] = adata.uns["scdl"]["params"]["max_epochs"]
    rows["scdl VAE"] = m

    keys = {
        "PCA (unintegrated)": "PCA",
        "Harmony": "Harmony",
        "scVI (scvi-tools defaults)": "scVI",
        "scdl VAE": "scdl",
    }
    scores = scdl.tl.integration_metrics(
        adata,
        batch_key=batch_key,
        label_key=label_key,
        embeddings=list(keys.values()),
        pre_integrated="PCA",
        key_added=None,
    )
    table = pd.DataFrame(
        {
            "method": list(rows),
            "batch": [scores.loc[keys[r], "Batch correction"] for r in rows],
            "bio": [scores.loc[keys[r], "Bio conservation"] for r in rows],
            "total": [scores.loc[keys[r], "Total"] for r in rows],
            "seconds": [rows[r]["seconds"] for r in rows],
            "peak_MiB": [rows[r]["peak_mib"] for r in rows],
            "epochs": [rows[r].get("epochs", np.nan) for r in rows],
        }
    )
    table.insert(0, "dataset", f"{name} ({adata.n_obs} cells x {adata.n_vars} genes)")
    return table


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object ({{...}}), not {text!r}")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scdl-kwargs",
        type=_json_object,
        default={},
        help="JSON object of keyword arguments for scdl.tl.integrate, e.g. '{\"n_latent\": 20}'",
    )
    args = p.parse_args()
    tables = [run(d, args.seed, args.scdl_kwargs) for d in args.datasets]
    out = pd.concat(tables, ignore_index=True)
    pd.set_option("display.width", 200)
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nscdl / scVI (per dataset): total ratio, time ratio (lower is faster)")
    for d, t in out.groupby("dataset", sort=False):
        s = t.set_index("method")
        ours, scvi_ = s.loc["scdl VAE"], s.loc["scVI (scvi-tools defaults)"]
        print(
            f"  {d}: total x{ours.total / scvi_.total:.3f}, "
            f"time x{ours.seconds / scvi_.seconds:.2f}, "
            f"scdl - Harmony total {ours.total - s.loc['Harmony', 'total']:+.3f}"
        )


if __name__ == "__main__":
    main()
