"""How far a threshold can take the Unknown call's score on leave-one-type-out (issue 17 (b)).

Reads the per-cell calls that ``annotation.py --save-calls DIR`` writes (``loto_*`` files for
the leave-one-type-out runs, ``full_*`` for the splits' full references) and asks, for the
score the call thresholds at 1 (:func:`scdl.models._novelty.unknown_score`, recomputed from each
run's saved thresholds):

* **the ceiling**: per removal, the share of the removed type's cells above the threshold that
  leaves ``--known-rates`` (5% and 10%) of that query's known cells Unknown (a threshold chosen
  per query *with* the labels, which no rule has): what any rule that thresholds this score
  per query could reach at that known-cell rate. Over the cells with a score: cells of too few
  counts, which the call makes Unknown for that alone, have none (they count as missed);
* **query-relative rules**: a cluster is also Unknown where its score exceeds ``f`` and ``k``
  times the query's cell-weighted median cluster score (its own clusters as the null), over a
  grid of ``f`` and ``k``; the removed types' Unknown beside the known cells' (leave one type
  out, and the full splits).

No model is trained: the run is seconds.

    python benchmarks/annotation.py --seeds 0 --skip-scanvi --skip-speed --save-calls DIR
    python benchmarks/annotation_novelty_ceiling.py DIR [--known-rates 0.05 0.1]
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from scdl.models._novelty import unknown_score


def read_runs(folder: str) -> list[dict]:
    """Each saved run: its cells' cluster, score and truth, and the removed type (``loto_``)."""
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.csv.gz"))):
        stem = os.path.basename(path)[: -len(".csv.gz")]
        calls = pd.read_csv(path, index_col=0)
        with open(path[: -len(".csv.gz")] + ".json") as fh:
            th = json.load(fh)
        level = th.get("mixing_level")
        score = unknown_score(
            calls["cluster_novelty"].to_numpy(),
            th["cluster_threshold"],
            calls["cluster_reference_share"].to_numpy(),
            th["min_reference_share"],
            th["unknown_evidence"],
            0.5 if level is None else level,
        )
        removed = th.get("removed")
        if stem.startswith("loto_") and removed is None:
            print(f"{stem}: no removed type recorded (saved before it was); left out", flush=True)
        runs.append(
            {
                "stem": stem,
                "cluster": calls["cluster"].to_numpy(),
                "score": score,
                "unknown": calls["is_unknown"].to_numpy(bool),
                "truth": calls["truth"].astype(str).to_numpy(),
                "removed": removed,
            }
        )
    return runs


def ceiling(run: dict, known_rates) -> dict | None:
    """The removal's call, AUROC and the share a per-query threshold reaches at each known rate
    (a cluster's known cells share its score, so an impure cluster of the removed type is
    reached only at a rate that admits its known cells); ``None`` without a scored cell of the
    removed or of the known types."""
    y = run["truth"] == run["removed"]
    s, has = run["score"], np.isfinite(run["score"])
    if not ((has & y).any() and (has & ~y).any()):  # no cluster scored on one side
        return None
    row = {
        "run": run["stem"][len("loto_") :],
        "n_removed": int(y.sum()),
        "unknown_removed": float(run["unknown"][y].mean()),
        "unknown_known": float(run["unknown"][~y].mean()),
        "auroc": roc_auc_score(y[has], s[has]),
    }
    for rate in known_rates:
        cut = np.quantile(s[has & ~y], 1 - rate)
        row[f"ceiling_at_{rate:g}"] = float((has & y & (s > cut)).sum() / y.sum())
    return row


def relative_calls(run: dict, f: float, k: float) -> np.ndarray:
    """The call plus clusters over ``f`` and over ``k`` x the query's median cluster score."""
    has = np.isfinite(run["score"]) & (run["cluster"] >= 0)
    if not has.any():
        return run["unknown"].copy()
    s = run["score"][has]
    median = np.quantile(s, 0.5, method="lower")  # over cells: clusters weigh by their cells
    out = run["unknown"].copy()
    out[has] |= (s > f) & (s > k * median)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calls", help="the folder annotation.py --save-calls wrote")
    parser.add_argument("--known-rates", type=float, nargs="+", default=[0.05, 0.1])
    args = parser.parse_args()
    runs = read_runs(args.calls)
    loto = [r for r in runs if r["removed"] is not None]
    full = [r for r in runs if r["stem"].startswith("full_")]
    if not loto:
        raise SystemExit(f"no leave-one-type-out calls (loto_*.csv.gz) in {args.calls}")
    rows = [ceiling(r, args.known_rates) for r in loto]
    skipped = [r["stem"] for r, row in zip(loto, rows, strict=True) if row is None]
    if skipped:
        print(f"left out, no scored cell of the removed or the known types: {skipped}")
    table = pd.DataFrame([row for row in rows if row is not None])
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(f"\nmean over {len(table)} removals:")
    print(table.drop(columns=["run", "n_removed"]).mean().round(3).to_string())
    rows = []
    for f in (0.5, 0.6, 0.7, 0.8, 0.9):
        for k in (1.5, 2.0, 3.0, 4.0):
            removed, known = [], []
            for r in loto:
                calls, y = relative_calls(r, f, k), r["truth"] == r["removed"]
                removed.append(calls[y].mean())
                known.append(calls[~y].mean())
            whole = [relative_calls(r, f, k).mean() for r in full]
            rows.append(
                {
                    "f": f,
                    "k": k,
                    "loto_removed": np.mean(removed),
                    "loto_known": np.mean(known),
                    "full_known_mean": np.mean(whole) if whole else np.nan,
                    "full_known_worst": np.max(whole) if whole else np.nan,
                    "full_splits_over_5%": int(np.sum(np.asarray(whole) > 0.05)),
                }
            )
    base = [r["unknown"].mean() for r in full]
    print(
        "\nquery-relative rules (the call as it is: removed "
        f"{table['unknown_removed'].mean():.3f}, known {table['unknown_known'].mean():.3f}; "
        f"full splits known mean {np.mean(base) if base else np.nan:.3f}, worst "
        f"{np.max(base) if base else np.nan:.3f}):"
    )
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
