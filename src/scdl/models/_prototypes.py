"""Profiles of the states within a reference type, for the Unknown call's first check.

A reference type can hold distinct states: a coarse label ("Monocytes" over CD14 and FCGR3A
monocytes), two conditions (control and stimulated cells), or labels that put some cells of a
neighbouring type under it. Its mean profile is then a mixture of its states, and a query
cluster of one state is unlike it, so it looks new. Each type is therefore also represented by
its *prototypes*: the mean profiles of its cells within each cluster of the reference (the
clustering a query gets, :func:`scdl.models._novelty.cluster_cells`) that holds at least
``PROTOTYPE_MIN_SHARE`` of the type's cells and ``PROTOTYPE_MIN_CELLS`` cells, and whose
cosine with the type's mean is below ``PROTOTYPE_MAX_COSINE`` (a distinct state). A query
cluster's novelty is its distance to the nearest of its type's profiles (its mean or a
prototype; for a cluster of several types, the nearest mixture of one profile per type). The
novelty threshold is calibrated with the same rule, each part of the reference compared with
the other part's prototypes, so the threshold falls with the extra profiles: a cluster is new
where it is unlike every state of the types it is called as.
"""

from __future__ import annotations

import itertools

import numpy as np

#: a reference cluster is a prototype of a type when it holds at least this share of the
#: type's cells (the type's minor states; a few stray cells of the type are not one)
PROTOTYPE_MIN_SHARE = 0.15
#: ... and at least this many of them
PROTOTYPE_MIN_CELLS = 20
#: ... and is a distinct state: its cosine with the type's mean (over the compared genes) is
#: below this. A cluster nearer the mean is the type itself; as a profile of its own it only
#: gives a new type's cluster called as the type more to match (a query's B cells called CD4 T
#: by a reference without B cells came within its threshold). Chosen by the mean over the
#: benchmark's splits of the removed types called Unknown (benchmarks/README.md, stop 47)
PROTOTYPE_MAX_COSINE = 0.9
#: prototypes are found on at most this many reference cells (a random sample beyond): the
#: clustering's exact neighbour graph costs cells squared, and calibration clusters every part
#: of the reference that gives the profiles
PROTOTYPE_MAX_CELLS = 10_000


def type_prototypes(
    x_log,
    labels: np.ndarray,
    clusters: np.ndarray,
    stats: tuple[np.ndarray, np.ndarray],
    genes=None,
    *,
    min_share: float = PROTOTYPE_MIN_SHARE,
    min_cells: int = PROTOTYPE_MIN_CELLS,
    max_cosine: float = PROTOTYPE_MAX_COSINE,
) -> tuple[np.ndarray, np.ndarray]:
    """Prototype profiles of the reference types and the type of each.

    Parameters
    ----------
    x_log
        log1p(CP10k) of the reference cells (CSR or dense, vocabulary order).
    labels
        Per-cell type codes.
    clusters
        Per-cell cluster ids of the reference.
    stats
        Per-gene mean and sd the profiles are standardised by (those of the type profiles
        they stand beside).
    genes
        Indices of the genes compared with the type's mean (default: all).

    Returns
    -------
    The prototypes' standardised mean profiles (prototypes x genes, float32) and their type
    codes (int64). A cluster holding all of a type's cells is none (its mean is the type's).
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    clusters = np.asarray(clusters).ravel()
    mean, sd = stats
    keep = np.ones(x_log.shape[1], dtype=bool) if genes is None else np.zeros(x_log.shape[1], bool)
    if genes is not None:
        keep[np.asarray(genes, dtype=int)] = True

    def profile(rows):
        return (np.asarray(x_log[rows].mean(0), dtype=np.float64).ravel() - mean) / sd

    profiles, owners = [], []
    for t in np.unique(labels):
        of_type = labels == t
        n_type = int(of_type.sum())
        type_mean = profile(of_type)[keep]
        for c in np.unique(clusters[of_type]):
            rows = of_type & (clusters == c)
            n = int(rows.sum())
            if n == n_type or n < min_cells or n < min_share * n_type:
                continue
            state = profile(rows)
            cosine = (
                state[keep]
                @ type_mean
                / max(np.linalg.norm(state[keep]) * np.linalg.norm(type_mean), 1e-8)
            )
            if cosine < max_cosine:
                profiles.append(state)
                owners.append(t)
    n_genes = x_log.shape[1]
    if not profiles:
        return np.zeros((0, n_genes), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.stack(profiles).astype(np.float32), np.asarray(owners, dtype=np.int64)


def nearest_profile_cosine(
    z: np.ndarray,
    weights: np.ndarray,
    centroids: np.ndarray,
    prototypes: np.ndarray,
    owners: np.ndarray,
    keep: np.ndarray,
) -> np.ndarray:
    """Per cluster, the largest cosine of its profile ``z`` with a mixture of one profile of
    each of its types (``weights``: clusters x types, rows summing to 1, zero for the types not
    in the mixture): the type's mean (``centroids``) or one of its ``prototypes``. Genes where
    ``keep`` is False are ignored."""
    z = np.asarray(z, dtype=np.float64)[:, keep]
    centroids = np.asarray(centroids, dtype=np.float64)[:, keep]
    prototypes = np.asarray(prototypes, dtype=np.float64)[:, keep]
    options = [
        np.vstack([centroids[t : t + 1], prototypes[owners == t]])
        for t in range(centroids.shape[0])
    ]
    out = np.empty(len(z))
    for i, row in enumerate(weights):
        types = np.flatnonzero(row)
        picks = itertools.product(*(range(len(options[t])) for t in types))
        index = np.array(list(picks), dtype=np.int64).reshape(-1, len(types))
        targets = sum(row[t] * options[t][index[:, j]] for j, t in enumerate(types))
        norms = np.linalg.norm(targets, axis=1) * np.linalg.norm(z[i])
        out[i] = np.max(targets @ z[i] / np.maximum(norms, 1e-8))
    return out
