"""The annotator's "Unknown" call: clusters of the query unlike their predicted type.

A cell of a type absent from the reference is forced onto the nearest reference type; a cell
of a known type under a shift (chemistry, donor, stimulation) also moves away from its type.
Single cells are too noisy to tell these apart, and a shift moves every cell of the query.
So the call is made per cluster of the query, in a shift-corrected space:

1. the query is over-clustered on its own (PCA of its genes standardised by its own mean and
   sd, kNN graph, Leiden at ``resolution``);
2. each cluster's mean profile, standardised by the *query's* per-gene mean and sd (which
   removes a shift shared by the whole query), is compared with the mixture of the mean
   standardised reference profiles of the types its cells are predicted as, each weighted by
   its share of the cluster's cells (types holding at least ``MIXTURE_MIN_SHARE`` of them). A
   cluster can hold cells of two or more known types (the clustering merges close types, more
   so when the query's composition differs from the reference's); its mean is then their
   mixture, unlike the profile of its majority type alone. A cluster of a new type is called
   as one or more known types and matches their mixture no better. Each type enters the
   mixture as its mean or one of its *prototypes*, the profiles of its distinct states in the
   reference (:mod:`scdl.models._prototypes`), whichever mixture is nearest: a type whose
   cells hold two states (a coarse label, two conditions) has a mean unlike either;
3. the cluster's novelty is 1 - their cosine similarity over the 300 genes that tell the
   reference types apart best (largest variance of the types' standardised means; a fixed
   number keeps the score's scale the same whatever the vocabulary's size). Over the model's
   threshold, it is the first check's evidence that the cluster is new; its cells are
   ``"Unknown"`` when one check passes its threshold and that and the mixing check's
   (:mod:`scdl.models._mixing`) evidence sum above ``UNKNOWN_EVIDENCE``
   (:func:`unknown_score`).

The threshold is set on the reference alone (:func:`calibrate_threshold`): the reference is
split into a part that gives the type profiles and a part that plays the query (one batch
against the others when the reference has several batches, else ``N_HALVINGS`` random
halvings, each half both ways), and the threshold is the 95th percentile of all those
clusters' novelty (cells weighted) plus a
fixed ``margin`` for the shift a query brings beyond the reference's own. There each cluster
is compared with the profiles of its majority true type (its mean and the prototypes found in
the part that gives the profiles), as before the mixture, so a cluster of one type is judged
exactly as before and only a cluster that merges known types is compared with their mixture
(the margin was set for the majority rule; calibrating with the mixture would lower the
threshold for clusters of one type too). Models saved before the mixture compare a cluster with
its majority type's profile (``mixture=False``), and those saved before the prototypes with its
types' means alone (``prototypes=None``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from scdl._neighbors import query_knn_transformer
from scdl._rng import keeps_torch_threads
from scdl._warnings import scanpy_scratch
from scdl.data import log_normalize_counts

from ._knn import TorchKNN
from ._prototypes import PROTOTYPE_MAX_CELLS, nearest_profile_cosine, type_prototypes

#: Leiden resolution of the clusters the Unknown call is made on
NOVELTY_RESOLUTION = 1.0
#: added to the reference's own 95th percentile of cluster novelty (see module notes): the
#: smallest of a grid that kept one split's known types (Kang 1.5k) under 5% Unknown, chosen
#: under the majority rule of stop 30 and not chosen again since (benchmarks/README.md)
NOVELTY_MARGIN = 0.15
#: random halvings of a reference without batches whose clusters are pooled for the
#: percentile: one halving's percentile rests on a few dozen clusters and moved with the
#: halving's seed (sd 0.03-0.05, up to 0.1, on the benchmark's references of 450-3,700 cells)
N_HALVINGS = 4
#: genes compared: those whose standardised mean differs most between reference types
N_NOVELTY_GENES = 300
#: a predicted type enters a cluster's mixture when it holds at least this share of the
#: cluster's cells (the majority type always): a few stray calls do not make a mixture, and a
#: cluster of a new type whose calls scatter over unrelated types is compared with the type
#: most of them are called as
MIXTURE_MIN_SHARE = 0.25
_STD_FLOOR = 0.1


def log_normalize(x) -> sparse.csr_matrix:
    """log1p(CP10k) of a count matrix, as CSR float32 (sharing the index arrays of a sparse
    ``x`` without stored zeros: neither is changed in place)."""
    return log_normalize_counts(x, dtype=np.float32, share_index=True)


def _mean_sd(x_log, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sd of the cells (``weights``: each cell's weight; ``None``: equal)."""
    if weights is None:
        n = x_log.shape[0]
        mean = np.asarray(x_log.sum(0), dtype=np.float64).ravel() / n
        sq = np.asarray(x_log.multiply(x_log).sum(0), dtype=np.float64).ravel() / n
    else:
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        mean = np.asarray(x_log.T @ w, dtype=np.float64).ravel()
        sq = np.asarray(x_log.multiply(x_log).T @ w, dtype=np.float64).ravel()
    return mean, np.maximum(np.sqrt(np.maximum(sq - mean**2, 0.0)), _STD_FLOOR)


@keeps_torch_threads
@scanpy_scratch()
def cluster_cells(
    x_log,
    *,
    resolutions=(NOVELTY_RESOLUTION,),
    seed: int = 0,
    n_pcs: int = 30,
    device="cpu",
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Leiden clusters (one array per resolution) of cells on their own standardised PCA.

    Genes are scaled by the cells' own sd (the sparse matrix stays sparse; PCA centres
    implicitly), then scanpy's PCA, a kNN graph and Leiden (igraph). The graph is exact
    (scikit-learn's brute force; on a GPU ``device`` the same search as matrix products,
    :class:`TorchKNN`) up to :data:`scdl._neighbors.QUERY_EXACT_NEIGHBORS_MAX_CELLS` cells;
    above, on the CPU, scanpy's approximate search (pynndescent), since brute force grows with
    the square of the cells. ``stats``: the cells' :func:`_mean_sd`, when the caller has it
    already.
    """
    import anndata as ad
    import scanpy as sc

    n = x_log.shape[0]
    n_values = x_log.nnz if sparse.issparse(x_log) else np.count_nonzero(x_log)
    if n < 10 or n_values == 0:  # too few cells, or no counts (a PCA of zeros): one cluster
        return [np.zeros(n, dtype=int) for _ in resolutions]
    _, sd = stats if stats is not None else _mean_sd(x_log)
    scaled = sparse.csr_matrix(x_log @ sparse.diags((1.0 / sd).astype(np.float32)))
    a = ad.AnnData(scaled)
    if x_log.shape[1] < 3:  # ARPACK needs more genes than components: the genes themselves
        a.obsm["X_pca"] = scaled.toarray()
    else:
        sc.pp.pca(a, n_comps=max(2, min(n_pcs, n - 2, x_log.shape[1] - 1)), random_state=seed)
    k = min(15, n - 1)
    knn = TorchKNN(n_neighbors=k, device=device) if torch.device(device).type == "cuda" else None
    with warnings.catch_warnings():
        # scanpy sets the graph's diagonal in place: duplicated cells (shallow queries hold
        # many) make scipy warn about its own efficiency, which nobody can act on
        warnings.simplefilter("ignore", sparse.SparseEfficiencyWarning)
        sc.pp.neighbors(
            a,
            n_neighbors=k,
            transformer=knn or query_knn_transformer(n),
            random_state=seed,
            use_rep="X_pca",
        )
    out = []
    for r in resolutions:
        sc.tl.leiden(
            a, resolution=r, flavor="igraph", n_iterations=2, random_state=seed, key_added="c"
        )
        out.append(a.obs["c"].astype(int).to_numpy())
    return out


def content_order(x, names=None) -> np.ndarray:
    """An order of the rows of ``x`` by their content alone: each row's projection on fixed
    random weights (a seeded draw per column), so that a reordered matrix gets its rows back
    in the same order. Identical rows are ordered by ``names`` (e.g. the cells' obs_names:
    a graph over the cells tells them apart), else keep theirs."""
    projection = np.asarray(x @ np.random.default_rng(0).standard_normal(x.shape[1])).ravel()
    if names is None:
        return np.argsort(projection, kind="stable")
    return np.lexsort((np.asarray(names, dtype=str), projection))


def celltypist_resolution(n_cells: int) -> float:
    """CellTypist's Leiden resolution for the over-clustering of majority voting, by size."""
    if n_cells < 5_000:
        return 5.0
    return 10.0 if n_cells < 20_000 else 15.0 if n_cells < 40_000 else 20.0


@keeps_torch_threads
@scanpy_scratch()
def leiden_on_graph(graph, *, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clusters (igraph, as :func:`cluster_cells`) of a given cells x cells graph, e.g.
    the user's ``adata.obsp["connectivities"]`` from ``sc.pp.neighbors``."""
    import anndata as ad
    import scanpy as sc

    n = graph.shape[0]
    if n < 2:
        return np.zeros(n, dtype=int)
    holder = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(n)]))
    sc.tl.leiden(
        holder,
        adjacency=sparse.csr_matrix(graph),
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        random_state=seed,
        key_added="c",
    )
    return holder.obs["c"].astype(int).to_numpy()


def _cluster_means_z(x_log, clusters: np.ndarray, stats=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster mean profile standardised by the cells' own per-gene mean and sd."""
    ids, inv = np.unique(clusters, return_inverse=True)
    onehot = sparse.csr_matrix(
        (np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(ids), len(inv))
    )
    sizes = np.asarray(onehot.sum(1)).ravel()
    means = np.asarray((onehot @ x_log).todense(), dtype=np.float64) / sizes[:, None]
    mean, sd = stats if stats is not None else _mean_sd(x_log)
    return (means - mean) / sd, inv


def _scored_genes(n_genes: int, genes, present=None) -> np.ndarray:
    """Mask of the scored ``genes`` among ``n_genes``, less those not ``present``."""
    keep = np.zeros(n_genes, dtype=bool)
    keep[np.asarray(genes, dtype=int)] = True
    if present is not None:
        keep &= np.asarray(present, dtype=bool)
    return keep


def _cosine_to(z: np.ndarray, centroids: np.ndarray, genes, present=None) -> np.ndarray:
    keep = _scored_genes(z.shape[1], genes, present)
    z, centroids = z[:, keep], centroids[:, keep]
    dots = z @ centroids.T
    norms = np.linalg.norm(z, axis=1)[:, None] * np.linalg.norm(centroids, axis=1)[None]
    return dots / np.maximum(norms, 1e-8)


def _cosine_rowwise(z: np.ndarray, targets: np.ndarray, genes, present=None) -> np.ndarray:
    """The cosine of each row of ``z`` with the same row of ``targets`` (the diagonal of
    :func:`_cosine_to`, without its rows x rows matrices: the peak of a query of thousands of
    clusters)."""
    keep = _scored_genes(z.shape[1], genes, present)
    z, targets = z[:, keep], targets[:, keep]
    norms = np.linalg.norm(z, axis=1) * np.linalg.norm(targets, axis=1)
    return np.einsum("ij,ij->i", z, targets) / np.maximum(norms, 1e-8)


def _novelty_of_clusters(
    z, inv, labels, centroids, genes, present=None, mixture=True, prototypes=None
):
    """1 - cosine of each cluster's standardised mean ``z`` with the mixture of its cells'
    types' ``centroids`` (weighted by their shares, those of at least ``MIXTURE_MIN_SHARE``;
    ``mixture=False``: the majority type's centroid alone), and each cluster's majority
    type. ``prototypes`` (profiles and their types, :func:`type_prototypes`): each type's
    profile in the mixture is the nearest of its centroid and its prototypes."""
    weights = np.zeros((len(z), centroids.shape[0]))
    np.add.at(weights, (inv, np.asarray(labels, dtype=int)), 1.0)
    weights /= weights.sum(1, keepdims=True)
    majority = weights.argmax(1)
    keep = weights >= MIXTURE_MIN_SHARE if mixture else np.zeros(weights.shape, dtype=bool)
    keep[np.arange(len(z)), majority] = True
    weights = np.where(keep, weights, 0.0)
    weights /= weights.sum(1, keepdims=True)
    if prototypes is not None and len(prototypes[1]):
        genes_kept = _scored_genes(z.shape[1], genes, present)
        cos = nearest_profile_cosine(z, weights, centroids, *prototypes, genes_kept)
        return 1.0 - cos, majority
    return 1.0 - _cosine_rowwise(z, weights @ centroids, genes, present), majority


#: a cluster past one check's threshold is "Unknown" only when the two checks' evidence, each in
#: units of its own threshold, also sums above this (:func:`unknown_evidence`): the other check
#: must not say the cluster is like the reference. Not fitted on the reference: at stop 38 the
#: smallest of 1.4-1.7 that kept known types' cells Unknown at <= 5% on every benchmark split,
#: a bound one known query cluster set (CellBench H1975 at 1.59); that cluster now sums
#: 1.72-1.80 and is Unknown (benchmarks/README.md, "Where the constants come from"). The
#: margin and the mixing floor were bound the same way
UNKNOWN_EVIDENCE = 1.6


def unknown_evidence(novelty, threshold: float, share, min_share: float) -> np.ndarray:
    """The two checks' evidence that a cluster is new, summed: its novelty over the novelty
    threshold (1 at the threshold) plus its mixing deficit, ``(0.5 - share) / (0.5 -
    min_share)`` (0 where the cluster mixes fully with the reference, 1 at the floor,
    negative where it has more reference neighbours than query ones). A cluster of a known type
    under a shift mostly moves on one of them; a new type, often on both. NaN where ``share``
    is (the mixing check was not made)."""
    novelty = np.asarray(novelty, dtype=np.float64)
    deficit = (0.5 - np.asarray(share, dtype=np.float64)) / (0.5 - min_share)
    return novelty / threshold + deficit


def unknown_score(
    novelty, threshold: float, share, min_share, evidence, level: float = 0.5
) -> np.ndarray:
    """Per-cell score of the cluster call; a cell is ``"Unknown"`` where it exceeds 1.

    ``evidence`` (a model's ``unknown_evidence_``): the smaller of the stronger check's
    evidence (novelty / threshold, or the mixing deficit of :func:`unknown_evidence`) and their
    sum over ``evidence``: above 1 when one check passes its threshold and the two sum above
    ``evidence`` (a call by one check stands unless the other says the cluster is like the
    reference: a novelty just past its threshold needs a mixing deficit, a share just below
    the floor some novelty). Where the mixing check was not made (NaN share: a query lacking
    the sketch's genes, e.g. another tissue's panel), the novelty's alone. ``evidence=None``
    (models saved before this rule): the stronger check's evidence (either check past its
    threshold calls); without ``min_share`` (models saved before the sketch) the novelty's
    alone. NaN (never Unknown) where the novelty is (a query too small for the call).
    ``level``: the share that counts as fully mixed (:func:`scdl.models._mixing.mixing_level`;
    0.5 unless the whole query is shifted); shares are read relative to it, the floor too. NaN
    (a call without the mixing check records it so) reads as 0.5.
    """
    novelty = np.asarray(novelty, dtype=np.float64) / threshold
    if min_share is None:
        return novelty
    level = 0.5 if np.isnan(level) else level
    if not level > 0:
        raise ValueError(f"level must be a share > 0, got {level!r}.")
    share = np.asarray(share, dtype=np.float64) * (0.5 / level)
    deficit = (0.5 - share) / (0.5 - min_share)
    stronger = np.where(np.isnan(novelty), np.nan, np.fmax(novelty, deficit))
    if evidence is None:
        return stronger
    # the sum alone (both checks part of the way) also called clusters that neither check
    # calls: a stimulated monocyte cluster at 0.85 of both thresholds on a one-donor reference
    # flipped with the query's composition (benchmarks/README.md)
    corroborated = np.fmin(stronger, (novelty + deficit) / evidence)
    # without the mixing check the novelty threshold, calibrated for use alone, decides:
    # counting the missing check as neutral (1.6 novelty thresholds needed) kept most cells of
    # another tissue known to a PBMC annotator (benchmarks/README.md)
    return np.where(np.isnan(share), novelty, corroborated)


def unknown_clusters(
    novelty, threshold: float, share, min_share, evidence, level: float = 0.5
) -> np.ndarray:
    """Per-cell Unknown flags of the cluster call: :func:`unknown_score` above 1."""
    with np.errstate(invalid="ignore"):
        return unknown_score(novelty, threshold, share, min_share, evidence, level) > 1


#: beyond this total-variation distance between the query's predicted composition and the
#: reference's, the query's own statistics no longer stand for a shift it shares (a sorted
#: population's mean is its own profile) and the Unknown call is flagged as unreliable
MAX_COMPOSITION_SHIFT = 0.5


def type_shares(n_cells: int, labels=None) -> np.ndarray:
    """Share of the cells per label code (empty without ``labels``), float32."""
    if labels is None or n_cells == 0:
        return np.zeros(0, dtype=np.float32)
    labels = np.asarray(labels).astype(int).ravel()
    return (np.bincount(labels) / len(labels)).astype(np.float32)


def composition_shift(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Total-variation distance between the query's predicted composition (label codes per
    cell) and the reference's (share per label code): the share of query cells that would
    have to change type to match it. NaN when the reference's composition is unknown."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    if reference.size == 0 or len(predicted) == 0:
        return float("nan")
    query = np.bincount(np.asarray(predicted, dtype=int), minlength=reference.size)
    query = query[: reference.size] / max(len(predicted), 1)
    return float(0.5 * np.abs(query - reference / reference.sum()).sum())


def novelty_genes(centroids: np.ndarray, n: int = N_NOVELTY_GENES) -> list[int]:
    """The ``n`` genes whose standardised mean varies most between the reference types."""
    return sorted(int(g) for g in np.argsort(-np.var(centroids, axis=0))[:n])


def cluster_novelty(
    x_log,
    clusters,
    predicted,
    centroids,
    genes,
    present=None,
    stats=None,
    *,
    mixture=True,
    prototypes=None,
):
    """Per-cell novelty of the cell's cluster and the cluster's majority predicted type.

    Parameters
    ----------
    x_log
        log1p(CP10k) of the cells (CSR, vocabulary order).
    clusters
        Per-cell cluster ids.
    predicted
        Per-cell predicted type (integer index into ``centroids``).
    centroids
        Mean reference profile of each type, standardised by the reference (types x genes).
    genes
        Indices of the genes compared (:func:`novelty_genes`).
    present
        Boolean mask of the genes the cells hold; the others are ignored.
    stats
        The cells' per-gene mean and sd (:func:`_mean_sd`), when the caller has them.
    mixture
        Compare with the mixture of the cluster's predicted types (see the module notes);
        ``False``: with its majority type's profile (models calibrated before the mixture).
    prototypes
        The reference types' prototype profiles and their types (:func:`type_prototypes`,
        standardised as ``centroids``): each type is compared by the nearest of its profiles.
        ``None``: by its centroid alone (models calibrated before the prototypes).
    """
    z, inv = _cluster_means_z(x_log, clusters, stats)
    centroids = np.asarray(centroids, dtype=np.float64)
    score, majority = _novelty_of_clusters(
        z, inv, predicted, centroids, genes, present, mixture, prototypes
    )
    return score[inv], majority[inv]


def reference_prototypes(x_log, labels, genes, *, seed: int = 0, stats=None, clusters=None):
    """:func:`type_prototypes` of a reference: its cells clustered as a query's are (at most
    ``PROTOTYPE_MAX_CELLS`` of them, drawn with ``seed``), the profiles standardised by
    ``stats`` (default: the cells' own mean and sd). ``clusters``: the cells' clusters when
    the caller has them (a reference within the cap)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if x_log.shape[0] > PROTOTYPE_MAX_CELLS:
        rows = np.random.default_rng(seed).choice(x_log.shape[0], PROTOTYPE_MAX_CELLS, False)
        rows = np.sort(rows)
        x_log, labels, clusters = x_log[rows], labels[rows], None
    own = _mean_sd(x_log)
    if clusters is None:
        (clusters,) = cluster_cells(x_log, seed=seed, stats=own)
    return type_prototypes(x_log, labels, clusters, own if stats is None else stats, genes)


def _type_centroids(x_log, labels: np.ndarray, n_types: int) -> np.ndarray:
    mean, sd = _mean_sd(x_log)
    out = np.zeros((n_types, x_log.shape[1]))
    for t in np.unique(labels):
        rows = labels == t
        out[t] = (np.asarray(x_log[rows].mean(0)).ravel() - mean) / sd
    return out
