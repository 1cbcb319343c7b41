"""Queries lacking some of the model's genes: the linear path refitted to them or not, and the
query's statistics blended in or not.

A query that lacks genes carrying more than 10% of the reference sketch cannot be placed beside
it, so ``adapt_to_query="auto"`` has no reference share to decide on, and the linear path is
refitted on the model's reference sample over the genes the query holds (``scdl.models._refit``).
This measures each choice there: every split of ``annotation.py``, its query cut to a random 80%
or 40% of its genes (and whole, for comparison), annotated by one model per split and seed, with
its linear path as trained ("trained": the model's reference sample removed) and refitted
("refit", the default), each with the blend 0 and 0.5 (and ``"auto"``). Logistic regression is
refitted on the genes the cut query holds. Forced-call and default-call macro-F1 and the Unknown
rate on known types, mean over the seeds per split.

    python benchmarks/annotation_missing_genes.py --seeds 0 1 2 [--out rows.csv]
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np
import pandas as pd
from annotation import _TRAINED, hvg, run_logreg, run_scdl, splits
from scipy import sparse
from sklearn.metrics import f1_score

FRACTIONS = (1.0, 0.8, 0.4)
BLENDS = (0.0, 0.5, "auto")


def annotate(model, query, blend, *, refit: bool):
    """The model's calls; ``refit=False``: with its reference sample removed for the call, so
    that the linear path stays as trained."""
    sample = model.module.reference_sample()
    if not refit and sample is not None:
        model.module.set_reference_sample(sparse.csr_matrix((0, model.module.n_genes)), [])
    try:
        return model.annotate_cells(query, adapt_to_query=blend, min_gene_overlap=0.05)[0]
    finally:
        if sample is not None:
            model.module.set_reference_sample(*sample)


def measure(seed: int, only: str | None = None) -> list[dict]:
    rows = []
    for name, ref, qry in splits():
        if only and not name.startswith(only):
            continue
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
            for linear, blend in itertools.product(("trained", "refit"), BLENDS):
                calls = annotate(model, cut, blend, refit=linear == "refit")
                forced, unknown = calls["label_forced"].to_numpy(), calls["is_unknown"].to_numpy()
                called = np.where(unknown, "Unknown", forced)
                rows.append(
                    {
                        "split": name,
                        "seed": seed,
                        "genes_kept": frac,
                        "linear": linear,
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=None, help="write every row to this CSV")
    parser.add_argument("--only", default=None, help="run one split (name prefix)")
    args = parser.parse_args()
    df = pd.DataFrame([row for seed in args.seeds for row in measure(seed, args.only)])
    if df.empty:
        raise SystemExit(
            f"annotation_missing_genes.py: no split's name starts with --only {args.only!r}."
        )
    if args.out:
        df.to_csv(args.out, index=False)
    for frac, part in df.groupby("genes_kept", sort=False):
        for value in ("f1", "f1_w_unknown", "unknown"):
            table = part.pivot_table(index="split", columns=["linear", "adapt"], values=value)
            if value != "unknown":  # logistic regression calls no cell Unknown
                table["logreg"] = part.groupby("split")["logreg_f1"].mean()
            table.loc["mean"] = table.mean()
            print(f"\nquery genes kept: {frac:.0%}, {value}\n" + table.round(3).to_string())
        per_seed = part.pivot_table(
            index=["split", "seed"], columns=["linear", "adapt"], values="f1"
        )
        for name, a, b in (
            ("blend - none (refit)", ("refit", "0.5"), ("refit", "0.0")),
            ("refit - trained (auto)", ("refit", "auto"), ("trained", "auto")),
        ):
            diff = per_seed[a] - per_seed[b]
            split_means = diff.groupby(level="split").mean()
            print(
                f"{name}: mean {split_means.mean():+.4f}, worst split {split_means.min():+.4f}; "
                "per seed "
                + ", ".join(f"{s}: {g:+.4f}" for s, g in diff.groupby(level="seed").mean().items())
            )


if __name__ == "__main__":
    main()
