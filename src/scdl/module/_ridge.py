"""Closed-form multi-drug ridge regression with a missing-response mask (NumPy).

One regression per drug (column of ``y``) on the rows where that drug is measured, solved in
the dual, since cell lines are fewer than genes: ``(K + alpha I) c = y`` with ``K = X X^T`` over
the drug's rows, genes and responses centred on those rows (which gives the intercept). Drugs
measured on the same rows share one factorisation, so ~300 drugs cost a few dozen solves.
With several ``alphas``, each drug takes the one with the smallest exact leave-one-out error
(as scikit-learn's ``RidgeCV``), from one eigendecomposition per group of drugs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

if TYPE_CHECKING:
    from collections.abc import Sequence


def fit_masked_ridge(
    x: np.ndarray, y: np.ndarray, alphas: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge weights (drugs x genes), intercepts (drugs) and each drug's alpha.

    Parameters
    ----------
    x
        Inputs (rows x genes), used as given (standardise them first for scikit-learn's
        ``StandardScaler`` + ``Ridge``).
    y
        Responses (rows x drugs), NaN where unmeasured. Every drug needs >= 3 measured rows.
    alphas
        One penalty (scikit-learn's units: squared errors summed over rows + alpha x squared
        weights), or several, chosen per drug by exact leave-one-out error.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    grid = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0 or (grid <= 0).any():
        raise ValueError(f"alphas must be positive numbers, got {alphas!r}.")
    gram = x @ x.T
    weight = np.zeros((y.shape[1], x.shape[1]))
    bias = np.zeros(y.shape[1])
    chosen = np.full(y.shape[1], grid[0])
    measured = ~np.isnan(y)
    masks, group = np.unique(measured.T, axis=0, return_inverse=True)
    group = np.asarray(group).ravel()
    for g, mask in enumerate(masks):
        cols = np.flatnonzero(group == g)
        if mask.sum() < 3:  # too few lines to fit (or to leave one out): predict their mean
            bias[cols] = y[mask][:, cols].mean(0) if mask.any() else 0.0
            continue
        xo = x[mask]
        x_mean = xo.mean(0)
        yo = y[mask][:, cols]
        y_mean = yo.mean(0)
        yc = yo - y_mean
        ko = gram[np.ix_(mask, mask)]
        ko = ko - ko.mean(0, keepdims=True) - ko.mean(1, keepdims=True) + ko.mean()
        if grid.size == 1:  # one penalty: a Cholesky solve is enough
            dual = scipy.linalg.solve(ko + grid[0] * np.eye(len(ko)), yc, assume_a="pos")
            w = ((xo - x_mean).T @ dual).T
            weight[cols] = w
            bias[cols] = y_mean - w @ x_mean
            continue
        # several penalties: each drug's exact leave-one-out choice, one eigendecomposition
        evals, evecs = np.linalg.eigh(ko)
        evals = np.clip(evals, 0, None)
        proj = evecs.T @ yc
        n = ko.shape[0]
        best = np.full(len(cols), np.inf)
        pick = np.zeros(len(cols), dtype=np.int64)
        for a, alpha in enumerate(grid):
            shrink = evals / (evals + alpha)
            fitted = evecs @ (shrink[:, None] * proj)
            # hat matrix of the centred problem + the intercept's 1/n
            hat = (evecs**2) @ shrink + 1.0 / n
            loo = ((yc - fitted) / (1.0 - hat)[:, None]) ** 2
            err = loo.mean(0)
            better = err < best
            best[better] = err[better]
            pick[better] = a
        alpha_cols = grid[pick]
        dual = evecs @ (proj / (evals[:, None] + alpha_cols[None, :]))
        w = ((xo - x_mean).T @ dual).T  # drugs x genes
        weight[cols] = w
        bias[cols] = y_mean - w @ x_mean
        chosen[cols] = alpha_cols
    return weight, bias, chosen
