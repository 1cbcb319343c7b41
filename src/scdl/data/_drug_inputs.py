"""Drug-response inputs on one scale: gene choice, profiles of bulk lines and of cells.

Bulk cell-line profiles (log-scale expression, e.g. GDSC's within-line z-scores) and
single-cell counts are brought to one scale across the model's genes: each profile is
z-scored, or its values replaced by normal quantiles of their ranks. Counts go through
log1p(counts per 10k) first, optionally averaged over each cell's nearest neighbours, since
one cell's counts are too sparse to look like a bulk profile.
Every function only reads its inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scdl._warnings import warn_user

from ._arguments import check_positive_int
from ._drug_checks import MIN_SHARED_GENES, shared_genes
from ._genes import gene_positions
from ._rows import get_matrix, read_columns

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData


def select_model_genes(
    bulk: AnnData | None,
    target: AnnData | None = None,
    target_layer: str | None = None,
    *,
    bulk_layer: str | None = None,
    genes: Sequence[str] | pd.Index | np.ndarray | None = None,
    n_top_genes: int | None = None,
    min_detected: float = 0.0,
    genes_in_target: bool = True,
) -> pd.Index:
    """The genes a drug-response model uses: ``genes`` when given (checked against ``bulk``,
    and against ``target`` with ``genes_in_target``), else those shared by ``bulk`` and
    ``target`` (all of ``bulk``'s without a target),
    detected (count > 0) in at least ``min_detected`` of the target cells, then the
    ``n_top_genes`` that vary most across the bulk profiles (``bulk.layers[bulk_layer]``, or
    ``bulk.X``; read only when ``n_top_genes`` leaves genes out). ``genes_in_target``: every
    one of ``genes`` must be in ``target`` (where a network aligns to its values)."""
    if genes is not None:
        if isinstance(genes, str):  # iterated, it would be its letters
            raise TypeError(
                f"`genes` must be a list of gene names, got the string {genes!r}; for one "
                f"gene pass [{genes!r}]."
            )
        if isinstance(genes, set | frozenset):  # its order follows string hashing, which
            genes = sorted(map(str, genes))  # changes per session: the inputs' order with it
        genes = pd.Index([str(g) for g in genes])
        if genes.has_duplicates:
            # a repeated gene would enter the model twice, doubling its weight
            repeats = genes[genes.duplicated()].unique()
            raise ValueError(
                f"`genes` repeats {len(repeats)} gene(s) (e.g. {repeats[:5].tolist()}); pass "
                "each gene once, e.g. `list(dict.fromkeys(genes))`."
            )
        if bulk is not None:
            shared_genes(genes, bulk.var_names, min_genes=1, names=("genes", "bulk genes"))
            missing = genes.difference(bulk.var_names)
            if len(missing):
                raise ValueError(
                    f"{len(missing)} of `genes` are not in the bulk data (e.g. "
                    f"{missing[:5].tolist()}); pass genes of adata.var_names."
                )
        if target is not None and genes_in_target:
            # the network aligns to the target's values of these genes: one it lacks would be
            # a zero there, and the training lines' mean in predict()
            missing = genes.difference(target.var_names)
            if len(missing):
                raise ValueError(
                    f"{len(missing)} of `genes` are not in the target cells (e.g. "
                    f"{missing[:5].tolist()}); pass genes both hold, e.g. "
                    "`[g for g in genes if g in set(target.var_names)]`."
                )
        return genes
    if bulk is None:
        raise ValueError("Pass the bulk `adata` (or `genes=`) to build the model.")
    genes = bulk.var_names
    if target is not None:
        genes = shared_genes(
            bulk.var_names, target.var_names, query_var=target.var, query_name="target"
        )
        if min_detected > 0:
            x = get_matrix(target, target_layer)
            frac = detected_fraction(x, target.var_names.get_indexer(genes))
            kept = genes[frac >= min_detected]
            if len(kept) < MIN_SHARED_GENES:
                raise ValueError(
                    f"Only {len(kept)} shared genes are detected in at least "
                    f"{min_detected:.0%} of the target cells; lower `min_detected`."
                )
            genes = kept

    n_top = check_positive_int(n_top_genes, "n_top_genes", none="every gene")
    if n_top is None or n_top >= len(genes):
        return genes
    profiles = profiles_from_expression(get_matrix(bulk, bulk_layer), bulk.var_names, genes)
    return select_variable_genes(profiles, genes, n_top)


def select_variable_genes(profiles: np.ndarray, genes: pd.Index, n_top: int | None) -> pd.Index:
    """The ``n_top`` genes whose profiles vary most across cell lines (all if ``None``)."""

    n_top = check_positive_int(n_top, "n_top_genes", none="every gene")
    genes = pd.Index(genes)
    if n_top is None or n_top >= len(genes):
        return genes
    var = np.asarray(profiles, dtype=np.float64).var(axis=0)
    order = np.argsort(-var, kind="stable")[:n_top]
    return genes[np.sort(order)]


def detected_fraction(x, gene_idx: np.ndarray) -> np.ndarray:
    """Fraction of rows with a non-zero count, for each column in ``gene_idx``."""
    sub = x[:, gene_idx]
    if sparse.issparse(sub):
        return np.asarray((sub > 0).sum(axis=0)).ravel() / sub.shape[0]
    return (np.asarray(sub) > 0).mean(axis=0)


# --- profiles on one scale -----------------------------------------------------------------


def rank_gauss_rows(x: np.ndarray) -> np.ndarray:
    """Replace each row's values by normal quantiles of their ranks (ties share a rank).

    Only the order of genes within a profile is kept, so any monotone distortion between
    platforms (microarray saturation, log1p of sparse counts) leaves the result unchanged.
    """
    from scipy.special import ndtri
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    if x.shape[1] == 0:
        return x.astype(np.float32)
    ranks = rankdata(x, axis=1)
    return ndtri((ranks - 0.5) / x.shape[1]).astype(np.float32)


def zscore_rows(x: np.ndarray) -> np.ndarray:
    """Standardise each row across its columns (mean 0, sd 1); constant rows become 0."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return np.divide(x - mean, sd, out=np.zeros_like(x), where=sd > 0).astype(np.float32)


def _columns(x, positions: np.ndarray) -> np.ndarray:
    """Dense float64 columns of ``x`` at ``positions``; -1 gives a column of zeros."""
    present = positions >= 0
    out = np.zeros((x.shape[0], positions.size), dtype=np.float64)
    sub = x[:, positions[present]]
    out[:, present] = sub.toarray() if sparse.issparse(sub) else np.asarray(sub)
    return out


#: largest share of the rows one row is averaged over by :func:`neighbor_weights`
MAX_NEIGHBOR_SHARE = 0.2


def neighbors_used(n_rows: int, n_neighbors: int) -> int:
    """The neighbours each of ``n_rows`` rows is averaged over (itself included) when
    ``n_neighbors`` are asked for: at most a fifth of the rows (``MAX_NEIGHBOR_SHARE``); 0 when
    that leaves one or none (no averaging)."""
    k = min(int(n_neighbors), max(1, int(n_rows * MAX_NEIGHBOR_SHARE)))
    return k if k > 1 else 0


def neighbor_weights(
    profiles,
    n_neighbors: int,
    *,
    row_scale: np.ndarray | None = None,
    n_pcs: int = 30,
    random_state: int = 0,
) -> sparse.csr_matrix | None:
    """Sparse averaging matrix over each row's nearest neighbours (itself included) in PCA
    space of log1p(``profiles`` x ``row_scale``, each row scaled by its factor); None when no
    averaging is done.

    ``profiles`` (rows x genes, e.g. counts, with ``row_scale`` the factors to counts per 10k;
    sparse stays sparse: the PCA centres implicitly) are not densified. At most a fifth of the
    rows (``MAX_NEIGHBOR_SHARE``) are averaged: with ``n_neighbors`` near the number of rows
    every row took the mean of all, one prediction for a small query.
    """
    n = profiles.shape[0]
    k = neighbors_used(n, n_neighbors)
    if k == 0:
        return None
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    if sparse.issparse(profiles):
        logp = sparse.csr_matrix(profiles, dtype=np.float64, copy=True)
        if row_scale is not None:
            logp.data *= np.repeat(row_scale, np.diff(logp.indptr))
        logp.data = np.log1p(logp.data)
    else:
        logp = np.array(profiles, dtype=np.float64)
        if row_scale is not None:
            logp *= row_scale[:, None]
        logp = np.log1p(logp, out=logp)
    if not (logp.nnz if sparse.issparse(logp) else np.count_nonzero(logp)):
        return None  # every row empty in these genes: nothing to tell neighbours apart by
    n_comp = max(1, min(n_pcs, n - 1, profiles.shape[1] - 1))
    if profiles.shape[1] < 2:  # one gene: ARPACK needs more; the gene itself is the space
        emb = logp.toarray() if sparse.issparse(logp) else logp
    else:
        # exact PCA (ARPACK, as scanpy's default): sklearn's randomized solver samples over
        # the cells of a wide matrix, so each cell's neighbours depended on their order
        emb = PCA(n_components=n_comp, svd_solver="arpack", random_state=random_state)
        emb = emb.fit_transform(logp)
    idx = NearestNeighbors(n_neighbors=k).fit(emb).kneighbors(emb, return_distance=False)
    return sparse.csr_matrix(
        (np.full(idx.size, 1.0 / k), idx.ravel(), np.arange(0, idx.size + 1, k)), shape=(n, n)
    )


def profiles_from_counts(
    x,
    var_names: pd.Index,
    genes: pd.Index,
    *,
    n_neighbors: int = 0,
    target_sum: float = 1e4,
    scale: str = "zscore",
) -> np.ndarray:
    """Counts (cells or pseudobulk samples x genes) to profiles over ``genes``.

    log1p(counts per ``target_sum``; library size over all of ``var_names``), averaged over
    ``n_neighbors`` nearest neighbours when > 1, then each row put on a common scale across
    the ``genes`` present (``scale``: z-scores, or ``"rank"``: normal quantiles of the
    ranks); genes absent from ``var_names`` are set to 0 (the profile's mean). Sparse counts
    stay sparse and rows are made dense a block at a time: beyond the float32 result, memory
    holds the counts of ``genes``, a float64 copy of them during the neighbour search, and the
    neighbour graph. :func:`~scdl.data.iter_profiles_from_counts` gives the same rows a block
    at a time, without the whole result.
    """
    blocks = iter_profiles_from_counts(
        x, var_names, genes, n_neighbors=n_neighbors, target_sum=target_sum, scale=scale
    )
    return stack_blocks(blocks, x.shape[0], len(genes))


def iter_profiles_from_counts(
    x,
    var_names: pd.Index,
    genes: pd.Index,
    *,
    n_neighbors: int = 0,
    target_sum: float = 1e4,
    scale: str = "zscore",
    chunk_rows: int = 256,
) -> Iterator[np.ndarray]:
    """:func:`~scdl.data.profiles_from_counts` a block of at most ``chunk_rows`` rows at a
    time (float32, rows x ``genes``, in order), for steps that reduce each block (predictions,
    attributions): memory then grows with the number of cells only by the counts of
    ``genes`` (sparse stays sparse), their float64 copy during the neighbour search and the
    neighbour graph. The arguments are checked and the neighbours found on the call, before
    the first block (:class:`~scdl.data.CountProfiles`)."""

    check_positive_int(chunk_rows, "chunk_rows")  # on the call, not at the first block
    profiles = CountProfiles(
        x, var_names, genes, n_neighbors=n_neighbors, target_sum=target_sum, scale=scale
    )
    return profiles.blocks(chunk_rows)


class CountProfiles:
    """The rows of :func:`~scdl.data.profiles_from_counts`, made on demand.

    ``profiles[idx]`` (a slice, row positions or a boolean mask; an integer gives one row)
    gives those rows' profiles (float32, rows x ``genes``), as the whole-matrix function gives
    them.

    Holds the counts of ``genes`` (sparse stays sparse; 8-byte counts as float32 where that is
    exact), each row's library factor and the neighbour graph, not the dense rows x genes
    profiles: a model sampling minibatches of cells, or a step reducing blocks of them, never
    holds those whole. The arguments are checked and the neighbours found when it is made.

    Parameters
    ----------
    x, var_names, genes, n_neighbors, target_sum, scale
        As in :func:`~scdl.data.profiles_from_counts`.
    """

    def __init__(
        self,
        x,
        var_names: pd.Index,
        genes: pd.Index,
        *,
        n_neighbors: int = 0,
        target_sum: float = 1e4,
        scale: str = "zscore",
    ):
        _check_scale(scale)
        self.scale = scale
        self.positions = gene_positions(var_names, genes)
        self.present = self.positions >= 0
        # the genes' columns and each row's library, a backed matrix read once in blocks
        sub, library = read_columns(x, self.positions[self.present], row_totals=True)
        any_counts = bool((library > 0).any())
        library[library == 0] = 1.0
        self.to_cp = target_sum / library  # each row's factor to counts per target_sum
        # only the genes' counts are kept (a backed file's whole read is let go with x)
        self.counts = _narrow(sparse.csr_matrix(sub) if sparse.issparse(sub) else np.asarray(sub))
        nonzero = self.counts.nnz if sparse.issparse(self.counts) else np.count_nonzero(self.counts)
        if nonzero == 0 and any_counts:  # cells empty in every gene are said elsewhere
            warn_user(
                f"No cell has a count in the model's {int(self.present.sum())} genes the data "
                "hold (every value in them is 0): every cell gets the prediction of an empty "
                "cell. Pass the layer or file that holds those genes' counts.",
                UserWarning,
            )
        # a row is W[row] @ diag(to_cp) @ counts, W the neighbour average (none: the identity)
        self.weights = (
            neighbor_weights(self.counts, n_neighbors, row_scale=self.to_cp)
            if n_neighbors > 1
            else None
        )
        self.shape = (library.size, self.positions.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if not isinstance(idx, slice):
            # positions (a list, array or tensor; an integer gives one row), or a mask
            idx = np.atleast_1d(np.asarray(idx))
        if self.weights is None:
            block = sparse.diags(self.to_cp[idx]) @ self.counts[idx]
        else:
            # only the rows the neighbours of these rows are (W @ every row's counts made a
            # float64 copy of all of them per call)
            w = self.weights[idx]
            need = np.unique(w.indices)
            block = (w[:, need] @ sparse.diags(self.to_cp[need])) @ self.counts[need]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        out = np.zeros((block.shape[0], self.shape[1]), dtype=np.float32)
        out[:, self.present] = SCALES[self.scale](np.log1p(block.astype(np.float64, copy=False)))
        return out

    def blocks(self, chunk_rows: int = 256) -> Iterator[np.ndarray]:
        """The rows in order, ``chunk_rows`` at a time."""

        chunk_rows = check_positive_int(chunk_rows, "chunk_rows")

        def rows() -> Iterator[np.ndarray]:
            for start in range(0, len(self), chunk_rows):
                yield self[start : start + chunk_rows]

        return rows()


def _narrow(counts):
    """Counts stored in 8 bytes (int64, or float64 from a DataFrame) as float32 when that is
    exact (whole numbers below 2**24: any real count), halving what a model keeps."""
    values = counts.data if sparse.issparse(counts) else counts
    if values.dtype.itemsize <= 4:
        return counts
    narrow = values.astype(np.float32)
    if not np.array_equal(narrow, values):  # e.g. normalised values: kept as they are
        return counts
    if sparse.issparse(counts):
        return sparse.csr_matrix((narrow, counts.indices, counts.indptr), shape=counts.shape)
    return narrow


def profiles_from_expression(
    x, var_names: pd.Index, genes: pd.Index, *, scale: str = "zscore"
) -> np.ndarray:
    """Log-scale expression (e.g. GDSC's z-scores) to profiles over ``genes``.

    Each row is put on the common scale (``scale``, as in :func:`profiles_from_counts`);
    genes absent from ``var_names`` are set to 0 (the profile's mean).
    :func:`~scdl.data.iter_profiles_from_expression` gives the same rows a block at a time.
    """
    blocks = iter_profiles_from_expression(x, var_names, genes, scale=scale)
    return stack_blocks(blocks, x.shape[0], len(genes))


def iter_profiles_from_expression(
    x, var_names: pd.Index, genes: pd.Index, *, scale: str = "zscore", chunk_rows: int = 256
) -> Iterator[np.ndarray]:
    """:func:`~scdl.data.profiles_from_expression` a block of at most ``chunk_rows`` rows at a time
    (float32, rows x ``genes``, in order); a sparse or backed matrix is read a block of rows
    at a time."""

    _check_scale(scale)
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    positions = gene_positions(var_names, genes)
    present = positions >= 0

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, x.shape[0], chunk_rows):
            block = _columns(x[start : start + chunk_rows], positions)
            out = np.zeros(block.shape, dtype=np.float32)
            out[:, present] = SCALES[scale](block[:, present])
            yield out

    return blocks()


def stack_blocks(blocks: Iterator[np.ndarray], n_rows: int, n_cols: int) -> np.ndarray:
    """The rows of ``blocks`` (float32 arrays of ``n_cols`` columns, ``n_rows`` rows in all,
    e.g. from :func:`~scdl.data.iter_profiles_from_counts`) in one float32 array, filled in
    place: the blocks and a concatenated copy are never held together."""
    out = np.zeros((n_rows, n_cols), dtype=np.float32)
    start = 0
    for block in blocks:
        out[start : start + block.shape[0]] = block
        start += block.shape[0]
    return out


#: how a profile is put on the common scale: z-scores, or normal quantiles of ranks
SCALES = {"zscore": zscore_rows, "rank": rank_gauss_rows}


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}.")


def matched_reference(
    target: np.ndarray, bulk: np.ndarray, n_neighbors: int, *, chunk: int = 4096
) -> np.ndarray:
    """Sampling probabilities over bulk profiles that make a sample resemble the target.

    Each target profile votes for its ``n_neighbors`` most similar bulk profiles (largest dot
    product: for z-scored or rank-Gaussian rows, a scaled correlation); a bulk profile's probability
    is its share of the votes. Aligning the target to bulk lines drawn this way, rather than
    to all of them, keeps cells from a few lines or one tissue from being spread over every
    tissue of the panel.
    """

    k = min(check_positive_int(n_neighbors, "n_neighbors"), bulk.shape[0])
    if target.shape[0] == 0 or bulk.shape[0] == 0:
        raise ValueError(
            f"matched_reference needs target and bulk profiles; got {target.shape[0]} target "
            f"and {bulk.shape[0]} bulk rows (the probabilities would all be NaN)."
        )
    votes = np.zeros(bulk.shape[0], dtype=np.float64)
    bulk_t = np.asarray(bulk, dtype=np.float32).T
    for start in range(0, target.shape[0], chunk):
        sim = np.asarray(target[start : start + chunk], dtype=np.float32) @ bulk_t
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes += np.bincount(top.ravel(), minlength=bulk.shape[0])
    return votes / votes.sum()
