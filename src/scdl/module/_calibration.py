"""What a drug-response ensemble keeps from its held-out cell lines: per drug, the bulk
median, the residual sd and the Spearman correlation of held-out predictions.

Pure numpy/pandas on the members' predictions; the model turns the residual sd into its
sensitive probability and the median into its label threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def heldout_predictions(
    members: np.ndarray, folds: np.ndarray, in_train: np.ndarray
) -> tuple[np.ndarray, str]:
    """Each line's held-out prediction (lines x drugs) and where it comes from.

    ``members``: K x lines x drugs. With K > 1 a training line's held-out prediction is the
    member that left its fold out, and a validation line's the members' mean; with K = 1
    validation lines have one (training lines get NaN), and without validation lines the
    training predictions stand in (source ``"training lines"``).
    """
    n_lines = members.shape[1]
    if members.shape[0] > 1:
        own = members[folds, np.arange(n_lines)]
        return np.where(in_train[:, None], own, members.mean(axis=0)), "left-out folds"
    if (~in_train).any():
        return np.where(in_train[:, None], np.nan, members[0]), "validation lines"
    return members[0], "training lines"


def drug_table(
    heldout: np.ndarray, y: np.ndarray, drugs: list[str], alphas: np.ndarray | None = None
) -> pd.DataFrame:
    """Per drug: ``n_lines`` measured, bulk ``median``, held-out ``residual_sd`` (missing
    ones: the median over drugs) and ``heldout_spearman``, and ``ridge_alpha`` (median over
    members; NaN without a wide path)."""
    from scipy.stats import spearmanr

    if not len(drugs) == y.shape[1] == heldout.shape[1]:
        raise ValueError(
            f"drug_table: {len(drugs)} drug names for {y.shape[1]} response columns and "
            f"{heldout.shape[1]} held-out ones; pass one name per column."
        )
    rows = []
    for j, drug in enumerate(drugs):
        measured = ~np.isnan(y[:, j])
        ok = measured & ~np.isnan(heldout[:, j])
        resid = heldout[ok, j] - y[ok, j]
        rho = spearmanr(heldout[ok, j], y[ok, j])[0] if ok.sum() > 2 else np.nan
        rows.append(
            {
                "drug": drug,
                "n_lines": int(measured.sum()),
                "median": float(np.median(y[measured, j])),
                "residual_sd": float(np.sqrt(np.mean(resid**2))) if ok.any() else np.nan,
                "heldout_spearman": float(rho),
            }
        )
    stats = pd.DataFrame(rows).set_index("drug")
    stats["ridge_alpha"] = np.nan if alphas is None else np.median(alphas, axis=0)
    stats["residual_sd"] = stats["residual_sd"].fillna(stats["residual_sd"].median())
    return stats
