"""The cluster-novelty threshold, calibrated on the reference alone (:mod:`._novelty`'s notes):
parts of the reference play the query against the profiles of the rest.
"""

from __future__ import annotations

import numpy as np

from scdl._warnings import warn_user

from ._novelty import (
    N_HALVINGS,
    NOVELTY_MARGIN,
    _cluster_means_z,
    _novelty_of_clusters,
    _type_centroids,
    cluster_cells,
    novelty_genes,
    reference_prototypes,
)
from ._prototypes import PROTOTYPE_MAX_CELLS

#: share of a left-out batch's cells whose type the other batches hold, and of theirs that
#: it holds, for the batch to calibrate the Unknown call (a guard, not a tuned value)
BATCH_TYPE_SHARE = 0.9


def _types_shared(labels: np.ndarray, fit: np.ndarray, play: np.ndarray) -> bool:
    """Whether the batch ``play`` and the rest ``fit`` hold the same types, each for at
    least ``BATCH_TYPE_SHARE`` of the other's cells."""
    fit_labels, play_labels = labels[fit], labels[play]
    return (
        np.isin(play_labels, np.unique(fit_labels)).mean() >= BATCH_TYPE_SHARE
        and np.isin(fit_labels, np.unique(play_labels)).mean() >= BATCH_TYPE_SHARE
    )


#: at most this many parts are held out in turn: a reference of more batches holds out folds
#: of whole batches (drawn with the seed), as each part costs two clusterings. A cost bound,
#: chosen on no benchmark (every labelled set in ``../shared/data`` has at most 4 batches)
MAX_HELD_OUT_BATCHES = 8


def calibrate_threshold(
    x_log,
    labels: np.ndarray,
    batches: np.ndarray | None = None,
    *,
    quantile: float = 0.95,
    margin: float = NOVELTY_MARGIN,
    seed: int = 0,
    min_cells: int = 50,
    n_halvings: int = N_HALVINGS,
    prototypes: bool = True,
) -> tuple[float, str, list[int]]:
    """Cluster-novelty threshold from the reference alone (see the module notes).

    Each batch of at least ``min_cells`` cells is held out in turn (with more than
    ``MAX_HELD_OUT_BATCHES`` of them, that many folds of whole batches, drawn with ``seed``);
    the part that plays the query is a
    sample of ``PROTOTYPE_MAX_CELLS`` cells when it holds more, as the profiles' part is.
    Without two batches of at least ``min_cells`` cells, ``n_halvings`` random halvings
    (seeds ``seed``, ``seed + 1``, ...) each play both ways, and the percentile is taken over
    all their clusters together. ``prototypes``: each part's clusters are compared by the
    nearest of their type's profiles in the other part, its mean and its prototypes
    (:func:`type_prototypes`), as a query's are; ``False``: by the type's mean alone.

    Returns the threshold, how it was calibrated (``"leave-one-batch-out"`` or
    ``"split-half"``) and the genes compared (:func:`novelty_genes`).
    """
    n_types = int(labels.max()) + 1
    genes = novelty_genes(_type_centroids(x_log, labels, n_types))
    parts = []
    if batches is not None:
        levels, counts = np.unique(batches, return_counts=True)
        if (counts >= min_cells).sum() >= 2:
            parts = [(batches != b, batches == b) for b in levels[counts >= min_cells]]
            # a batch of other types than the rest (sorted populations, one run each) is a
            # new composition, not a shift of known types: it cannot calibrate the call
            shared = [p for p in parts if _types_shared(labels, *p)]
            if len(shared) < 2:
                n_apart = len(parts) - len(shared)
                warn_user(
                    f"The reference's batches hold different cell types ({n_apart} "
                    f"of {len(parts)} share fewer than {BATCH_TYPE_SHARE:.0%} of their cells' "
                    "types with the other batches), so leaving one batch out would play types "
                    "the rest lacks: the Unknown call is calibrated on random halves of the "
                    "reference instead, and a shift between batches is not allowed for.",
                    UserWarning,
                )
            parts = shared if len(shared) >= 2 else []
    if len(parts) > MAX_HELD_OUT_BATCHES:  # each part held out costs two clusterings
        order = np.random.default_rng(seed).permutation(len(parts))
        folds = [
            np.any([parts[i][1] for i in fold], axis=0)
            for fold in np.array_split(order, MAX_HELD_OUT_BATCHES)
        ]
        parts = [(~play, play) for play in folds]
    how = "leave-one-batch-out" if parts else "split-half"
    seeds = [seed] * len(parts)
    for h in range(0 if parts else n_halvings):
        half = np.random.default_rng(seed + h).random(len(labels)) < 0.5
        parts += [(half, ~half), (~half, half)]
        seeds += [seed + h] * 2
    done: dict = {}  # a halving's two halves each give the profiles once and play once

    def clusters_of(cells, part_seed):
        key = (cells.tobytes(), part_seed)
        if key not in done:
            (done[key],) = cluster_cells(x_log[cells], seed=part_seed)
        return done[key]

    scores, weights = [], []
    for (fit, play), part_seed in zip(parts, seeds):
        known = np.isin(labels, np.unique(labels[fit]))
        play = play & known  # a type only one part holds is new to the other
        if play.sum() < 10 or fit.sum() < 10:
            continue
        if play.sum() > PROTOTYPE_MAX_CELLS:  # played by a sample, as the profiles are made
            rows = np.random.default_rng(part_seed).choice(
                np.flatnonzero(play), PROTOTYPE_MAX_CELLS, replace=False
            )
            play = np.zeros_like(play)
            play[rows] = True
        centroids = _type_centroids(x_log[fit], labels[fit], n_types)
        protos = None
        if prototypes:
            own = fit.sum() <= PROTOTYPE_MAX_CELLS  # else a sample is clustered
            protos = reference_prototypes(
                x_log[fit],
                labels[fit],
                genes,
                seed=part_seed,
                clusters=clusters_of(fit, part_seed) if own else None,
            )
        q = x_log[play]
        clusters = clusters_of(play, part_seed)
        z, inv = _cluster_means_z(q, clusters)
        score, _ = _novelty_of_clusters(
            z, inv, labels[play], centroids, genes, mixture=False, prototypes=protos
        )
        scores.append(score)
        weights.append(np.bincount(inv))
    if not scores:
        return float("inf"), how, genes
    s, w = np.concatenate(scores), np.concatenate(weights).astype(float)
    order = np.argsort(s)
    cum = np.cumsum(w[order]) / w.sum()
    q = float(s[order][min(np.searchsorted(cum, quantile), len(s) - 1)])
    return q + margin, how, genes
