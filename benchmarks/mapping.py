"""Reference mapping: scdl's ``tl.map_query`` vs scvi-tools' scArches vs a PCA projection.

On every split of ``annotation.py`` (the same references and queries), a reference model is
trained on the reference cells, the query cells are placed in its space and take the label
held by most of their 15 nearest reference cells (scikit-learn's ``KNeighborsClassifier``,
the same vote for every space). The query's batches are new batch names in the reference's
batch column: the reference's ``sample`` or ``batch`` column where it has one, else
``condition``, else one batch; the query's values of that column, or one query batch.

- **scdl**: ``scdl.tl.integrate(ref, batch_key=...)`` with its defaults (2,000 HVGs chosen
  per batch from the reference's counts), then ``scdl.tl.map_query(qry, model,
  labels_key="cell_type")`` with its defaults;
- **scVI (scArches)**: scvi-tools' ``SCVI`` with the settings its scArches tutorial gives
  (two layers, covariates encoded, layer norm, no batch norm) on the reference's 2,000 HVGs
  (seurat_v3), default epochs; ``SCVI.load_query_data`` and 200 query epochs without weight
  decay (the tutorial's); the same vote on ``get_latent_representation``;
- **PCA projection**: what ``sc.tl.ingest`` does: PCA (50 components) of the reference's
  log1p CP10k on the same HVGs, the query projected onto it, the same vote;
- **logistic regression**: CellTypist's classifier on the same HVGs (``annotation.py``), the
  simple baseline of label transfer without a shared space.

Printed per split: accuracy and macro-F1 over the query cells whose type the reference holds
(mean over seeds, sd beside it), then the mean over splits and the worst split; for scdl also
how well ``uncertainty`` ranks its wrong calls above its right ones (AUROC).

    python benchmarks/mapping.py --seeds 0 1 2
    python benchmarks/mapping.py --seeds 1 --out s1.csv     # a seed per core,
    python benchmarks/mapping.py --read s0.csv s1.csv s2.csv  # then together
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from annotation import hvg, lognorm, run_logreg, splits
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

warnings.filterwarnings("ignore")

METHODS = ("scdl", "scVI (scArches)", "PCA projection", "logistic regression")
K = 15
BATCH = "mapping_batch"


def with_batches(ref: ad.AnnData, qry: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Copies with ``obs[BATCH]``: the reference's own batches, and new names for the query's."""
    ref, qry = ref.copy(), qry.copy()
    col = next((c for c in ("sample", "batch", "condition") if c in ref.obs), None)
    ref.obs[BATCH] = ref.obs[col].astype(str) if col else "reference"
    qry.obs[BATCH] = "query: " + (qry.obs[col].astype(str) if col in qry.obs else "all")
    for a in (ref, qry):
        a.obs[BATCH] = a.obs[BATCH].astype("category")
    return ref, qry


def vote(ref_latent, labels, qry_latent) -> np.ndarray:
    return KNeighborsClassifier(n_neighbors=K).fit(ref_latent, labels).predict(qry_latent)


def run_scdl(ref, qry, genes, seed: int):
    import scdl

    model = scdl.tl.integrate(ref, batch_key=BATCH, random_state=seed, progress_bar=False)
    scdl.tl.map_query(qry, model, labels_key="cell_type", random_state=seed, progress_bar=False)
    return qry.obs["cell_type_mapped"].astype(str).to_numpy(), qry.obs[
        "cell_type_mapped_uncertainty"
    ].to_numpy()


def run_scvi(ref, qry, genes, seed: int):
    import scvi

    scvi.settings.seed = seed
    r, q = ref[:, genes].copy(), qry[:, genes].copy()
    scvi.model.SCVI.setup_anndata(r, batch_key=BATCH)
    arches = dict(
        n_layers=2,
        encode_covariates=True,
        deeply_inject_covariates=False,
        use_layer_norm="both",
        use_batch_norm="none",
    )
    vae = scvi.model.SCVI(r, **arches)
    vae.train(enable_progress_bar=False)
    qm = scvi.model.SCVI.load_query_data(q, vae)
    qm.train(max_epochs=200, plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
    return vote(vae.get_latent_representation(), r.obs["cell_type"], qm.get_latent_representation())


def run_pca(ref, qry, genes, seed: int):
    x_ref, x_qry = (np.asarray(lognorm(a[:, genes]).toarray()) for a in (ref, qry))
    pca = PCA(n_components=min(50, *x_ref.shape), random_state=seed).fit(x_ref)
    return vote(pca.transform(x_ref), ref.obs["cell_type"], pca.transform(x_qry))


def run_lr(ref, qry, genes, seed: int):
    return run_logreg(ref[:, genes].copy(), qry[:, genes].copy())[0]


RUNNERS = {
    "scdl": run_scdl,
    "scVI (scArches)": run_scvi,
    "PCA projection": run_pca,
    "logistic regression": run_lr,
}


def main() -> None:
    from scipy import sparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--only", nargs="+", help="split-name prefixes")
    p.add_argument("--out", help="CSV of every row")
    p.add_argument("--read", nargs="+", metavar="CSV", help="report saved runs (--out), no run")
    args = p.parse_args()
    if args.read:
        report(pd.concat([pd.read_csv(f) for f in args.read], ignore_index=True))
        return
    rows = []
    for name, ref, qry in splits():
        if args.only and not any(name.startswith(x) for x in args.only):
            continue
        ref, qry = with_batches(ref, qry)
        for a in (ref, qry):
            if not sparse.issparse(a.X):
                a.X = sparse.csr_matrix(a.X)
        genes = hvg(ref)  # the peers' genes (scdl chooses its own per batch): once per split
        known = qry.obs["cell_type"].isin(set(ref.obs["cell_type"])).to_numpy()
        truth = qry.obs["cell_type"].astype(str).to_numpy()[known]
        for seed in args.seeds:
            for method in args.methods:
                t0 = time.perf_counter()
                out = RUNNERS[method](ref, qry.copy(), genes, seed)
                pred, unc = out if isinstance(out, tuple) else (out, None)
                pred = np.asarray(pred, dtype=str)[known]
                right = pred == truth
                rows.append(
                    {
                        "split": name,
                        "seed": seed,
                        "method": method,
                        "accuracy": accuracy_score(truth, pred),
                        "macro_f1": f1_score(truth, pred, average="macro"),
                        "uncertainty_auroc": (
                            roc_auc_score(~right, unc[known])
                            if unc is not None and 0 < right.sum() < len(right)
                            else np.nan
                        ),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name} seed {seed} {method}: acc {rows[-1]['accuracy']:.3f} "
                    f"F1 {rows[-1]['macro_f1']:.3f} ({rows[-1]['seconds']:.0f} s)",
                    flush=True,
                )
                if args.out:  # every row as it comes: a long run keeps what it measured
                    pd.DataFrame(rows).to_csv(args.out, index=False)
    report(pd.DataFrame(rows))


def report(table: pd.DataFrame) -> None:
    """Per measure: each split's mean over seeds (sd over seeds beside), the mean over splits
    and the worst split, and the spread over seeds of the mean over splits."""
    methods = [m for m in METHODS if m in set(table["method"])]
    for measure in ("accuracy", "macro_f1"):
        g = table.groupby(["split", "method"])[measure]
        mean, sd = g.mean().unstack()[methods], g.std().unstack()[methods]
        print(f"\n== {measure}: mean over seeds (sd over seeds)")
        print(mean.round(3).astype(str).add(" (").add(sd.round(3).astype(str)).add(")").to_string())
        print("mean over splits:", mean.mean().round(3).to_dict())
        print("worst split:", mean.min().round(3).to_dict())
        per_seed = table.groupby(["seed", "method"])[measure].mean().unstack()[methods]
        print("sd over seeds of the mean over splits:", per_seed.std().round(3).to_dict())
        if "scdl" in methods:
            best = mean.drop(columns="scdl").max(axis=1)
            lead = (mean["scdl"] - best).round(3)
            print("scdl minus the best other method, per split:", lead.to_dict())
    unc = table.dropna(subset=["uncertainty_auroc"]).groupby("split")["uncertainty_auroc"]
    if len(unc.size()):
        print("\nscdl: AUROC of uncertainty for its wrong calls:", unc.mean().round(3).to_dict())
    print("\nseconds per run (mean):", table.groupby("method")["seconds"].mean().round(0).to_dict())


if __name__ == "__main__":
    main()
