"""Label-free resolution rules for ``tl.cluster(resolution="auto")``, compared on every case.

A case is one labelled set x space (PCA, scVI, scdl) x seed, read from the embeddings that
``clustering.py --embed-only --cache DIR`` wrote (the sets there plus the 12-type stress sets
``merged12`` / ``merged12s``). Each rule picks a partition without labels; reported: its ARI
against the annotated types, per case, and the mean and the worst over the cases of the ARI
and of the gap to the case's oracle (the best grid resolution, which needs the labels).

Each case is clustered on its space's own neighbour graph, as ``tl.cluster`` built it when the
rules were compared (stops 25-39). Since stops 50-51 ``tl.cluster`` averages a PCA's graph
(harmonised over a batch key) into the scdl latent's; ``clustering.py`` measures that, so the
scdl rows here are the latent's graph alone, not what ``tl.cluster`` ships (on CellBench 2,
seed 0: "auto" 1.000 here, 0.838 in ``clustering.py``).

    python benchmarks/clustering_rules.py --cache DIR --out rules.csv
    python benchmarks/clustering_rules.py --cache DIR --spaces scdl --scdl-neighbors 50 --quick
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from clustering import DATASETS, GRID, MERGED, PEER_NEIGHBORS, SPACES, load

warnings.filterwarnings("ignore")


def graph(rep: np.ndarray, n_neighbors: int, seed: int):
    """scanpy's neighbour graph of one space: its connectivities (``tl.cluster``'s graph for
    the scdl latent also averages in a PCA's; see the module notes)."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(np.zeros((len(rep), 1), dtype=np.float32))
    a.obsm["rep"] = rep
    kw = {"transformer": "sklearn"} if len(rep) >= 4096 else {}
    sc.pp.neighbors(a, n_neighbors=n_neighbors, use_rep="rep", random_state=seed, **kw)
    return a.obsp["connectivities"]


def grid_scan(g, rep, seed, max_cells=2000):
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from scdl.tl._resolution import leiden, silhouette

    idx = np.arange(len(rep))
    if len(idx) > max_cells:  # the cells silhouette() scores
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), max_cells, replace=False))
    labels, rows = [], []
    for r in GRID:
        lab = leiden(g, float(r), seed)
        labels.append(lab)
        two = 1 < len(np.unique(lab[idx])) < len(idx)
        rows.append(
            {
                "resolution": r,
                "n_clusters": len(np.unique(lab)),
                "silhouette": silhouette(rep, lab, seed=seed, max_cells=max_cells),
                # lower is better for Davies-Bouldin: negated so that every column is "max wins"
                "-DB": -davies_bouldin_score(rep[idx], lab[idx]) if two else np.nan,
                "CH": calinski_harabasz_score(rep[idx], lab[idx]) if two else np.nan,
            }
        )
    return pd.DataFrame(rows), labels


def pick(table: pd.DataFrame, tie: float = 0.01, rel: float = 0.0, col="silhouette") -> int:
    """Index of the highest resolution within ``tie`` (+ ``rel`` x best) of the best silhouette
    among partitions of two or more clusters."""
    ok = table[(table["n_clusters"] >= 2) & table[col].notna()]
    if ok.empty:
        return len(table) - 1
    best = ok[col].max()
    band = tie + rel * abs(best)
    return int(ok.index[ok[col] >= best - band].max())


def recursive(rep, n_neighbors, seed, *, margin=0.0, min_cells=None, max_depth=4, n_null=1):
    """Top-down: split a group by the silhouette rule on its own graph when the chosen split's
    silhouette beats that of the same rule on Gaussian data of the group's mean and covariance
    (+ ``margin``); recurse into the parts. Returns the leaf labels and the number of splits."""
    min_cells = min_cells or max(50, 3 * n_neighbors)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(rep), dtype=int)
    next_id = [1]

    def best_split(x):
        g = graph(x, min(n_neighbors, len(x) - 1), seed)
        table, labels = grid_scan(g, x, seed)
        i = pick(table)
        return labels[i], table.loc[i, "silhouette"], table.loc[i, "n_clusters"]

    def go(idx, depth):
        if len(idx) < min_cells or depth >= max_depth:
            return
        x = rep[idx]
        lab, s, k = best_split(x)
        if k < 2 or not np.isfinite(s):
            return
        mu, cov = x.mean(axis=0), np.cov(x, rowvar=False)
        null = []
        for _ in range(n_null):
            z = rng.multivariate_normal(mu, cov, size=len(x), method="eigh").astype(np.float32)
            _, s0, _ = best_split(z)
            null.append(s0 if np.isfinite(s0) else 0.0)
        if s <= max(null) + margin:
            return
        for c in np.unique(lab):
            sub = idx[lab == c]
            out[sub] = next_id[0]
            next_id[0] += 1
        for c in np.unique(lab):
            go(idx[lab == c], depth + 1)

    go(np.arange(len(rep)), 0)
    return np.unique(out, return_inverse=True)[1]


def hierarchical(rep, labels, table, seed, *, gate=1.0, tie=0.01, max_cells=1000):
    """The silhouette choice, then within each of its clusters the finer grid partitions
    restricted to it, scored by their silhouette among that cluster's cells alone; a cluster
    is split by its best (highest resolution within ``tie``) when that within-cluster
    silhouette is at least ``gate`` x the silhouette of the coarse choice."""
    from scdl.tl._resolution import silhouette

    i0 = pick(table)
    coarse = labels[i0]
    s_star = table.loc[i0, "silhouette"]
    final = coarse.astype(np.int64) * 10_000
    for c in np.unique(coarse):
        m = coarse == c
        if m.sum() < 50:
            continue
        scores = []
        for j in range(i0 + 1, len(GRID)):
            sub = labels[j][m]
            s = silhouette(rep[m], sub, seed=seed, max_cells=max_cells)
            scores.append((j, s))
        scores = [(j, s) for j, s in scores if np.isfinite(s)]
        if not scores:
            continue
        best = max(s for _, s in scores)
        j = max(j for j, s in scores if s >= best - tie)
        if best >= gate * s_star:
            final[m] += np.unique(labels[j][m], return_inverse=True)[1]
    return np.unique(final, return_inverse=True)[1]


def stability(g, labels, seed, n=2):
    """Mean ARI between each grid partition and the same resolution's Leiden with other seeds."""
    from sklearn.metrics import adjusted_rand_score

    from scdl.tl._resolution import leiden

    return np.array(
        [
            np.mean(
                [adjusted_rand_score(lab, leiden(g, float(r), seed + 100 + t)) for t in range(n)]
            )
            for r, lab in zip(GRID, labels)
        ]
    )


def leaving(g, labels) -> np.ndarray:
    """Per grid partition: the 90th percentile over cells of the share of their cluster's
    graph edge weight that leaves the cluster (its conductance, each cell counted once)."""
    from scipy import sparse

    c = sparse.csr_matrix(g.get_adjacency_sparse(attribute="weight"))
    deg = np.asarray(c.sum(1)).ravel()
    out = []
    for lab in labels:
        member = sparse.csr_matrix((np.ones(len(lab)), (np.arange(len(lab)), lab)))
        inside = np.asarray((c @ member).multiply(member).sum(1)).ravel()
        share = 1 - np.bincount(lab, weights=inside) / np.maximum(
            np.bincount(lab, weights=deg), 1e-12
        )
        out.append(np.quantile(share[lab], 0.9))
    return np.array(out)


def cases(cache: Path, datasets, seeds, spaces=SPACES):
    for d in datasets:
        adata, label_key, _ = load(d)
        truth = adata.obs[label_key].astype(str).to_numpy()
        for space in spaces:
            for seed in seeds:
                path = cache / f"{d}_{space}_{seed}.npy"
                if path.is_file():
                    yield d, space, seed, np.load(path), truth


def score_rules(
    d, space, seed, rep, truth, *, scdl_neighbors=30, recursive_too=False, quick=False
) -> dict:
    """ARI (and cluster count, ``... k``) of every rule on one case (``quick``: the shipped
    rule, resolutions 1.0 / 0.5 and the oracle only)."""
    from sklearn.metrics import adjusted_rand_score

    from scdl.tl._resolution import choose

    keep = truth != "NA"
    nn = scdl_neighbors if space == "scdl" else PEER_NEIGHBORS  # as clustering.py
    g = graph(rep, nn, seed)
    table, labels = grid_scan(g, rep, seed)
    ari = [adjusted_rand_score(truth[keep], lab[keep]) for lab in labels]
    ks = table["n_clusters"].to_numpy()

    def closest(k):  # grid resolution with the closest cluster count (the higher on ties)
        return max(range(len(GRID)), key=lambda j: (-abs(ks[j] - k), j))

    r = {"dataset": d, "space": space, "seed": seed, "n_types": len(set(truth[keep]))}
    r["oracle"], r["oracle k"] = max(ari), ks[int(np.argmax(ari))]
    for res in (1.0, 0.5):
        r[f"res {res}"], r[f"res {res} k"] = ari[GRID.index(res)], ks[GRID.index(res)]
    i = GRID.index(choose(table))  # tl.cluster(resolution="auto") as shipped
    r["auto (shipped)"], r["auto (shipped) k"] = ari[i], ks[i]
    if quick:
        return r
    for name, kw in {
        "silhouette (before)": {},
        "sil tie .02": {"tie": 0.02},
        "sil tie .05": {"tie": 0.05},
        "sil within 10%": {"tie": 0.0, "rel": 0.1},
        "sil within 20%": {"tie": 0.0, "rel": 0.2},
        "DB best": {"tie": 0.0, "col": "-DB"},
        "DB within 5%": {"tie": 0.0, "rel": 0.05, "col": "-DB"},
        "CH best": {"tie": 0.0, "col": "CH"},
    }.items():
        i = pick(table, **kw)
        r[name], r[f"{name} k"] = ari[i], ks[i]
    for floor in (0.3, 0.4, 0.5, 0.6, 0.8):  # the silhouette choice, never below `floor`
        i = max(pick(table), GRID.index(floor))
        r[f"max(sil, {floor})"], r[f"max(sil, {floor}) k"] = ari[i], ks[i]
    for gate in (1.0, 0.75, 0.5):
        lab = hierarchical(rep, labels, table, seed, gate=gate)
        k = len(np.unique(lab))
        name = f"hier gate {gate}"
        r[name], r[f"{name} k"] = adjusted_rand_score(truth[keep], lab[keep]), k
        j = closest(k)  # the same count from one Leiden run on the whole graph
        r[f"{name} -> res"], r[f"{name} -> res k"] = ari[j], ks[j]
    stab = stability(g, labels, seed)
    for thr in (0.9, 0.8):
        ok = [j for j in range(len(GRID)) if stab[j] >= thr and ks[j] >= 2]
        j = max(ok) if ok else pick(table)
        r[f"stable >= {thr}"], r[f"stable >= {thr} k"] = ari[j], ks[j]
    table["stability"] = stab
    leave = leaving(g, labels)  # graph conductance: the highest resolution that keeps it low
    for thr in (0.05, 0.1, 0.15):
        ok = [j for j in range(len(GRID)) if leave[j] <= thr and ks[j] >= 2]
        j = max(ok) if ok else 0
        r[f"leave p90 <= {thr}"], r[f"leave p90 <= {thr} k"] = ari[j], ks[j]
        j = max(j, GRID.index(choose(table)))
        r[f"max(shipped, leave p90 <= {thr})"] = ari[j]
        r[f"max(shipped, leave p90 <= {thr}) k"] = ks[j]
    j = pick(table, col="stability", tie=0.02)
    r["stability tie .02"], r["stability tie .02 k"] = ari[j], ks[j]
    if recursive_too:
        for name, kw in {"gauss-null": {}, "gauss-null +.02": {"margin": 0.02}}.items():
            lab = recursive(rep, nn, seed, **kw)
            k = len(np.unique(lab))
            r[name], r[f"{name} k"] = adjusted_rand_score(truth[keep], lab[keep]), k
            j = closest(k)
            r[f"{name} -> res"], r[f"{name} -> res k"] = ari[j], ks[j]
    r["scan"] = ";".join(
        f"{t.resolution}:{t.n_clusters}:{t.silhouette:.3f}:{t.stability:.2f}"
        for t in table.itertuples()
    )
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument(
        "--datasets", nargs="+", default=[*DATASETS, *MERGED], choices=[*DATASETS, *MERGED]
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--recursive", action="store_true", help="also the Gaussian-null recursive rule (slow)"
    )
    p.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    p.add_argument(
        "--scdl-neighbors", type=int, default=30, help="scdl's graph (tl.cluster's default 30)"
    )
    p.add_argument("--quick", action="store_true", help="the shipped rule, 1.0, 0.5, oracle")
    p.add_argument("--out", type=Path, default=None, help="write the per-case table as CSV")
    args = p.parse_args()
    rows = []
    for d, space, seed, rep, truth in cases(args.cache, args.datasets, args.seeds, args.spaces):
        t0 = time.time()
        rows.append(
            score_rules(
                d, space, seed, rep, truth, scdl_neighbors=args.scdl_neighbors,
                recursive_too=args.recursive, quick=args.quick,
            )
        )  # fmt: skip
        rows[-1]["seconds"] = time.time() - t0
        print(d, space, seed, f"{rows[-1]['seconds']:.0f}s", flush=True)
    if not rows:
        raise SystemExit(
            f"No cached embeddings for {args.datasets} x {args.spaces} x seeds {args.seeds} in "
            f"{args.cache}: write them first with `python benchmarks/clustering.py "
            f"--embed-only --cache {args.cache}` (same datasets and seeds)."
        )
    res = pd.DataFrame(rows)
    if args.out:
        res.to_csv(args.out, index=False)
    report(res)


def report(res: pd.DataFrame) -> None:
    rules = [c for c in res.columns
             if c not in ("dataset", "space", "seed", "n_types", "seconds", "scan")
             and not c.endswith(" k")]  # fmt: skip
    pd.set_option("display.width", 250)
    per_set = res.groupby(["dataset", "space"], sort=False)[rules].mean()
    print("\nARI, mean over seeds, per set and space:")
    print(per_set.to_string(float_format=lambda v: f"{v:.3f}"))
    gap = res[rules].sub(res["oracle"], axis=0)
    summary = pd.DataFrame(
        {
            "mean ARI": res[rules].mean(),
            "worst ARI gap": gap.min(),
            "mean gap": gap.mean(),
            "cases > 0.05 below oracle": (gap < -0.05).sum(),
        }
    )
    print(f"\nover {len(res)} cases (set x space x seed):")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    scdl = res[res["space"] == "scdl"]
    if not scdl.empty:
        sg = scdl[rules].sub(scdl["oracle"], axis=0)
        print(f"\nscdl space only ({len(scdl)} cases): mean ARI / worst gap to own oracle")
        print(pd.DataFrame({"mean": scdl[rules].mean(), "worst gap": sg.min()}).to_string(
            float_format=lambda v: f"{v:.3f}"))  # fmt: skip


if __name__ == "__main__":
    main()
