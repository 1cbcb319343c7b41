"""Clustering benchmark: scdl (resolution "auto" and 1.0) vs PCA + Leiden and scVI + Leiden.

Every labelled set in shared/data, seeds 0-2. For each representation (scanpy PCA, scvi-tools
SCVI at scdl's epochs, scdl VAE) a neighbour graph (scanpy's 15 neighbours for PCA and scVI,
``scdl.tl.cluster``'s default for scdl), Leiden over a resolution grid, and ARI / NMI of the
clusters against the annotated types. Reported per set: scdl at ``resolution="auto"`` (label
free, ``scdl.tl.cluster``) and at 1.0; PCA and scVI at 1.0 and at their best grid resolution
(the oracle, which needs the labels). Cells labelled "NA" and CellBench doublets are left out.
On sets with batches, also the share of cells in clusters over 90% one batch (a type split by
batch or lab raises it).

    python benchmarks/clustering.py                       # everything (slow: 36 trainings)
    python benchmarks/clustering.py --datasets kang1.5k --seeds 0
    python benchmarks/clustering.py --cache /tmp/clust    # keep embeddings between runs
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _common import DATA, hvg_subset, kang2k_study_monocyte_labels, load_crosslab, need

warnings.filterwarnings("ignore")

# file, label key, batch key (None = one batch)
DATASETS = {
    "pbmc7k": ("pbmc_7k_200genes.h5ad", "cell_type", None),
    "kang2k": ("kang_pbmc_2k_celltypes.h5ad", "cell_type", "condition"),
    "kang1.5k": ("kang_pbmc_1.5k.h5ad", "cell_type", "sample"),
    "cellbench2": ("cellbench_lung_lines_2batches.h5ad", "cell_line", "batch"),
    "cellbench3": ("cellbench_lung_5lines_3plates.h5ad", "cell_line", "batch"),
    # two labs' PBMCs (Kang 2k + PBMC 7k, shared genes, harmonised labels): does a shared type
    # stay one cluster across labs?
    "crosslab": (None, "cell_type", "source"),
}
# Many-type stress sets (no labelled set above has more than 7 types; the held-out tissues have
# 10-16): Kang 2k's PBMCs of one condition (7 types) + CellBench 3 plates' singlets (5 lines),
# on their shared genes, with the CellBench counts thinned to the PBMCs' median depth so that
# depth alone does not split the two sources. One dataset, no batch key (source and types are
# confounded: a batch key would ask the model to mix PBMCs with lung lines). 12 types.
MERGED = {"merged12": "control", "merged12s": "stimulated"}
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)
SPACES = ("PCA", "scVI", "scdl", "Harmony")  # Harmony: batch sets only
PEER_NEIGHBORS = 15  # scanpy's default graph for PCA + Leiden and scVI + Leiden


def load(name: str) -> tuple[ad.AnnData, str, str | None]:
    if name in MERGED:
        return load_merged(MERGED[name]), "cell_type", None
    return _load_file(name)


def _load_file(name: str) -> tuple[ad.AnnData, str, str | None]:
    fname, label_key, batch_key = DATASETS[name]
    if fname is None:
        return load_crosslab(), label_key, batch_key
    adata = ad.read_h5ad(need(DATA / fname))
    if "demuxlet" in adata.obs:  # doublets have no single true label
        adata = adata[adata.obs["demuxlet"] != "DBL"].copy()
    if name == "kang2k":  # the study's monocyte labels, as annotation.py (stop 45)
        adata.obs[label_key] = kang2k_study_monocyte_labels(adata)
    return adata, label_key, batch_key


def load_merged(condition: str) -> ad.AnnData:
    """Kang 2k cells of ``condition`` + CellBench 3 plates' singlets on shared genes (see
    ``MERGED``), CellBench thinned (binomial, seed 0) to the PBMCs' median total count."""
    from scipy import sparse

    pbmc, _, _ = _load_file("kang2k")
    lung, _, _ = _load_file("cellbench3")
    pbmc = pbmc[pbmc.obs["condition"] == condition]
    genes = pbmc.var_names.intersection(lung.var_names, sort=False)
    pbmc, lung = pbmc[:, genes].copy(), lung[:, genes].copy()
    target = float(np.median(np.asarray(pbmc.X.sum(axis=1)).ravel()))
    counts = sparse.csr_matrix(lung.X).astype(np.int64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    p = np.minimum(1.0, target / np.maximum(totals, 1))
    rng = np.random.default_rng(0)
    counts.data = rng.binomial(counts.data, np.repeat(p, np.diff(counts.indptr)))
    counts.eliminate_zeros()
    lung.X = counts.astype(np.float32)
    out = ad.AnnData(
        X=sparse.vstack([sparse.csr_matrix(pbmc.X), lung.X]).tocsr().astype(np.float32),
        obs=pd.DataFrame(
            {
                "cell_type": np.concatenate(
                    [pbmc.obs["cell_type"].astype(str), lung.obs["cell_line"].astype(str)]
                ),
                "source": ["kang2k"] * pbmc.n_obs + ["cellbench3"] * lung.n_obs,
            },
            index=[f"pbmc_{i}" for i in pbmc.obs_names] + [f"lung_{i}" for i in lung.obs_names],
        ),
        var=pd.DataFrame(index=genes),
    )
    return out


def scanpy_pca(adata: ad.AnnData) -> np.ndarray:
    """scanpy's recipe: log-normalised counts, 2,000 HVGs, 50 PCs."""
    import scanpy as sc

    tmp = adata.copy()
    sc.pp.filter_genes(tmp, min_cells=1)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    if tmp.n_vars > 2000:
        sc.pp.highly_variable_genes(tmp, n_top_genes=2000, subset=True)
    sc.pp.pca(tmp, n_comps=min(50, tmp.n_vars - 1), random_state=0)
    return tmp.obsm["X_pca"]


def scvi_latent(adata: ad.AnnData, batch_key: str | None, seed: int) -> np.ndarray:
    """scvi-tools SCVI with its defaults on the 2,000 HVGs scdl trains on, for scdl's number
    of epochs (the same ~4,000 minibatches; scvi-tools' own default, 400 epochs below 20k
    cells, is 6x longer on PBMC 7k and did not fit this benchmark's time on two cores)."""
    import scvi

    from scdl.models._training import default_max_epochs

    scvi.settings.seed = seed
    ref = hvg_subset(adata, batch_key=batch_key)
    scvi.model.SCVI.setup_anndata(ref, batch_key=batch_key)
    model = scvi.model.SCVI(ref)
    model.train(max_epochs=default_max_epochs(ref.n_obs), enable_progress_bar=False)
    return model.get_latent_representation()


def scdl_latent(adata: ad.AnnData, batch_key: str | None, seed: int) -> np.ndarray:
    import scdl

    tmp = adata.copy()
    scdl.tl.integrate(tmp, batch_key=batch_key, random_state=seed, progress_bar=False)
    return tmp.obsm["X_scdl"]


def harmony_pca(pca: np.ndarray, batches: pd.Series, seed: int) -> np.ndarray:
    """The PCA corrected by Harmony over the batches (harmonypy's defaults)."""
    import harmonypy

    meta = pd.DataFrame({"batch": batches.astype(str).to_numpy()})
    out = harmonypy.run_harmony(pca.T, meta, "batch", random_state=seed, verbose=False)
    return np.asarray(out.Z_corr, dtype=np.float32)


def embeddings(
    name: str, seed: int, cache: Path | None, spaces=SPACES, cache_only: bool = False
) -> tuple[ad.AnnData, str]:
    """The dataset with obsm PCA / scVI / scdl (read from ``cache`` when there; with
    ``cache_only`` a learned space not in the cache is left out)."""
    adata, label_key, batch_key = load(name)
    for space, fn in (
        ("PCA", lambda: scanpy_pca(adata)),
        ("scVI", lambda: scvi_latent(adata, batch_key, seed)),
        ("scdl", lambda: scdl_latent(adata, batch_key, seed)),
        ("Harmony", lambda: harmony_pca(adata.obsm["PCA"], adata.obs[batch_key], seed)),
    ):
        if space not in spaces or (space == "Harmony" and not (batch_key and "PCA" in adata.obsm)):
            continue
        path = cache / f"{name}_{space}_{seed}.npy" if cache else None
        if path is not None and path.is_file():
            adata.obsm[space] = np.load(path)
            continue
        if cache_only and space not in ("PCA", "Harmony"):  # both cheap, computed
            continue
        adata.obsm[space] = np.asarray(fn(), dtype=np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, adata.obsm[space])
    if "scdl" in adata.obsm:  # what tl.integrate records, which tl.cluster reads (its PCA's
        # genes; whether the latent had a batch key): also for a latent read from the cache
        genes = hvg_subset(adata, batch_key=batch_key).var_names
        adata.uns["scdl"] = {
            "params": {"model": "scdl.models.VAE", "batch_key": batch_key or ""},
            "var_names": np.asarray(genes, dtype=object),
        }
    return adata, label_key


def run(
    name: str, seed: int, cache: Path | None, spaces=SPACES, cache_only: bool = False
) -> pd.DataFrame:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    import scdl

    adata, label_key = embeddings(name, seed, cache, spaces, cache_only)
    keep = (adata.obs[label_key].astype(str) != "NA").to_numpy()
    truth = adata.obs[label_key].astype(str).to_numpy()[keep]
    batch_key = DATASETS[name][2] if name in DATASETS else None
    batches = adata.obs[batch_key].astype(str) if batch_key else None

    def score(labels) -> tuple[float, float]:
        pred = np.asarray(labels)[keep]
        return adjusted_rand_score(truth, pred), normalized_mutual_info_score(truth, pred)

    import scanpy as sc

    rows = []
    for space in [s for s in spaces if s in adata.obsm]:
        key = f"cl_{space}"
        # scdl: tl.cluster's default graph (for a one-batch latent the PCA's graph averaged
        # in, the PCA computed from the counts); the peers: scanpy's usual 15 neighbours on
        # their own space alone
        nn = {} if space == "scdl" else {"n_neighbors": PEER_NEIGHBORS, "pca_key": None}
        scdl.tl.cluster(adata, use_rep=space, key_added=key, random_state=seed, **nn)  # the graph
        for res in GRID:  # what scdl.tl.cluster(resolution=res) runs on that graph
            sc.tl.leiden(
                adata,
                resolution=res,
                key_added=key,
                neighbors_key=f"{key}_neighbors",
                flavor="igraph",
                n_iterations=2,
                directed=False,
                random_state=seed,
            )
            ari, nmi = score(adata.obs[key])
            rows.append(
                {
                    "space": space,
                    "resolution": res,
                    "auto": False,
                    "n_clusters": adata.obs[key].nunique(),
                    "ARI": ari,
                    "NMI": nmi,
                    "one_batch_share": one_batch_share(adata.obs[key], batches),
                }
            )
        scdl.tl.cluster(
            adata, use_rep=space, resolution="auto", key_added=key, random_state=seed, **nn
        )
        ari, nmi = score(adata.obs[key])
        rows.append(
            {
                "space": space,
                "resolution": adata.uns[key]["resolution"],
                "auto": True,
                "n_clusters": adata.obs[key].nunique(),
                "ARI": ari,
                "NMI": nmi,
                "one_batch_share": one_batch_share(adata.obs[key], batches),
            }
        )
    out = pd.DataFrame(rows)
    out.insert(0, "seed", seed)
    out.insert(0, "dataset", name)
    out.attrs["n_types"] = len(set(truth))
    return out


def one_batch_share(labels: pd.Series, batches: pd.Series | None) -> float:
    """Share of cells in clusters of which over 90% come from one batch (NaN for one batch):
    a type split by batch (or lab) raises it; a type or state of one batch (e.g. stimulated
    monocytes when the batches are control and stimulated) raises it rightly."""
    if batches is None:
        return float("nan")
    labels = pd.Series(np.asarray(labels).astype(str), index=batches.index)
    purity = pd.crosstab(labels, batches).pipe(lambda t: t.max(axis=1) / t.sum(axis=1))
    return float(labels.map(purity > 0.9).mean())


def summarise(grid: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and seed: the headline columns; then mean and sd over seeds."""
    rows = []
    for (d, s), t in grid.groupby(["dataset", "seed"], sort=False):
        r = {"dataset": d, "seed": s}
        for space in SPACES:
            u = t[t["space"] == space]
            if u.empty:  # not run for this seed (see --spaces)
                u = pd.DataFrame(
                    {"auto": [False, True], "resolution": 1.0, "ARI": np.nan, "NMI": np.nan,
                     "n_clusters": np.nan}
                )  # fmt: skip
            fixed = u[(~u["auto"]) & (u["resolution"] == 1.0)].iloc[0]
            auto = u[u["auto"]].iloc[0]
            best = u[~u["auto"]].sort_values("ARI", na_position="first").iloc[-1]
            r[f"{space} 1.0"] = fixed["ARI"]
            r[f"{space} auto"] = auto["ARI"]
            r[f"{space} oracle"] = best["ARI"]
            r[f"{space} NMI 1.0"] = fixed["NMI"]
            r[f"{space} NMI auto"] = auto["NMI"]
            r[f"{space} auto res"] = auto["resolution"]
            r[f"{space} auto k"] = auto["n_clusters"]
            r[f"{space} 1.0 k"] = fixed["n_clusters"]
            r[f"{space} oracle res"] = best["resolution"]
            r[f"{space} auto one-batch"] = auto.get("one_batch_share", np.nan)
            r[f"{space} 1.0 one-batch"] = fixed.get("one_batch_share", np.nan)
        rows.append(r)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--datasets", nargs="+", default=list(DATASETS), choices=[*DATASETS, *MERGED],
        help="labelled sets (default: every file); merged12 / merged12s: the 12-type stress sets",
    )  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--cache", type=Path, default=None, help="folder to keep embeddings in")
    p.add_argument("--embed-only", action="store_true", help="only compute the embeddings")
    p.add_argument(
        "--cache-only", action="store_true", help="leave out learned spaces not in --cache"
    )
    p.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    p.add_argument("--out", type=Path, default=None, help="write the full grid as CSV")
    p.add_argument(
        "--read", nargs="+", type=Path, default=None,
        help="print the tables of grids written by --out (e.g. seeds run side by side)",
    )  # fmt: skip
    args = p.parse_args()
    if args.read:
        grid = pd.concat([pd.read_csv(f) for f in args.read])
        if grid.duplicated(["dataset", "seed", "space", "resolution", "auto"]).any():
            raise SystemExit("--read: the grids overlap (a dataset and seed appear twice).")
        report(grid)
        return
    if args.embed_only:
        for s in args.seeds:  # seed-major: every set gets seed 0 first
            for d in args.datasets:
                embeddings(d, s, args.cache, args.spaces)
                print(f"embedded {d} seed {s}", flush=True)
        return
    grid = pd.concat(
        [
            run(d, s, args.cache, args.spaces, args.cache_only)
            for s in args.seeds
            for d in args.datasets
        ]
    )
    if args.out:
        grid.to_csv(args.out, index=False)
    report(grid)


def report(grid: pd.DataFrame) -> None:
    """Print the tables of a grid (``run``'s rows, any sets and seeds)."""
    per_seed = summarise(grid)
    pd.set_option("display.width", 250)
    f3 = lambda v: f"{v:.3f}"  # noqa: E731
    cols = [
        "scdl auto", "scdl 1.0", "scdl oracle", "PCA 1.0", "PCA oracle",
        "scVI 1.0", "scVI oracle",
    ]  # fmt: skip
    print("ARI, per dataset and seed:")
    print(per_seed[["dataset", "seed", *cols, "scdl auto res", "scdl auto k"]].to_string(
        index=False, float_format=f3))  # fmt: skip
    mean = per_seed.groupby("dataset", sort=False).mean(numeric_only=True)
    sd = per_seed.groupby("dataset", sort=False).std(numeric_only=True)
    print("\nARI mean (sd) over seeds:")
    # one seed has no spread: shown as "-", not as 0.000
    spread = sd[cols].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    table = mean[cols].map(f3) + " (" + spread + ")"
    print(table.to_string())
    nmi = [c.replace(" ", " NMI ", 1) for c in cols if "oracle" not in c]
    print("\nNMI mean over seeds:")
    print(mean[nmi].to_string(float_format=f3))
    print("\nmean over datasets (ARI):")
    print(mean[cols].mean().to_string(float_format=f3))
    best_peer = mean[["PCA 1.0", "scVI 1.0"]].max(axis=1)
    # the figure compares with the peers at 1.0; the same label-free rule on the
    # peers' spaces is the like-for-like comparison
    best_peer_auto = mean[["PCA auto", "scVI auto"]].max(axis=1)
    oracle = mean[["scdl oracle", "PCA oracle", "scVI oracle"]].max(axis=1)
    print(
        "\nscdl auto - best peer at 1.0 / - best peer at auto / - best oracle / - own oracle, "
        "per dataset:"
    )
    for d in mean.index:
        print(
            f"  {d}: {mean.loc[d, 'scdl auto'] - best_peer[d]:+.3f} / "
            f"{mean.loc[d, 'scdl auto'] - best_peer_auto[d]:+.3f} / "
            f"{mean.loc[d, 'scdl auto'] - oracle[d]:+.3f} / "
            f"{mean.loc[d, 'scdl auto'] - mean.loc[d, 'scdl oracle']:+.3f}"
        )
    print("\nlabel-free choice on the other spaces (ARI, mean over seeds):")
    print(mean[["PCA auto", "scVI auto", "scdl auto"]].to_string(float_format=f3))
    harmony = mean[["Harmony 1.0", "Harmony auto", "Harmony oracle", "scdl 1.0", "scdl auto"]]
    harmony = harmony.dropna(subset=["Harmony 1.0"])
    if not harmony.empty:
        print("\nHarmony + Leiden (scanpy's PCA harmonised over the batch key; batch sets):")
        print(harmony.to_string(float_format=f3))
    pure = [f"{sp} {r} one-batch" for sp in SPACES for r in ("1.0", "auto")]
    batched = mean[pure].dropna(how="all")
    if not batched.empty:
        print("\nshare of cells in clusters over 90% one batch (batch sets; mean over seeds):")
        print(batched.to_string(float_format=f3))


if __name__ == "__main__":
    main()
