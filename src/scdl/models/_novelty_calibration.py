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
#: a type counts as missing from a part only when the part would hold at least this many of
#: its cells at the reference's composition: a small donor lacks a rare type by chance
MIN_EXPECTED_CELLS = 3


def _share_held(labels: np.ndarray, cells: np.ndarray, other: np.ndarray) -> float:
    """Share of ``cells``' cells whose type ``other`` holds, over the types ``other`` would
    hold at least ``MIN_EXPECTED_CELLS`` of at the reference's composition (1 without any)."""
    n_types = int(labels.max()) + 1
    expected = np.bincount(labels, minlength=n_types) * (other.sum() / len(labels))
    counted = expected >= MIN_EXPECTED_CELLS
    own = np.bincount(labels[cells], minlength=n_types)[counted]
    held = np.bincount(labels[other], minlength=n_types)[counted] > 0
    return float(own[held].sum() / own.sum()) if own.sum() else 1.0


def _types_shared(labels: np.ndarray, fit: np.ndarray, play: np.ndarray) -> bool:
    """Whether the batch ``play`` and the rest ``fit`` hold the same types, each for at
    least ``BATCH_TYPE_SHARE`` of the other's cells (types too rare to be expected in a part
    of its size not counted)."""
    return (
        _share_held(labels, play, fit) >= BATCH_TYPE_SHARE
        and _share_held(labels, fit, play) >= BATCH_TYPE_SHARE
    )


#: at most this many parts are held out in turn: a reference of more batches holds out folds
#: of whole batches, as each part costs two clusterings. A cost bound, chosen on no benchmark
#: (every labelled set in ``../shared/data`` has at most 4 batches)
MAX_HELD_OUT_BATCHES = 8


def held_out_parts(batches: np.ndarray, min_cells: int, seed: int) -> list[np.ndarray]:
    """The parts of the reference held out in turn, as cell masks (see
    :func:`calibrate_threshold`): each batch of at least ``min_cells`` cells when there are
    at most ``MAX_HELD_OUT_BATCHES`` batches; else every batch, small ones included, in that
    many folds of about equal cells (largest batch first into the smallest fold, ties in an
    order drawn with ``seed``; folds under ``min_cells`` merged), so a part's size, and with it
    the noise of its clusters, does not depend on how finely the batches cut the reference.
    Parts under ``min_cells`` are left out."""
    levels, counts = np.unique(batches, return_counts=True)
    if len(levels) <= MAX_HELD_OUT_BATCHES:
        return [batches == b for b in levels[counts >= min_cells]]
    order = np.random.default_rng(seed).permutation(len(levels))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of, fold_cells = np.empty(len(levels), int), np.zeros(MAX_HELD_OUT_BATCHES)
    for i in order:
        fold_of[i] = int(np.argmin(fold_cells))
        fold_cells[fold_of[i]] += counts[i]
    # folds short of min_cells (small batches beside a large one) are merged, smallest two
    # first, so that their batches are held out together rather than not at all
    while ((fold_cells > 0) & (fold_cells < min_cells)).sum() >= 2:  # merged folds hold 0
        a, b = np.argsort(np.where(fold_cells > 0, fold_cells, np.inf))[:2]
        fold_of[fold_of == b], fold_cells[a], fold_cells[b] = a, fold_cells[a] + fold_cells[b], 0
    cell_fold = fold_of[np.searchsorted(levels, batches)]
    return [cell_fold == f for f in range(MAX_HELD_OUT_BATCHES) if fold_cells[f] >= min_cells]


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
    ``MAX_HELD_OUT_BATCHES`` batches, that many folds of whole batches: :func:`held_out_parts`);
    the part that plays the query is a
    sample of ``PROTOTYPE_MAX_CELLS`` cells when it holds more, as the profiles' part is.
    Without two such parts (warned when batches were given), ``n_halvings`` random halvings
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
    if batches is not None and len(np.unique(batches)) >= 2:
        parts = [(~play, play) for play in held_out_parts(batches, min_cells, seed)]
        if len(parts) < 2:
            warn_user(
                f"The reference's batches are too small to leave one out (fewer than two of "
                f"{min_cells} or more cells): the Unknown call is calibrated on random halves "
                "of the reference instead, and a shift between batches is not allowed for. "
                "Register a coarser `batch_key` (e.g. the sample rather than the lane) for a "
                "call calibrated across batches.",
                UserWarning,
            )
            parts = []
        # a batch of other types than the rest (sorted populations, one run each) is a new
        # composition, not a shift of known types: it cannot calibrate the call
        shared = [p for p in parts if _types_shared(labels, *p)]
        if parts and len(shared) < 2:
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
