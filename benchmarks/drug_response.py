"""Drug-response benchmark: scdl DrugResponseModel vs ridge and boosting, GDSC2 ln IC50.

Checks (issue 18), every method side by side in one run:

1. Transfer to unseen lines' single cells. Every method is trained on the GDSC2 lines
   without the five CellBench lung lines (A549, HCC827, NCI-H1975, NCI-H2228, NCI-H838) and
   predicts the singlet cells of two files: ``cellbench_lung_5lines_3plates.h5ad`` (five
   lines, 571 cells) and ``cellbench_lung_lines_2batches.h5ad`` (three lines). Per drug
   measured on all lines of a file: Spearman across the lines between the lines' mean
   predicted ln IC50 and their measured ln IC50; mean over drugs. Also: for how many of the
   four EGFR inhibitors (gefitinib, erlotinib, afatinib, osimertinib) HCC827, the
   EGFR-mutant line, is predicted the most sensitive.
2. Bulk, leave lines out: 5-fold CV over the GDSC2 lines, per-drug Spearman between
   out-of-fold predictions and measurements, mean over drugs; scdl vs RidgeCV (and ridges
   with fixed penalties 1000 and 3162). Also scored within groups of similar lines (k-means
   of the lines' profiles, 20 groups; per drug, group and fold with >= 8 lines measured),
   which asks what the five-line check asks of a bulk model: to rank lines alike in
   expression, rather than tissues.

Baselines (seed-free, fitted on the training lines only):

- ``Ridge a=1000, pseudobulk``: the issue's baseline; every GDSC gene shared with the cells,
  each profile z-scored (counts summed per line, log1p CP10k), genes standardised, alpha 1000.
- ``RidgeCV, pseudobulk`` / ``RidgeCV, smoothed cells``: the model's genes and input profiles
  (normal quantiles of within-profile ranks), alpha per drug by leave-one-out over 13 values;
  from each line's pseudobulk, or from each cell averaged with its 15 nearest neighbours
  (then the mean over the line's cells).
- ``Boosting, pseudobulk``: scikit-learn's HistGradientBoostingRegressor per drug on the top
  50 principal components of the model's profiles (fitted on the training lines).
- ``RidgeCV, pseudobulk, genes not standardised``: as above without the per-gene
  standardisation by the bulk lines' statistics (ablation).
- ``Ridge a=3162 / RidgeCV, the lines' own GDSC profiles``: not a baseline but a reference
  point: the same ridges given the held-out lines' bulk expression from GDSC itself instead of
  their cells (what a bulk model ranks with perfect inputs; no cells involved).

``scdl <variant>`` rows average the model's per-cell predictions over each line's cells;
``scdl default, pseudobulk`` gives the model each line's summed counts instead (no smoothing).

``--variants`` adds models trained with other settings (the ablation table in
benchmarks/README.md), e.g. ``--variants default old_wide_deep wide_alpha_loo``; ``--no-baselines``
skips the baselines.

    python benchmarks/drug_response.py --seeds 0 1 2            # transfer + report
    python benchmarks/drug_response.py --parts cv report --seeds 0   # bulk leave-lines-out
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
for _name in ("lightning", "lightning.pytorch", "scvi"):
    logging.getLogger(_name).setLevel(logging.ERROR)

EGFR_DRUGS = ("Gefitinib", "Erlotinib", "Afatinib", "Osimertinib")
EGFR_LINE = "HCC827"
FILES = {
    "5 lines": "cellbench_lung_5lines_3plates.h5ad",
    "3 lines": "cellbench_lung_lines_2batches.h5ad",
}
N_FOLDS = 5
ALPHAS = np.logspace(-1, 5, 13)
SMOOTH = 15
#: groups of similar lines for the bulk check's within-group score
N_GROUPS = 20

#: model settings compared in the ablation (keyword arguments of DrugResponseModel)
_OLD_GENES = {"n_top_genes": 2000, "min_detected": 0.05}
_OLD = {**_OLD_GENES, "prediction": "wide_deep"}
VARIANTS = {
    "default": {},
    # the deep part (previous default: wide & deep, 2,000 genes detected in >= 5% of cells)
    "old_wide_deep": _OLD,
    "old_deep_only": {**_OLD, "prediction": "deep"},
    "old_wide_only": {**_OLD, "prediction": "wide"},
    "old_no_mmd": {**_OLD, "mmd_weight": 0.0},
    "old_no_match": {**_OLD, "match_neighbors": 0},
    # the wide path's inputs and penalty
    "wide_2000_detected": _OLD_GENES,
    "wide_2000": {"n_top_genes": 2000},
    "wide_detected": {"min_detected": 0.05},
    "wide_zscore": {"input_scale": "zscore"},
    "wide_alpha_1000": {"ridge_alpha": 1000.0},
    "wide_alpha_loo": {"ridge_alpha": ALPHAS},
    "wide_smooth_0": {"smooth_neighbors": 0},
    "wide_smooth_50": {"smooth_neighbors": 50},
    # the network on the default's inputs (every shared gene)
    "wide_deep_all_genes": {"prediction": "wide_deep"},
}


def load():
    import scdl
    from scdl.datasets._gdsc import match_cell_lines

    need(DATA / "gdsc_bulk_expression.h5ad")
    bulk = scdl.datasets.gdsc(metric="ln_ic50", dataset="GDSC2", path=DATA)
    bulk = bulk[bulk.obsm["ln_ic50"].notna().any(axis=1).to_numpy()].copy()
    files = {}
    for tag, name in FILES.items():
        cells = ad.read_h5ad(need(DATA / name))
        cells = cells[cells.obs["demuxlet"] == "SNG"].copy()
        keys = match_cell_lines(cells.obs["cell_line"].unique(), bulk.obs["cell_line_key"])
        cells.obs["cell_line_key"] = cells.obs["cell_line"].map(keys).astype(str)
        cells.obs_names = [f"{tag[0]}_{n}" for n in cells.obs_names]
        files[tag] = cells
    return bulk, files


def pseudobulk(cells) -> ad.AnnData:
    """Summed counts per line (rows sorted by line key)."""
    lines = sorted(cells.obs["cell_line_key"].unique())
    key = cells.obs["cell_line_key"].to_numpy()
    sums = np.vstack([np.asarray(cells.X[key == ln].sum(axis=0)) for ln in lines])
    return ad.AnnData(sums.astype(np.float32), obs=pd.DataFrame(index=lines), var=cells.var[[]])


def line_means(pred: pd.DataFrame, cells) -> pd.DataFrame:
    lines = sorted(cells.obs["cell_line_key"].unique())
    return pred.groupby(cells.obs["cell_line_key"].to_numpy()).mean().loc[lines]


# --- baselines -----------------------------------------------------------------------------


class Ridge:
    """Standardised genes, one ridge per drug on its measured lines (dual, closed form)."""

    def __init__(self, x, y, alphas, *, standardise: bool = True):
        from scdl.module._ridge import fit_masked_ridge

        self.mean, self.sd = x.mean(0), x.std(0)
        self.sd[self.sd == 0] = 1.0
        if not standardise:
            self.mean, self.sd = np.zeros_like(self.mean), np.ones_like(self.sd)
        self.w, self.b, self.alpha = fit_masked_ridge((x - self.mean) / self.sd, y, alphas)

    def __call__(self, x):
        return ((x - self.mean) / self.sd) @ self.w.T + self.b


def boosting(x_train, y_train, x_tests, drugs_needed, seed=0):
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingRegressor

    pca = PCA(n_components=50, random_state=seed).fit(x_train)
    z = pca.transform(x_train)
    zt = [pca.transform(x) for x in x_tests]
    outs = [np.full((x.shape[0], y_train.shape[1]), np.nan) for x in x_tests]
    for j in np.flatnonzero(drugs_needed):
        ok = ~np.isnan(y_train[:, j])
        fit = HistGradientBoostingRegressor(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=seed
        ).fit(z[ok], y_train[ok, j])
        for out, zz in zip(outs, zt, strict=True):
            out[:, j] = fit.predict(zz)
    return outs


def baselines(train, files, genes, scale, held_bulk=None) -> dict:
    from scdl.data import profiles_from_counts, profiles_from_expression

    y = train.obsm["ln_ic50"].to_numpy()
    drugs = list(train.obsm["ln_ic50"].columns)
    out = {}
    # the issue's baseline: all shared genes, z-scored profiles, alpha 1000
    shared = train.var_names[train.var_names.isin(next(iter(files.values())).var_names)]
    x_all = profiles_from_expression(np.asarray(train.X), train.var_names, shared)
    ridge_issue = Ridge(x_all, y, 1000.0)
    x = profiles_from_expression(np.asarray(train.X), train.var_names, genes, scale=scale)
    ridge = Ridge(x, y, ALPHAS)
    ridge_raw = Ridge(x, y, ALPHAS, standardise=False)
    pbs = {tag: pseudobulk(c) for tag, c in files.items()}
    pb_x = {
        tag: profiles_from_counts(pb.X, pb.var_names, genes, scale=scale) for tag, pb in pbs.items()
    }
    needed = np.zeros(len(drugs), dtype=bool)
    for tag in files:
        meas = train.uns["_held_measured"][tag]
        needed |= meas.notna().all(axis=0).to_numpy()
    boost = boosting(x, y, list(pb_x.values()), needed)
    own = {}
    if held_bulk is not None:  # the held-out lines' GDSC profiles: ranking with perfect inputs
        xh = profiles_from_expression(held_bulk.to_numpy(), held_bulk.columns, genes, scale=scale)
        index = held_bulk.index
        own["Ridge a=3162, the lines' own GDSC profiles"] = Ridge(x, y, 3162.0)(xh)
        own["RidgeCV, the lines' own GDSC profiles"] = ridge(xh)
    for (tag, cells), boost_pred in zip(files.items(), boost, strict=True):
        pb = pbs[tag]
        frame = lambda v, idx=pb.obs_names: pd.DataFrame(v, index=idx, columns=drugs)  # noqa: E731
        z = profiles_from_counts(pb.X, pb.var_names, shared)
        out.setdefault("Ridge a=1000, pseudobulk (issue's)", {})[tag] = frame(ridge_issue(z))
        out.setdefault("RidgeCV, pseudobulk", {})[tag] = frame(ridge(pb_x[tag]))
        out.setdefault("RidgeCV, pseudobulk, genes not standardised", {})[tag] = frame(
            ridge_raw(pb_x[tag])
        )
        sm = profiles_from_counts(cells.X, cells.var_names, genes, n_neighbors=SMOOTH, scale=scale)
        cell_pred = pd.DataFrame(ridge(sm), index=cells.obs_names, columns=drugs)
        out.setdefault("RidgeCV, smoothed cells", {})[tag] = line_means(cell_pred, cells)
        out.setdefault("Boosting, pseudobulk", {})[tag] = frame(boost_pred)
        for name, pred in own.items():
            out.setdefault(name, {})[tag] = pd.DataFrame(pred, index=index, columns=drugs).loc[
                pb.obs_names
            ]
    return out


# --- scdl ----------------------------------------------------------------------------------


def fit_scdl(train, target, seed: int, **kwargs):
    import scvi

    from scdl.models import DrugResponseModel

    scvi.settings.seed = seed
    a = train.copy()
    DrugResponseModel.setup_anndata(a, response_key="ln_ic50")
    model = DrugResponseModel(a, target=target, **kwargs)
    with measure() as m:
        model.train(enable_progress_bar=False)
    return model, m["seconds"]


def held_out_split(bulk, files):
    """The bulk lines without the files' lines (their measurements in
    ``uns["_held_measured"]``, per file; their GDSC profiles in ``uns["_held_bulk"]``), the
    held-out measurements and the files' cells."""
    lines = sorted(set().union(*(c.obs["cell_line_key"].unique() for c in files.values())))
    held = bulk.obs["cell_line_key"].isin(lines).to_numpy()
    train = bulk[~held].copy()
    measured = bulk[held].obsm["ln_ic50"].copy()
    measured.index = bulk[held].obs["cell_line_key"].to_numpy()
    meas = {tag: measured.loc[sorted(c.obs["cell_line_key"].unique())] for tag, c in files.items()}
    train.uns["_held_measured"] = meas
    train.uns["_held_bulk"] = pd.DataFrame(
        np.asarray(bulk[held].X),
        index=bulk[held].obs["cell_line_key"].to_numpy(),
        columns=bulk.var_names,
    )
    return train, meas, ad.concat(list(files.values()), join="inner")


def run_transfer(bulk, files, seed: int, variants: list[str], with_baselines: bool) -> dict:
    train, meas, target = held_out_split(bulk, files)
    preds, seconds = {}, {}
    reference = None  # the default model: its genes and input scale go to the baselines
    for name in variants:
        model, secs = fit_scdl(train, target, seed, **VARIANTS[name])
        seconds[name] = secs
        label = f"scdl {name}"
        preds[label] = {
            tag: line_means(model.predict(c, modality="counts"), c) for tag, c in files.items()
        }
        if name == "default":
            reference = model
            preds["scdl default, pseudobulk"] = {
                tag: model.predict(pseudobulk(c), modality="counts", smooth_neighbors=0)
                for tag, c in files.items()
            }
        print(f"  {label}: trained in {secs:.0f}s", flush=True)
    if with_baselines:
        if reference is None:
            reference, _ = fit_scdl(train, target, seed, n_ensemble=1)
        preds.update(baselines(train, files, reference.genes, reference.input_scale,
                               train.uns["_held_bulk"]))  # fmt: skip
    return {"preds": preds, "measured": meas, "seconds": seconds}


def transfer_scores(res: dict) -> pd.DataFrame:
    rows = []
    for name, by_file in res["preds"].items():
        row = {"method": name}
        for tag, pred in by_file.items():
            truth = res["measured"][tag]
            drugs = truth.columns[truth.notna().all(axis=0)]
            p = pred.loc[truth.index, drugs]
            rho = [spearmanr(p[d], truth[d])[0] for d in drugs if p[d].nunique() > 1]
            row[f"{tag}: Spearman"] = np.mean(rho) if rho else np.nan
            row[f"{tag}: EGFR"] = sum(
                p[d].nunique() > 1 and p[d].idxmin() == EGFR_LINE for d in EGFR_DRUGS
            )
            row[f"{tag}: drugs"] = len(drugs)
        rows.append(row)
    return pd.DataFrame(rows)


# --- bulk leave lines out ------------------------------------------------------------------


def run_fold(bulk, target, fold: int, folds: np.ndarray, seed: int, variant: str) -> dict:
    from scdl.data import profiles_from_expression

    train, test = bulk[folds != fold].copy(), bulk[folds == fold]
    model, secs = fit_scdl(train, target, seed, **VARIANTS[variant])
    scdl_pred = model.predict(test, modality="profiles").to_numpy()
    genes, scale = model.genes, model.input_scale
    y = train.obsm["ln_ic50"].to_numpy()
    with measure() as r:
        x = profiles_from_expression(np.asarray(train.X), train.var_names, genes, scale=scale)
        ridge = Ridge(x, y, ALPHAS)
    xt = profiles_from_expression(np.asarray(test.X), test.var_names, genes, scale=scale)
    print(f"  fold {fold}: scdl {secs:.0f}s, RidgeCV {r['seconds']:.0f}s", flush=True)
    out = {"rows": np.flatnonzero(folds == fold), "scdl": scdl_pred, "RidgeCV": ridge(xt)}
    for alpha in (1000.0, 3162.0):  # fixed penalties (ablation of the wide path's alpha)
        out[f"Ridge a={alpha:.0f}"] = Ridge(x, y, alpha)(xt)
    return out


def similar_line_groups(bulk, k: int = N_GROUPS, seed: int = 0) -> np.ndarray:
    """Label-free groups of similar lines: k-means of the lines' standardised profiles (GDSC
    ships no tissue labels)."""
    from sklearn.cluster import KMeans

    x = np.asarray(bulk.X, dtype=np.float64)
    sd = x.std(0)
    sd[sd < 1e-4 * np.median(sd)] = np.inf  # genes flat across lines carry nothing
    return KMeans(k, n_init=10, random_state=seed).fit_predict((x - x.mean(0)) / sd)


def _within_groups(p, y, groups, fold_of) -> float:
    """Mean Spearman over (drug, group, fold) with >= 8 held-out lines measured: ranking
    similar lines, as the five-line check ranks five lung lines."""
    rho = []
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j]) & ~np.isnan(p[:, j])
        for g in np.unique(groups):
            for f in np.unique(fold_of):
                sel = ok & (groups == g) & (fold_of == f)
                if sel.sum() >= 8 and np.std(p[sel, j]) > 0:
                    rho.append(spearmanr(p[sel, j], y[sel, j])[0])
    return float(np.mean(rho)) if rho else np.nan


def cv_scores(bulk, results: list[dict]) -> pd.DataFrame:
    y = bulk.obsm["ln_ic50"].to_numpy()
    rows = []
    keys = [k for k in results[0] if k != "rows"]
    pred = {k: np.full(y.shape, np.nan) for k in keys}
    fold_of = np.full(len(y), -1)
    for i, res in enumerate(results):
        fold_of[res["rows"]] = i
        for k in pred:
            pred[k][res["rows"]] = res[k]
    groups = similar_line_groups(bulk)
    rho = {}
    for k, p in pred.items():
        r = np.full(y.shape[1], np.nan)
        for j in range(y.shape[1]):
            ok = ~np.isnan(y[:, j]) & ~np.isnan(p[:, j])
            if ok.sum() >= 10:
                r[j] = spearmanr(p[ok, j], y[ok, j])[0]
        rho[k] = r
    both = np.all([~np.isnan(r) for r in rho.values()], axis=0)
    for k in keys:
        r = rho[k][both]
        rows.append({"method": k, "folds": len(results), "drugs": int(both.sum()),
                     "mean per-drug Spearman": r.mean(),
                     "better than RidgeCV on": int((r > rho["RidgeCV"][both]).sum()),
                     f"within {N_GROUPS} groups of similar lines":
                         _within_groups(pred[k], y, groups, fold_of)})  # fmt: skip
    return pd.DataFrame(rows)


# --- driver --------------------------------------------------------------------------------


def _save(path: Path, obj) -> None:
    import pickle

    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _load(path: Path):
    import pickle

    with open(path, "rb") as f:  # our own cache files only
        return pickle.load(f)  # noqa: S301


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["transfer", "report"],
                   choices=["transfer", "cv", "report"])  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    p.add_argument("--no-baselines", action="store_true", help="scdl variants only")
    p.add_argument("--cv-variant", default="default", choices=list(VARIANTS))
    p.add_argument("--folds", nargs="+", type=int, default=list(range(N_FOLDS)))
    p.add_argument("--cache", type=Path, default=None, help="folder keeping finished parts")
    args = p.parse_args()
    bulk, files = load()
    cache = args.cache
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    transfers, cvs = {}, {}
    for seed in args.seeds:
        if "transfer" in args.parts:
            path = (
                None if cache is None else cache / f"transfer_{'-'.join(args.variants)}_s{seed}.pkl"
            )
            if path is not None and path.is_file():
                transfers[seed] = _load(path)
            else:
                print(f"(1) transfer, seed {seed}", flush=True)
                transfers[seed] = run_transfer(
                    bulk,
                    files,
                    seed,
                    args.variants,
                    seed == args.seeds[0] and not args.no_baselines,
                )
                if path is not None:
                    _save(path, transfers[seed])
        if "cv" in args.parts:
            folds = np.random.RandomState(seed + 1).permutation(bulk.n_obs) % N_FOLDS
            target = ad.concat(list(files.values()), join="inner")
            cvs[seed] = []
            for f in args.folds:
                path = None if cache is None else cache / f"cv_{args.cv_variant}_f{f}_s{seed}.pkl"
                if path is not None and path.is_file():
                    cvs[seed].append(_load(path))
                    continue
                res = run_fold(bulk, target, f, folds, seed, args.cv_variant)
                cvs[seed].append(res)
                if path is not None:
                    _save(path, res)
    if "report" not in args.parts:
        return
    if cache is not None and not transfers:
        for path in sorted(cache.glob("transfer_*_s*.pkl")):
            transfers[path.stem] = _load(path)
    if not transfers and not any(cvs.values()):
        raise SystemExit(
            "drug_response.py: nothing to report: no cached results"
            f"{f' in {cache}' if cache is not None else ''}; run the other parts first."
        )
    pd.set_option("display.width", 250)
    fmt = {"float_format": lambda v: f"{v:.3f}", "index": False}
    tables = []
    for seed, res in transfers.items():
        t = transfer_scores(res)
        t.insert(0, "seed", seed)
        tables.append(t)
    if tables:
        t = pd.concat(tables)
        print("\n(1) Transfer to unseen lines' cells: per drug, Spearman across the lines of the "
              "lines' mean prediction vs measured ln IC50 (mean over drugs); EGFR: inhibitors "
              f"(of {len(EGFR_DRUGS)}) ranking {EGFR_LINE} most sensitive")  # fmt: skip
        print(t.to_string(**fmt))
        if len(tables) > 1:
            cols = [c for c in t.columns if "Spearman" in c or "EGFR" in c]
            agg = t.groupby("method", sort=False)[cols].agg(["mean", "std"])
            print("\n    over seeds (baselines are seed-free: computed once)")
            print(agg.to_string(float_format=lambda v: f"{v:.3f}"))
    for seed, results in cvs.items():
        print(f"\n(2) Bulk GDSC2, leave lines out, seed {seed} ({args.cv_variant})")
        print(cv_scores(bulk, results).to_string(**fmt))


if __name__ == "__main__":
    main()
