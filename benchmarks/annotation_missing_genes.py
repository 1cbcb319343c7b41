"""Queries lacking some of the model's genes: the query's statistics blended in or not.

A query that lacks genes carrying more than 10% of the reference sketch cannot be placed beside
it, so ``adapt_to_query="auto"`` has no reference share to decide on. This measures what each
choice gives there: every split of ``annotation.py``, its query cut to a random 80% or 40% of its
genes (and whole, for comparison), annotated by one model per split and seed with the blend 0
and 0.5 (``"auto"`` is printed too). Logistic regression is refitted on the genes the cut query
holds (an advantage scdl's model, trained once on all genes, does not have). Forced-call and
default-call macro-F1 and the Unknown rate on known types, mean over the seeds per split.

    python benchmarks/annotation_missing_genes.py --seeds 0 1 2 [--out rows.csv]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
from annotation import _TRAINED, hvg, run_logreg, run_scdl, splits
from sklearn.metrics import f1_score

FRACTIONS = (1.0, 0.8, 0.4)
BLENDS = (0.0, 0.5, "auto")


def measure(seed: int) -> list[dict]:
    rows = []
    for name, ref, qry in splits():
        genes = hvg(ref)
        ref, qry = ref[:, genes].copy(), qry[:, genes].copy()
        truth = qry.obs.cell_type.to_numpy()
        labels = np.unique(truth)
        _TRAINED.clear()
        run_scdl(ref, qry, seed=seed, adapt_to_query=0.0)  # trains this split's model
        model = _TRAINED[id(ref)]
        for frac in FRACTIONS:
            rng = np.random.default_rng(100 + seed)
            keep = np.sort(rng.choice(qry.n_vars, int(round(frac * qry.n_vars)), replace=False))
            cut = qry[:, keep].copy()
            lr_pred, *_ = run_logreg(ref[:, cut.var_names].copy(), cut)
            for blend in BLENDS:
                calls, _ = model.annotate_cells(cut, adapt_to_query=blend, min_gene_overlap=0.05)
                forced, unknown = calls["label_forced"].to_numpy(), calls["is_unknown"].to_numpy()
                called = np.where(unknown, "Unknown", forced)
                rows.append(
                    {
                        "split": name,
                        "seed": seed,
                        "genes_kept": frac,
                        "adapt": str(blend),
                        "applied": calls.attrs["adapt_to_query"],
                        "f1": f1_score(truth, forced, average="macro", labels=labels),
                        "f1_w_unknown": f1_score(truth, called, average="macro", labels=labels),
                        "unknown": float(unknown.mean()),
                        "logreg_f1": f1_score(truth, lr_pred, average="macro", labels=labels),
                    }
                )
                print(pd.DataFrame([rows[-1]]).round(3).to_string(index=False, header=False))
    return rows


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=None, help="write every row to this CSV")
    args = parser.parse_args()
    df = pd.DataFrame([row for seed in args.seeds for row in measure(seed)])
    if args.out:
        df.to_csv(args.out, index=False)
    for frac, part in df.groupby("genes_kept", sort=False):
        table = part.pivot_table(
            index="split", columns="adapt", values=["f1", "f1_w_unknown", "unknown"]
        )
        per_seed = part.pivot_table(index=["split", "seed"], columns="adapt", values="f1")
        gain = (per_seed["0.5"] - per_seed["0.0"]).groupby(level="seed").mean()
        table["blend - none"] = table[("f1", "0.5")] - table[("f1", "0.0")]
        print(f"\nquery genes kept: {frac:.0%}\n" + table.round(3).to_string())
        print(
            f"mean blend - none {table['blend - none'].mean():+.4f}, worst split "
            f"{table['blend - none'].min():+.4f}; per seed "
            + ", ".join(f"{s}: {g:+.4f}" for s, g in gain.items())
        )


if __name__ == "__main__":
    main()
