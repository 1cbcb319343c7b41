"""Do the annotator's gene attributions name the genes its calls rest on? A deletion test.

On every split of ``annotation.py`` (the same references, queries and 2,000 reference HVGs),
a ``CellTypeTransformer`` is trained on the reference with its defaults. For each cell type
of the query that the reference holds, four rankings of the model's genes say which genes
drive that type:

- **scdl**: ``model.gene_attributions(groupby="cell_type")`` on the reference (integrated
  gradients of the type's logit over up to ``--n-cells`` reference cells of the type), the
  cells the baselines read; also on the query cells of the type (**scdl, query cells**: the
  cells the test then changes, so in-sample);
- **Wilcoxon**: scanpy's ``rank_genes_groups`` on the reference (log1p CP10k), the type
  against the rest, by score: the markers a user would read;
- **logistic regression**: the type's coefficients in CellTypist's classifier fitted on the
  reference (log1p CP10k scaled per gene, C = 1), largest first;
- **random**: genes drawn at random (the mean over five draws).

The test: the query cells of the type that the model calls right (forced calls, the
reference's statistics: ``adapt_to_query=0``, the model the attributions explain) have the
top ``k`` genes of a ranking set to zero counts, and are called again. Printed per split and
method: the mean over types of the fall in the type's probability and the share of those
cells whose call leaves the type, at each ``k``; then the mean and the worst split. A
ranking that names the genes the calls rest on makes them fall furthest; marker genes of the
reference are the simple baseline a ranking of the model's own must beat.

    python benchmarks/annotation_attribution.py --seeds 0 1 2
    python benchmarks/annotation_attribution.py --only kang2k cellbench --k 5 10 20
    python benchmarks/annotation_attribution.py --seeds 1 --out s1.csv   # a seed per core,
    python benchmarks/annotation_attribution.py --read s0.csv s1.csv s2.csv  # then together
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from annotation import fit_logreg, hvg, lognorm, splits
from scipy import sparse

warnings.filterwarnings("ignore")

METHODS = ("scdl", "scdl, query cells", "Wilcoxon", "logistic regression", "random")
N_RANDOM = 5


def rankings(model, ref, qry, types, n_cells: int, seed: int) -> dict:
    """Per method, per type: the model's genes the query holds, most driving first."""
    genes = pd.Index(model.get_var_names()).intersection(qry.var_names, sort=False)
    out = {m: {} for m in METHODS}
    # on the reference's cells, as the baselines read it; and on the query cells themselves
    for method, cells in (("scdl", None), ("scdl, query cells", qry)):
        attr = model.gene_attributions(
            cells, groupby="cell_type", label=types, n_top=None, n_cells=n_cells, seed=seed
        )
        for t in types:
            ranked = attr.loc[attr["label"] == t].sort_values("rank")["gene"]
            out[method][t] = [g for g in ranked if g in genes]
    r = ref[:, genes].copy()
    r.X = lognorm(r)
    sc.tl.rank_genes_groups(r, "cell_type", method="wilcoxon", n_genes=len(genes))
    names = pd.DataFrame(r.uns["rank_genes_groups"]["names"])
    scaler, clf = fit_logreg(ref[:, genes])
    classes = list(clf.classes_)
    rng = np.random.default_rng(seed)
    for t in types:
        out["Wilcoxon"][t] = names[t].tolist()
        # two classes: one row of coefficients, for the second class
        sign = 1.0 if len(classes) > 2 or classes.index(t) == 1 else -1.0
        coef = sign * clf.coef_[classes.index(t) if len(classes) > 2 else 0]
        out["logistic regression"][t] = genes[np.argsort(-coef, kind="stable")].tolist()
        out["random"][t] = [genes[rng.permutation(len(genes))].tolist() for _ in range(N_RANDOM)]
    return out


def deleted(cells, genes: list[str]):
    """``cells`` (an AnnData of CSR counts) with ``genes`` set to zero counts: a new AnnData
    sharing their obs and var, only the matrix copied."""
    keep = np.ones(cells.n_vars)
    keep[cells.var_names.get_indexer(genes)] = 0.0
    x = cells.X @ sparse.diags(keep)
    x.eliminate_zeros()
    return ad.AnnData(X=sparse.csr_matrix(x, dtype=np.float32), obs=cells.obs, var=cells.var)


def deletion_scores(model, qry, types, ranked: dict, ks) -> list[dict]:
    """Per method, type and k: the fall in the type's probability and the share of calls lost,
    over the query cells of the type the model calls right."""
    base = model.predict(qry, soft=True, unknown=False, adapt_to_query=0)
    truth = qry.obs["cell_type"].to_numpy()
    rows = []
    for t in types:
        right = np.flatnonzero((truth == t) & (base.idxmax(1).to_numpy() == t))
        if len(right) < 5:
            continue
        p0 = base[t].to_numpy()[right]
        cells = qry[right].copy()  # once per type: each ranking and k only masks its genes
        cells.X = sparse.csr_matrix(cells.X)
        for method, k in ((m, k) for m in METHODS for k in ks):
            draws = ranked[method][t] if method == "random" else [ranked[method][t]]
            falls, lost = [], []
            for order in draws:
                p = model.predict(
                    deleted(cells, order[:k]), soft=True, unknown=False, adapt_to_query=0
                )
                falls.append(float(np.mean(p0 - p[t].to_numpy())))
                lost.append(float(np.mean(p.idxmax(1).to_numpy() != t)))
            rows.append(
                {
                    "type": t,
                    "method": method,
                    "k": k,
                    "n_cells": len(right),
                    "prob_fall": float(np.mean(falls)),
                    "calls_lost": float(np.mean(lost)),
                }
            )
    return rows


def main() -> None:
    import scvi

    import scdl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--n-cells", type=int, default=100)
    p.add_argument("--only", nargs="+", help="split-name prefixes")
    p.add_argument("--out", help="CSV of every row")
    p.add_argument("--read", nargs="+", metavar="CSV", help="report saved runs (--out), no run")
    args = p.parse_args()
    if args.read:
        table = pd.concat([pd.read_csv(f) for f in args.read], ignore_index=True)
        report(table, sorted(set(table["k"])))
        return
    rows = []
    for name, ref, qry in splits():
        if args.only and not any(name.startswith(x) for x in args.only):
            continue
        genes = hvg(ref)
        ref, qry = ref[:, genes].copy(), qry[:, genes].copy()
        types = sorted(set(qry.obs["cell_type"]) & set(ref.obs["cell_type"]))
        for seed in args.seeds:
            t0 = time.perf_counter()
            scvi.settings.seed = seed
            data = ref.copy()
            scdl.models.CellTypeTransformer.setup_anndata(data, labels_key="cell_type")
            model = scdl.models.CellTypeTransformer(data)
            model.train(enable_progress_bar=False)
            ranked = rankings(model, ref, qry, types, args.n_cells, seed)
            for r in deletion_scores(model, qry, types, ranked, args.k):
                rows.append({"split": name, "seed": seed, **r})
            print(f"{name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    report(table, args.k)


def report(table: pd.DataFrame, ks) -> None:
    """Per k: each split's mean over types (one table per measure), the mean over splits and
    the worst split, scdl's lead over the better baseline per split, and the spread over
    seeds of the mean over splits."""
    per_split = (
        table.groupby(["split", "method", "k", "seed"])[["prob_fall", "calls_lost"]]
        .mean()
        .groupby(["split", "method", "k"])
        .mean()
        .reset_index()
    )
    methods = [m for m in METHODS if m in set(table["method"])]
    for k in ks:
        view = per_split[per_split["k"] == k].pivot(index="split", columns="method")
        print(f"\n== top {k} genes set to zero: fall in the type's probability / calls lost")
        print(view["prob_fall"][methods].round(3).to_string())
        print(view["calls_lost"][methods].round(3).to_string())
        means = view["prob_fall"][methods]
        print("mean over splits:", means.mean().round(3).to_dict())
        print("worst split:", means.min().round(3).to_dict())
        lead = means["scdl"] - means[["Wilcoxon", "logistic regression"]].max(axis=1)
        print("scdl - best baseline, per split:", lead.round(3).to_dict())
    by_seed = (
        table.groupby(["split", "method", "k", "seed"])["prob_fall"]
        .mean()
        .groupby(["method", "k", "seed"])
        .mean()
        .unstack("seed")
    )
    print("\nfall in probability, mean over splits, per seed (and their mean, sd):")
    by_seed["mean"], by_seed["sd"] = by_seed.mean(axis=1), by_seed.std(axis=1, ddof=0)
    print(by_seed.round(3).to_string())


if __name__ == "__main__":
    main()
