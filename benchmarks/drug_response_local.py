"""Drug response, issue 18 ablation: do LOCAL models (the training lines most similar to the
query) transfer GDSC2 ln IC50 to unseen lines' cells better than the global ridge?

Hypothesis: a ridge over all ~900 lines of every tissue mostly learns between-tissue
differences, while ranking five lung lines needs the variation among similar lines. Variants,
all on the default model's inputs (normal quantiles of within-profile ranks over every gene
shared by bulk and cells, genes standardised by the training lines, cells averaged with their
15 nearest neighbours; similarity = Pearson correlation of those profiles):

- ``knn_{cell,line}_k{k}``: similarity-weighted (r clipped at 0) mean ln IC50 of the k most
  similar training lines measured for the drug; per cell (then the line's mean), or from the
  line's mean profile.
- ``lr_m{m}_{a3162,loo}``: the per-drug ridge refitted on the m training lines most similar to
  the query line's mean profile, alpha 3162 or per drug by leave-one-out (13 values).
  ``lrpool_``: neighbours of the whole file's pooled profile (transfer only; on bulk a query
  is one line, so it equals ``lr_``). ``lrcell_``: each cell's own neighbours and ridge.
- ``ens(x)``: the mean of the default model's prediction and x.

Checks, as ``drug_response.py`` (its data, folds and scores): five- and three-line files
(per-drug Spearman across lines of the lines' mean prediction, EGFR count) and bulk 5-fold
leave-lines-out (seed 0 folds; each held-out line's neighbours among the training folds only,
genes standardised by the training folds). ``mean3``: mean of the three Spearman scores.

Genes at the floor of the GDSC arrays (the same minimum value in every line: 171 of the 3,706
shared genes) have sd ~1e-5 across the lines (float noise); standardising by it blows their
single-cell values up to ~1e5 and the correlation then only sees them. They are set to 0 here.
(The default ridge gives them weight exactly 0, so its predictions are unaffected.)

    python benchmarks/drug_response_local.py                        # ~20 min on one core
    python benchmarks/drug_response_local.py --parts cv --folds 0 --cv-ms 400   # +10 min
    python benchmarks/drug_response_local.py --parts report
"""

from __future__ import annotations

import argparse
import pickle
import time
import warnings
from pathlib import Path

import anndata as ad
import drug_response as dr
import numpy as np
import pandas as pd
import scipy.linalg

warnings.filterwarnings("ignore")

KS = (10, 25, 50, 100)
MS = (50, 100, 150, 200, 400)
ALPHA_GRID = {"a3162": 3162.0, "loo": dr.ALPHAS}
GLOBAL = "scdl default (global ridge)"
BASELINES = ("Ridge a=1000, pseudobulk (issue's)", "RidgeCV, pseudobulk", "RidgeCV, smoothed cells")


# --- local predictors ----------------------------------------------------------------------


def standardiser(x):
    """Genes standardised by the training lines; genes constant across them set to 0."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0)
    flat = sd < 1e-3
    sd[flat] = 1.0

    def apply(v):
        out = (np.asarray(v, dtype=np.float64) - mu) / sd
        out[:, flat] = 0.0
        return out

    return apply


def corr(q, x):
    qc = q - q.mean(1, keepdims=True)
    xc = x - x.mean(1, keepdims=True)
    qc /= np.linalg.norm(qc, axis=1, keepdims=True)
    xc /= np.linalg.norm(xc, axis=1, keepdims=True)
    return qc @ xc.T


def knn_predict(sim, y, k):
    """sim: queries x lines; y: lines x drugs (NaN unmeasured) -> queries x drugs."""
    measured = ~np.isnan(y)
    y0 = np.nan_to_num(y)
    out = np.empty((sim.shape[0], y.shape[1]))
    for i, o in enumerate(np.argsort(-sim, axis=1)):
        mo = measured[o]
        w = np.clip(sim[i, o], 1e-6, None)[:, None] * (mo & (np.cumsum(mo, 0) <= k))
        out[i] = (w * y0[o]).sum(0) / w.sum(0)
    return out


def local_ridge(kq, gram, y, idx, alphas):
    """Ridge (with intercept) on the lines ``idx``, in kernel form from the training lines'
    ``gram`` and the query's kernel ``kq``; per drug on its measured lines; several alphas:
    per drug by exact leave-one-out (equals ``fit_masked_ridge`` on the same lines)."""
    grid = np.atleast_1d(alphas)
    ys = y[idx]
    masks, group = np.unique(~np.isnan(ys).T, axis=0, return_inverse=True)
    group = np.asarray(group).ravel()
    out = np.full(y.shape[1], np.nan)
    for g, mask in enumerate(masks):
        cols = np.flatnonzero(group == g)
        rows = idx[mask]
        yo = ys[mask][:, cols]
        ym = yo.mean(0) if mask.any() else np.nan
        if mask.sum() < 3:
            out[cols] = ym
            continue
        yc = yo - ym
        k = gram[np.ix_(rows, rows)]
        km0, kmm = k.mean(0), k.mean()
        kc = k - km0[None, :] - km0[:, None] + kmm
        q = kq[rows] - kq[rows].mean() - km0 + kmm
        if grid.size == 1:
            dual = scipy.linalg.solve(kc + grid[0] * np.eye(len(kc)), yc, assume_a="pos")
        else:
            evals, evecs = np.linalg.eigh(kc)
            evals = np.clip(evals, 0, None)
            proj = evecs.T @ yc
            best = np.full(len(cols), np.inf)
            pick = np.zeros(len(cols), dtype=int)
            for a, alpha in enumerate(grid):
                shrink = evals / (evals + alpha)
                fitted = evecs @ (shrink[:, None] * proj)
                hat = (evecs**2) @ shrink + 1.0 / len(kc)
                err = (((yc - fitted) / (1.0 - hat)[:, None]) ** 2).mean(0)
                better = err < best
                best[better], pick[better] = err[better], a
            dual = evecs @ (proj / (evals[:, None] + grid[pick][None, :]))
        out[cols] = q @ dual + ym
    return out


def local_ridges(xs, y, queries, ms, *, neighbours_of=None, prefix="lr"):
    """{prefix_m{m}_{alpha}: queries x drugs}; neighbours of each query, or of one pooled
    profile ``neighbours_of`` for all queries."""
    gram, kq = xs @ xs.T, queries @ xs.T
    ref = queries if neighbours_of is None else neighbours_of[None]
    order = np.argsort(-corr(ref, xs), axis=1)
    out = {}
    for m in ms:
        for tag, alphas in ALPHA_GRID.items():
            out[f"{prefix}_m{m}_{tag}"] = np.vstack(
                [
                    local_ridge(kq[i], gram, y, order[min(i, len(order) - 1), :m], alphas)
                    for i in range(len(queries))
                ]  # fmt: skip
            )
    return out


def model_inputs(train, target):
    """Training lines' standardised profiles, the standardiser, genes and responses."""
    from scdl.data import profiles_from_expression, select_model_genes

    genes = select_model_genes(train, target)
    x = profiles_from_expression(np.asarray(train.X), train.var_names, genes, scale="rank")
    st = standardiser(x)
    return st(x), st, genes, train.obsm["ln_ic50"].to_numpy()


# --- the checks ----------------------------------------------------------------------------


def transfer(bulk, files, seed: int) -> dict:
    from scdl.data import profiles_from_counts

    train, meas, target = dr.held_out_split(bulk, files)
    model, _ = dr.fit_scdl(train, target, seed)
    xs, st, genes, y = model_inputs(train, target)
    drugs = list(train.obsm["ln_ic50"].columns)
    preds = {}
    for tag, cells in files.items():
        t0 = time.perf_counter()
        glob = model.predict(cells, modality="counts")
        preds.setdefault(GLOBAL, {})[tag] = dr.line_means(glob, cells)
        sm = st(profiles_from_counts(cells.X, cells.var_names, genes, n_neighbors=15, scale="rank"))
        key = cells.obs["cell_line_key"].to_numpy()
        ln = sorted(np.unique(key))
        line_prof = np.vstack([sm[key == k].mean(0) for k in ln])
        per_line = {f"knn_line_k{k}": knn_predict(corr(line_prof, xs), y, k) for k in KS}
        per_line.update(local_ridges(xs, y, line_prof, MS))
        per_line.update(local_ridges(xs, y, line_prof, MS, neighbours_of=sm.mean(0),
                                     prefix="lrpool"))  # fmt: skip
        per_cell = {f"knn_cell_k{k}": knn_predict(corr(sm, xs), y, k) for k in KS}
        per_cell.update(local_ridges(xs, y, sm, (100,), prefix="lrcell"))
        for name, v in per_line.items():
            preds.setdefault(name, {})[tag] = pd.DataFrame(v, index=ln, columns=drugs)
        for name, v in per_cell.items():
            cp = pd.DataFrame(v, index=cells.obs_names, columns=drugs)
            preds.setdefault(name, {})[tag] = dr.line_means(cp, cells)
        print(f"  transfer, {tag}: {time.perf_counter() - t0:.0f}s", flush=True)
    dr.boosting = lambda x, y, xt, n, seed=0: [np.full((len(v), y.shape[1]), np.nan) for v in xt]
    base = dr.baselines(train, files, model.genes, model.input_scale)  # boosting skipped
    preds.update({f"BASE {name}": base[name] for name in BASELINES})
    return {"preds": preds, "measured": meas}


def cv_fold(bulk, target, folds, fold: int, seed: int, ms, with_base: bool) -> dict:
    train, test = bulk[folds != fold].copy(), bulk[folds == fold]
    xs, st, genes, y = model_inputs(train, target)
    from scdl.data import profiles_from_expression

    xt_raw = profiles_from_expression(np.asarray(test.X), test.var_names, genes, scale="rank")
    xt = st(xt_raw)
    out = {"rows": np.flatnonzero(folds == fold)}
    if with_base:
        model, _ = dr.fit_scdl(train, target, seed)
        out[GLOBAL] = model.predict(test, modality="profiles").to_numpy()
        x = profiles_from_expression(np.asarray(train.X), train.var_names, genes, scale="rank")
        out["BASE RidgeCV"] = dr.Ridge(x, y, dr.ALPHAS)(xt_raw)  # standardises itself
        out["BASE Ridge a=1000"] = dr.Ridge(x, y, 1000.0)(xt_raw)
        out.update({f"knn_line_k{k}": knn_predict(corr(xt, xs), y, k) for k in KS})
    out.update(local_ridges(xs, y, xt, ms))
    return out


# --- report --------------------------------------------------------------------------------


def with_ensembles(d: dict) -> dict:
    """Adds ens(x) = mean of the global ridge and x (dicts of frames per file, or arrays)."""
    out, g = dict(d), d[GLOBAL]
    for name, v in d.items():
        if name.startswith(("knn", "lr")):
            out[f"ens({name})"] = (
                {t: 0.5 * (g[t] + v[t]) for t in v} if isinstance(v, dict) else 0.5 * (g + v)
            )
    return out


def bulk_scores(bulk, by_fold: dict) -> pd.DataFrame:
    """Per-drug Spearman over the folds that have a variant (all five, or fold 0 alone)."""
    results = []
    for fold in sorted(by_fold):
        r = {k: v for k, v in by_fold[fold].items() if k != "rows"}
        r = {("RidgeCV" if k == "BASE RidgeCV" else k): v for k, v in with_ensembles(r).items()}
        results.append({**r, "rows": by_fold[fold]["rows"]})
    common = set.intersection(*(set(r) for r in results))
    c = dr.cv_scores(bulk, [{k: r[k] for k in r if k in common} for r in results])
    only0 = [k for k in results[0] if k not in common]
    if only0:
        c0 = dr.cv_scores(bulk, [results[0]])
        c = pd.concat([c, c0[c0["method"].isin(only0)]])
    c = c.set_index("method")
    for k in list(c.index):  # on bulk a query is one profile: per cell/pooled == per line
        for alias in ("knn_cell", "lrcell", "lrpool"):
            src = "knn_line" if alias == "knn_cell" else "lr_"
            if src in k:
                c.loc[k.replace(src, alias if alias == "knn_cell" else alias + "_")] = c.loc[k]
    c.loc["BASE RidgeCV, smoothed cells"] = c.loc["BASE RidgeCV, pseudobulk"] = c.loc["RidgeCV"]
    c.loc["BASE Ridge a=1000, pseudobulk (issue's)"] = c.loc["BASE Ridge a=1000"]
    return c


def report(res: dict, bulk, by_fold: dict) -> None:
    res = {**res, "preds": with_ensembles(res["preds"])}
    t = dr.transfer_scores(res).set_index("method")
    t = t[[c for c in t.columns if "drugs" not in c]]
    t.columns = ["5 lines", "EGFR 5", "3 lines", "EGFR 3"]
    if by_fold:
        c = bulk_scores(bulk, by_fold)
        t["bulk"] = c["mean per-drug Spearman"].reindex(t.index)
        t["bulk folds"] = c["folds"].reindex(t.index)
        t["mean3"] = t[["5 lines", "3 lines", "bulk"]].mean(1)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 300)
    print("\nTransfer (seed 0 model; local variants seed-free) and bulk leave-lines-out")
    print(t.to_string(float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["transfer", "cv", "report"],
                   choices=["transfer", "cv", "report"])  # fmt: skip
    p.add_argument("--folds", nargs="+", type=int, default=list(range(dr.N_FOLDS)))
    p.add_argument("--cv-ms", nargs="+", type=int, default=[50, 100, 150, 200],
                   help="local ridge sizes on bulk (400: ~6 min per fold)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(__file__).parent / "results" / "drug_local")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    bulk, files = dr.load()
    path = args.cache / f"transfer_s{args.seed}.pkl"
    if "transfer" in args.parts and not path.is_file():
        with open(path, "wb") as f:
            pickle.dump(transfer(bulk, files, args.seed), f)
    if "cv" in args.parts:
        folds = np.random.RandomState(args.seed + 1).permutation(bulk.n_obs) % dr.N_FOLDS
        target = ad.concat(list(files.values()), join="inner")
        for fold in args.folds:
            todo = [
                m
                for m in args.cv_ms
                if not (args.cache / f"cv_s{args.seed}_f{fold}_m{m}.pkl").is_file()
            ]
            base = args.cache / f"cv_s{args.seed}_f{fold}_base.pkl"
            t0 = time.perf_counter()
            out = cv_fold(bulk, target, folds, fold, args.seed, todo, not base.is_file())
            for m in todo:
                with open(args.cache / f"cv_s{args.seed}_f{fold}_m{m}.pkl", "wb") as f:
                    pickle.dump({k: v for k, v in out.items() if f"_m{m}_" in k}, f)
            if not base.is_file():
                with open(base, "wb") as f:
                    pickle.dump({k: v for k, v in out.items() if "lr_m" not in k}, f)
            print(f"  bulk fold {fold}: {time.perf_counter() - t0:.0f}s", flush=True)
    if "report" in args.parts:
        if not path.is_file():
            raise SystemExit(
                f"drug_response_local.py: nothing to report: {path} is missing; run the "
                "'transfer' part first (e.g. --parts transfer report)."
            )
        with open(path, "rb") as f:
            res = pickle.load(f)  # noqa: S301 (our own cache)
        by_fold = {}
        for q in sorted(args.cache.glob(f"cv_s{args.seed}_f*_*.pkl")):
            with open(q, "rb") as f:
                by_fold.setdefault(int(q.stem.split("_")[2][1:]), {}).update(pickle.load(f))  # noqa: S301
        by_fold = {k: v for k, v in by_fold.items() if GLOBAL in v}
        report(res, bulk, by_fold)


if __name__ == "__main__":
    main()
