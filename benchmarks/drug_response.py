"""Drug-response benchmark: scdl DrugResponseModel vs sklearn Ridge, GDSC2 ln IC50.

Both methods see the same genes and the same inputs: the model's gene selection (the 2,000
genes most variable over the bulk lines among those shared with the CellBench cells and
detected in >= 5% of them) and its default profiles (normal quantiles of each profile's
within-sample gene ranks; counts first to log1p CP10k).
Ridge is scikit-learn's ``RidgeCV`` on standardised genes, one fit per drug on the lines
measured for it, alpha chosen by efficient leave-one-out CV among 13 values (1e-1..1e5).

scdl runs with its defaults: a wide & deep ensemble, each member the mean of its network and
a closed-form ridge on its lines (``ridge_alpha=3162``, RidgeCV's usual choice here).

1. Bulk, leave cell lines out: 5-fold CV over the GDSC lines with a measured response;
   per-drug Spearman between out-of-fold predictions and measurements, mean over drugs.
   scdl is trained exactly as in (2), with the CellBench cells as its target.
2. Transfer to single cells: both methods are trained on every line except the CellBench
   ones; scdl predicts each singlet cell (then averaged per line), Ridge the line's
   pseudobulk (summed counts, same transform). Compared with the lines' measured GDSC2
   values over the drugs measured on all of them: per line, Spearman across drugs, mean over
   lines (the issue's check), as they are and relative to each drug's mean over the training
   lines (drug potency removed); per drug, Spearman across lines (mean over drugs); and
   whether each EGFR inhibitor ranks HCC827, the EGFR-mutant line, as the most sensitive.
   Rows "on bulk profiles" give each method the lines' own bulk expression instead (what
   transfer could reach), and "drug mean" predicts every drug's training mean (how much of
   the across-drug Spearman is drug potency alone).

No setting was fitted to the CellBench lines' responses: the model's settings come from
bulk cross-validation and from label-free checks (agreement of the model's predictions from
the cells with its predictions from the same lines' bulk profiles).

    python benchmarks/drug_response.py                           # all (~25 min on 2 cores)
    python benchmarks/drug_response.py --cache out/ --folds 0 1  # in pieces, resumable
    python benchmarks/drug_response.py --cache out/ --parts report
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _common import DATA, measure, need
from scipy.stats import spearmanr

warnings.filterwarnings("ignore")
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)

EGFR_DRUGS = ("Gefitinib", "Erlotinib", "Afatinib")
EGFR_LINE = "HCC827"
N_FOLDS = 5
ALPHAS = np.logspace(-1, 5, 13)
SCALE = "rank"  # the model's default input scale, given to Ridge too


def load():
    import scdl
    from scdl.datasets._gdsc import match_cell_lines

    need(DATA / "gdsc_bulk_expression.h5ad")
    bulk = scdl.datasets.gdsc(metric="ln_ic50", dataset="GDSC2", path=DATA)
    cells = ad.read_h5ad(need(DATA / "cellbench_lung_lines_2batches.h5ad"))
    cells = cells[cells.obs["demuxlet"] == "SNG"].copy()
    keys = match_cell_lines(cells.obs["cell_line"].unique(), bulk.obs["cell_line_key"])
    cells.obs["cell_line_key"] = cells.obs["cell_line"].map(keys).astype(str)
    return bulk, cells


def select_genes(bulk, cells) -> pd.Index:
    from scdl.models import DrugResponseModel

    return DrugResponseModel._select_genes(bulk, cells, None, 2000, 0.05)


def fit_scdl(bulk_train, cells, genes, seed: int):
    import scvi

    from scdl.models import DrugResponseModel

    scvi.settings.seed = seed
    a = bulk_train.copy()
    DrugResponseModel.setup_anndata(a, response_key="ln_ic50")
    model = DrugResponseModel(a, target=cells, genes=list(genes))
    with measure() as m:
        model.train(enable_progress_bar=False)
    return model, m


def fit_ridge(x_train: np.ndarray, y_train: np.ndarray):
    """One standardised RidgeCV per drug on its measured lines; returns a predict function."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fits = []
    for j in range(y_train.shape[1]):
        ok = ~np.isnan(y_train[:, j])
        fits.append(
            make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x_train[ok], y_train[ok, j])
        )
    return lambda x: np.column_stack([f.predict(x) for f in fits])


def profiles(adata, genes) -> np.ndarray:
    from scdl.data._drug_inputs import profiles_from_expression

    return profiles_from_expression(np.asarray(adata.X), adata.var_names, genes, scale=SCALE)


# --- (1) bulk cross-validation ------------------------------------------------------------


def run_fold(bulk, cells, genes, fold: int, folds: np.ndarray, seed: int) -> dict:
    train, test = bulk[folds != fold], bulk[folds == fold]
    model, m = fit_scdl(train, cells, genes, seed)
    scdl_pred = model.predict(test, modality="profiles").to_numpy()
    y_train = train.obsm["ln_ic50"].to_numpy()
    with measure() as r:
        ridge = fit_ridge(profiles(train, genes), y_train)
    ridge_pred = ridge(profiles(test, genes))
    print(f"  fold {fold}: scdl {m['seconds']:.0f}s, Ridge {r['seconds']:.0f}s", flush=True)
    return {
        "rows": np.flatnonzero(folds == fold),
        "scdl": scdl_pred,
        "ridge": ridge_pred,
        "seconds_scdl": m["seconds"],
        "seconds_ridge": r["seconds"],
    }


def per_drug_spearman(pred: np.ndarray, y: np.ndarray, min_lines: int = 10) -> np.ndarray:
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j]) & ~np.isnan(pred[:, j])
        if ok.sum() >= min_lines:
            out[j] = spearmanr(pred[ok, j], y[ok, j])[0]
    return out


def cv_table(bulk, results: list[dict]) -> tuple[pd.DataFrame, str]:
    y = bulk.obsm["ln_ic50"].to_numpy()
    pred = {k: np.full(y.shape, np.nan) for k in ("scdl", "ridge")}
    for res in results:
        for k in pred:
            pred[k][res["rows"]] = res[k]
    rho = {k: per_drug_spearman(v, y) for k, v in pred.items()}
    both = ~np.isnan(rho["scdl"]) & ~np.isnan(rho["ridge"])
    rows = []
    for k, name in (("scdl", "scdl DrugResponseModel"), ("ridge", "sklearn RidgeCV")):
        r = rho[k][both]
        rows.append(
            {
                "method": name,
                "folds": len(results),
                "drugs": int(both.sum()),
                "mean_spearman": r.mean(),
                "median_spearman": np.median(r),
                "train_s_per_fold": np.mean([res[f"seconds_{k}"] for res in results]),
            }
        )
    wins = int((rho["scdl"][both] > rho["ridge"][both]).sum())
    diff = rho["scdl"][both] - rho["ridge"][both]
    from scipy.stats import wilcoxon

    note = (
        f"scdl better on {wins}/{both.sum()} drugs; mean difference {diff.mean():+.4f} "
        f"(Wilcoxon signed-rank p = {wilcoxon(diff).pvalue:.2g})"
    )
    return pd.DataFrame(rows), note


# --- (2) transfer to the CellBench cells ---------------------------------------------------


def run_transfer(bulk, cells, genes, seed: int) -> dict:
    from scdl.data._drug_inputs import profiles_from_counts

    lines = sorted(cells.obs["cell_line_key"].unique())
    held = bulk.obs["cell_line_key"].isin(lines).to_numpy()
    train = bulk[~held]
    model, m = fit_scdl(train, cells, genes, seed)
    cell_pred = model.predict(cells, modality="counts")
    scdl_cells = cell_pred.groupby(cells.obs["cell_line_key"].to_numpy()).mean().loc[lines]
    held_bulk = bulk[held]
    order = pd.Index(held_bulk.obs["cell_line_key"]).get_indexer(lines)
    scdl_bulk = model.predict(held_bulk, modality="profiles").iloc[order]
    scdl_bulk.index = lines

    ridge = fit_ridge(profiles(train, genes), train.obsm["ln_ic50"].to_numpy())
    sums = [
        np.asarray(cells.X[(cells.obs["cell_line_key"] == ln).to_numpy()].sum(axis=0))
        for ln in lines
    ]
    pseudo = profiles_from_counts(np.vstack(sums), cells.var_names, genes, scale=SCALE)
    drugs = list(model.drugs)
    ridge_cells = pd.DataFrame(ridge(pseudo), index=lines, columns=drugs)
    ridge_bulk = pd.DataFrame(ridge(profiles(held_bulk, genes)[order]), index=lines, columns=drugs)
    drug_mean = pd.DataFrame(
        np.tile(np.nanmean(train.obsm["ln_ic50"].to_numpy(), 0), (len(lines), 1)),
        index=lines,
        columns=drugs,
    )
    measured = held_bulk.obsm["ln_ic50"].iloc[order]
    measured.index = lines
    return {
        "preds": {
            "scdl DrugResponseModel, single cells": scdl_cells,
            "sklearn RidgeCV, pseudobulk": ridge_cells,
            "scdl, on the lines' bulk profiles": scdl_bulk,
            "Ridge, on the lines' bulk profiles": ridge_bulk,
            "drug mean (training lines)": drug_mean,
        },
        "measured": measured,
        "n_cells": cells.obs["cell_line_key"].value_counts().loc[lines],
        "seconds_scdl": m["seconds"],
    }


def transfer_tables(res: dict) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    measured = res["measured"]
    drugs = measured.columns[measured.notna().all(axis=0)]
    lines = list(measured.index)
    # drug potency alone explains most of a line's profile across drugs: also compare the
    # profiles relative to each drug's mean over the training lines
    centre = res["preds"]["drug mean (training lines)"].loc[lines, drugs]
    truth_c = measured[drugs] - centre
    rows, egfr = [], []
    for name, pred in res["preds"].items():
        p = pred.loc[lines, drugs]
        across_lines = [spearmanr(p[d], measured[d])[0] for d in drugs]
        row = {"method": name}
        for ln in lines:
            row[f"{ln}"] = spearmanr(p.loc[ln], measured.loc[ln, drugs])[0]
        row["mean"] = np.mean([row[ln] for ln in lines])
        pc = p - centre
        for ln in lines:
            row[f"{ln}_rel"] = (
                spearmanr(pc.loc[ln], truth_c.loc[ln])[0] if pc.loc[ln].nunique() > 1 else np.nan
            )
        row["mean_rel"] = np.mean([row[f"{ln}_rel"] for ln in lines])
        row["across_lines"] = np.nanmean(across_lines)
        rows.append(row)
        e = {"method": name}
        for d in EGFR_DRUGS:
            e[d] = p[d].idxmin() if p[d].nunique() > 1 else "tie"
        e["HCC827_most_sensitive"] = f"{sum(e[d] == EGFR_LINE for d in EGFR_DRUGS)}/3"
        egfr.append(e)
    truth = {"method": "measured GDSC2"}
    for d in EGFR_DRUGS:
        truth[d] = measured[d].idxmin()
    truth["HCC827_most_sensitive"] = f"{sum(truth[d] == EGFR_LINE for d in EGFR_DRUGS)}/3"
    egfr.append(truth)
    return pd.DataFrame(rows), pd.DataFrame(egfr), len(drugs)


# --- driver --------------------------------------------------------------------------------


def _save(path: Path, obj: dict) -> None:
    import pickle

    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _load(path: Path):
    import pickle

    with open(path, "rb") as f:  # our own cache files only
        return pickle.load(f)  # noqa: S301


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--parts",
        nargs="+",
        default=["cv", "transfer", "report"],
        choices=["cv", "transfer", "report"],
    )
    p.add_argument("--folds", nargs="+", type=int, default=list(range(N_FOLDS)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder keeping finished folds/transfer, so a run can be split up",
    )
    args = p.parse_args()
    bulk, cells = load()
    measured = bulk.obsm["ln_ic50"].notna().any(axis=1).to_numpy()
    bulk = bulk[measured].copy()
    genes = select_genes(bulk, cells)
    folds = np.random.RandomState(args.seed + 1).permutation(bulk.n_obs) % N_FOLDS
    cache = args.cache
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    results = {}

    if "cv" in args.parts:
        print(
            f"(1) {N_FOLDS}-fold CV over {bulk.n_obs} lines, {bulk.obsm['ln_ic50'].shape[1]} "
            f"drugs, {len(genes)} genes",
            flush=True,
        )
        for f in args.folds:
            path = None if cache is None else cache / f"cv_fold{f}_seed{args.seed}.pkl"
            if path is not None and path.is_file():
                continue
            res = run_fold(bulk, cells, genes, f, folds, args.seed)
            results[f"fold{f}"] = res
            if path is not None:
                _save(path, res)
    if "transfer" in args.parts:
        path = None if cache is None else cache / f"transfer_seed{args.seed}.pkl"
        if path is None or not path.is_file():
            res = run_transfer(bulk, cells, genes, args.seed)
            results["transfer"] = res
            if path is not None:
                _save(path, res)
    if "report" not in args.parts:
        return
    if cache is not None:
        for f in range(N_FOLDS):
            path = cache / f"cv_fold{f}_seed{args.seed}.pkl"
            if path.is_file():
                results.setdefault(f"fold{f}", _load(path))
        path = cache / f"transfer_seed{args.seed}.pkl"
        if path.is_file():
            results.setdefault("transfer", _load(path))

    pd.set_option("display.width", 250)
    fmt = {"float_format": lambda v: f"{v:.3f}", "index": False}
    fold_results = [results[f"fold{f}"] for f in range(N_FOLDS) if f"fold{f}" in results]
    if fold_results:
        table, note = cv_table(bulk, fold_results)
        print(
            f"\n(1) Bulk GDSC2 ln IC50, leave lines out ({len(fold_results)}/{N_FOLDS} folds,"
            f" {len(genes)} genes): per-drug Spearman, out-of-fold"
        )
        print(table.to_string(**fmt))
        print("   ", note)
    if "transfer" in results:
        res = results["transfer"]
        table, egfr, n_drugs = transfer_tables(res)
        counts = ", ".join(f"{k} {v}" for k, v in res["n_cells"].items())
        print(
            f"\n(2) Transfer: trained without {list(res['measured'].index)}, predicting their "
            f"singlet cells ({counts}); {n_drugs} drugs measured on all lines; scdl trained "
            f"in {res['seconds_scdl']:.0f}s"
        )
        print(
            "    <line>: per line, Spearman across drugs (mean: over lines, the issue's check); "
            "<line>_rel: the same after subtracting each drug's training-line mean from "
            "predictions and measurements (drug potency removed); across_lines: per drug, "
            "Spearman across the lines, mean over drugs."
        )
        print(table.to_string(**fmt))
        print(f"\n    Most sensitive line predicted for each EGFR inhibitor (truth: {EGFR_LINE})")
        print(egfr.to_string(index=False))
    if cache is not None:
        seeds_summary(sorted(cache.glob("transfer_seed*.pkl")))


def seeds_summary(paths: list[Path]) -> None:
    """The transfer's summary columns for every seed found in the cache, and their mean."""
    if len(paths) < 2:
        return
    rows = []
    for path in paths:
        table = transfer_tables(_load(path))[0].set_index("method")
        seed = path.stem.removeprefix("transfer_seed")
        for method in table.index[:2]:  # scdl from cells, Ridge from pseudobulk
            rows.append({"seed": seed, "method": method, **table.loc[method].to_dict()})
    df = pd.DataFrame(rows)[["seed", "method", "mean", "mean_rel", "across_lines"]]
    print(f"\n    Transfer over seeds {', '.join(df.seed.unique())} (Ridge does not depend on it)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(df.groupby("method", sort=False)[["mean", "mean_rel", "across_lines"]].mean().round(3))


if __name__ == "__main__":
    main()
