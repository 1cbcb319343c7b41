"""The annotator's linear path refitted for a query that lacks genes.

The linear path (an L2 logistic regression on each cell's centred log expression, fitted on the
reference before the transformer) weighs every vocabulary gene. A query lacking many of them
reads each as the reference's mean, which leaves the logits without genes they relied on, and
its counts per 10,000 are taken over the genes it holds. So after training the model keeps a
sample of its reference cells (:data:`REFERENCE_SAMPLE_CELLS`, every type in it; their counts and
labels); for a query lacking the sketch's genes (:func:`scdl.models._mixing.sketch_coverage`)
the regression is fitted again on that sample over the genes the query holds, the cells
normalised over those genes as the query's are. The transformer path is unchanged: it never
reads a gene a cell does not hold. Measured in benchmarks/README.md (stop 44).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from scdl.data import log_normalize_counts

#: reference cells the model keeps for the refit (as many as the sketch; all of them in most of
#: the benchmark's references, where a refit on half as many scored lower, benchmarks/README.md)
REFERENCE_SAMPLE_CELLS = 2_000
#: cells of every type (all of a smaller type) the sample holds before the rest is drawn; a
#: floor, not tuned: it binds only on types under 1% of a reference over 2,000 cells, which no
#: benchmark reference holds (their figures moved within the sample's own noise)
MIN_CELLS_PER_TYPE = 20
#: the linear path's L2 strength when the model does not record its own (models trained before)
DEFAULT_LINEAR_C = 0.01


def sample_rows(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sorted rows of the reference cells kept: all of them, or :data:`REFERENCE_SAMPLE_CELLS`
    drawn at random after up to :data:`MIN_CELLS_PER_TYPE` of every type (``labels``: one per
    cell; more than that number when the types' floors alone exceed it). A random draw alone
    from a large reference can miss a rare type, which the refitted path could then never call."""
    labels = np.asarray(labels).ravel()
    n_cells = len(labels)
    if n_cells <= REFERENCE_SAMPLE_CELLS:
        return np.arange(n_cells)
    rng = np.random.default_rng(seed)
    kept = np.zeros(n_cells, dtype=bool)
    for t in np.unique(labels):
        rows = np.flatnonzero(labels == t)
        kept[rng.choice(rows, min(len(rows), MIN_CELLS_PER_TYPE), replace=False)] = True
    rest = np.flatnonzero(~kept)
    n_more = max(REFERENCE_SAMPLE_CELLS - int(kept.sum()), 0)
    kept[rng.choice(rest, min(n_more, len(rest)), replace=False)] = True
    return np.flatnonzero(kept)


def linear_weights(clf, n_labels: int, n_genes: int, cols=None) -> tuple[np.ndarray, np.ndarray]:
    """The linear path's weight (types x genes) and bias from a fitted scikit-learn
    ``LogisticRegression`` over the genes ``cols`` (all when ``None``; the others weigh 0), in
    float64. A binary fit keeps one row in scikit-learn: the logits are +-w/2. A type the fit
    did not see gets a bias of -10, so this path never calls it."""
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
    cols = np.arange(n_genes) if cols is None else np.asarray(cols)
    weight = np.zeros((n_labels, n_genes))
    bias = np.full(n_labels, -10.0)
    weight[np.ix_(clf.classes_, cols)] = coef
    bias[clf.classes_] = icpt
    return weight, bias


def refit_linear(
    module, present: np.ndarray, C: float | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Weight and bias of the linear path fitted on the module's reference sample over the genes
    ``present`` (the others weigh 0), written for the module's centring (``x_log -
    gene_mean`` on the genes held); ``None`` when there is no sample, no linear path or fewer
    than two types in the sample."""
    from sklearn.linear_model import LogisticRegression

    sample = module.reference_sample()
    if sample is None or module.linear is None:
        return None
    counts, labels = sample
    cols = np.flatnonzero(np.asarray(present, dtype=bool))
    if np.unique(labels).size < 2 or cols.size == 0:
        return None
    # sparse and uncentred: with an unpenalised intercept the weights are those of the centred
    # fit (only the intercept absorbs the centre), and a large vocabulary is never densified
    x = log_normalize_counts(sparse.csr_matrix(counts)[:, cols], dtype=np.float64)
    clf = LogisticRegression(C=DEFAULT_LINEAR_C if C is None else C, max_iter=1000)
    clf.fit(x, labels)
    weight, bias = linear_weights(clf, *module.linear.weight.shape, cols=cols)
    # the module's linear path reads x_log - gene_mean on the genes held: the bias gives it back
    gene_mean = module.gene_mean.detach().cpu().numpy().astype(np.float64)
    bias += weight[:, cols] @ gene_mean[cols]
    device = module.linear.weight.device
    return (
        torch.as_tensor(weight, dtype=torch.float32, device=device),
        torch.as_tensor(bias, dtype=torch.float32, device=device),
    )
