"""Inputs of drug-response transfer: response tables, gene alignment, comparable profiles.

Bulk cell-line profiles (log-scale expression, e.g. GDSC's within-line z-scores) and
single-cell counts are brought to one scale across the model's genes: each profile is
z-scored, or its values replaced by normal quantiles of their ranks. Counts go through
log1p(counts per 10k) first, optionally averaged over each cell's nearest neighbours, since
one cell's counts are too sparse to look like a bulk profile.
Every function only reads its inputs.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: fewest genes shared by bulk profiles and cells for a meaningful transfer
MIN_SHARED_GENES = 100
#: fewest measured cell lines per drug (a spread is needed to standardise it)
MIN_LINES_PER_DRUG = 3


# --- the response table --------------------------------------------------------------------


def check_response(adata: AnnData, key: str, *, arg: str = "response_key") -> pd.DataFrame:
    """Return ``adata.obsm[key]``, a cell lines x drugs DataFrame (NaN = not measured).

    Raises
    ------
    TypeError
        ``key`` is not a string, or the entry is not a numeric DataFrame.
    KeyError
        ``key`` is not in ``adata.obsm``.
    ValueError
        Infinite values; no measured value at all; drugs measured on fewer than
        :data:`MIN_LINES_PER_DRUG` lines (e.g. a column that is all NaN) or with one value only.
    """
    if not isinstance(key, str):
        raise TypeError(f"`{arg}` must be an obsm key (str), got {type(key).__name__}.")
    if key not in adata.obsm:
        avail = list(map(str, adata.obsm.keys()))
        hint = difflib.get_close_matches(key, avail, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KeyError(
            f"`{arg}={key!r}` is not in adata.obsm (keys: {avail or 'none'}).{extra} Put the "
            "response there as a DataFrame of cell lines x drugs (NaN where unmeasured), e.g. "
            "with `scdl.datasets.gdsc()`, which stores it under the metric's name."
        )
    table = adata.obsm[key]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"adata.obsm[{key!r}] is a {type(table).__name__}; it must be a DataFrame with drug "
            f"names as columns: `adata.obsm[{key!r}] = pd.DataFrame(values, "
            "index=adata.obs_names, columns=drug_names)`."
        )
    bad = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise TypeError(
            f"adata.obsm[{key!r}] has non-numeric columns {bad[:5]}; responses must be numbers "
            "(NaN where unmeasured)."
        )
    if not table.columns.is_unique:
        dup = table.columns[table.columns.duplicated()].unique()[:5].tolist()
        raise ValueError(f"adata.obsm[{key!r}] repeats drug columns {dup}; merge them first.")
    values = table.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        raise ValueError(
            f"adata.obsm[{key!r}] holds {int(np.isinf(values).sum())} infinite values; use NaN "
            "for unmeasured entries."
        )
    measured = (~np.isnan(values)).sum(axis=0)
    if table.shape[1] == 0 or measured.sum() == 0:
        raise ValueError(f"adata.obsm[{key!r}] has no measured response; nothing to learn from.")
    few = table.columns[measured < MIN_LINES_PER_DRUG].astype(str).tolist()
    if few:
        empty = table.columns[measured == 0].astype(str).tolist()
        what = f"all NaN for {empty[:5]}" if empty else f"under {MIN_LINES_PER_DRUG} values"
        raise ValueError(
            f"{len(few)} drugs in adata.obsm[{key!r}] are measured on fewer than "
            f"{MIN_LINES_PER_DRUG} cell lines ({what}; e.g. {few[:5]}). Drop them: "
            f"`adata.obsm[{key!r}] = adata.obsm[{key!r}].drop(columns={few[:5]!r}...)`, or keep "
            f"the drugs with `.loc[:, adata.obsm[{key!r}].notna().sum() >= "
            f"{MIN_LINES_PER_DRUG}]`."
        )
    with np.errstate(invalid="ignore"):
        flat = np.nanstd(values, axis=0) == 0
    if flat.any():
        raise ValueError(
            f"Drugs {table.columns[flat].astype(str).tolist()[:5]} have the same response on "
            f"every measured line in adata.obsm[{key!r}]; drop them (nothing to predict)."
        )
    return table


def resolve_drugs(requested, available: Sequence[str]) -> list[str]:
    """Check drug names against the model's; a KeyError lists close matches."""
    available = [str(d) for d in available]
    if requested is None:
        return available
    if isinstance(requested, str):
        requested = [requested]
    requested = list(requested)
    if not requested:
        raise ValueError("`drugs` is empty; pass drug names, or None for every drug.")
    lower = {d.lower(): d for d in available}
    out = []
    for d in requested:
        if not isinstance(d, str):
            raise TypeError(f"Drug names must be strings, got {type(d).__name__} ({d!r}).")
        if d in available:
            out.append(d)
            continue
        if d.lower() in lower:
            hint = [lower[d.lower()]]
        else:
            hint = difflib.get_close_matches(d, available, n=5, cutoff=0.5) or [
                lower[m] for m in difflib.get_close_matches(d.lower(), list(lower), n=5, cutoff=0.5)
            ]
        extra = f" Close matches: {hint}." if hint else ""
        raise KeyError(
            f"Drug {d!r} is not one of the model's {len(available)} drugs.{extra} The model "
            "predicts the drugs of the response table it was trained on (model.drugs)."
        )
    return list(dict.fromkeys(out))


# --- genes ---------------------------------------------------------------------------------


def shared_genes(
    reference: pd.Index,
    query: pd.Index,
    *,
    min_genes: int = MIN_SHARED_GENES,
    names: tuple[str, str] = ("bulk profiles", "cells"),
) -> pd.Index:
    """Genes in both indexes, in the reference's order; a clear error if too few."""
    common = pd.Index(reference)[pd.Index(reference).isin(query)]
    if len(common) == 0:
        raise ValueError(
            f"The {names[0]} and the {names[1]} share no gene names (e.g. "
            f"{list(map(str, reference[:3]))} vs {list(map(str, query[:3]))}). Genes are "
            "matched by symbol: use gene symbols in both var_names (convert Ensembl IDs, e.g. "
            "from a var column: `adata.var_names = adata.var['gene_symbols']`)."
        )
    if len(common) < min_genes:
        raise ValueError(
            f"The {names[0]} and the {names[1]} share only {len(common)} genes (at least "
            f"{min_genes} are needed). Check that both use the same gene identifiers (symbols) "
            "and that the cells were not already reduced to a small gene panel."
        )
    return common


def select_variable_genes(profiles: np.ndarray, genes: pd.Index, n_top: int | None) -> pd.Index:
    """The ``n_top`` genes whose profiles vary most across cell lines (all if ``None``)."""
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


def looks_like_counts(x, n_rows: int = 2000) -> bool:
    """Non-negative integers in the first ``n_rows`` rows (cheap check, no copy of X)."""
    part = x[: min(n_rows, x.shape[0])]
    vals = part.data if sparse.issparse(part) else np.asarray(part).ravel()
    vals = np.asarray(vals, dtype=np.float64)
    return bool(vals.size) and bool(np.all(vals >= 0)) and bool(np.all(vals == np.round(vals)))


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


def neighbor_average(
    profiles: np.ndarray, n_neighbors: int, *, n_pcs: int = 30, random_state: int = 0
) -> np.ndarray:
    """Average each row with its nearest neighbours (itself included) in PCA space.

    Neighbours are found on log1p of ``profiles`` (counts per 10k), so a cell borrows signal
    from cells of the same state; it is what makes a sparse cell resemble a bulk profile.
    """
    n = profiles.shape[0]
    k = min(int(n_neighbors), n)
    if k <= 1:
        return profiles
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    logp = np.log1p(profiles)
    n_comp = max(1, min(n_pcs, n - 1, profiles.shape[1] - 1))
    emb = PCA(n_components=n_comp, svd_solver="randomized", random_state=random_state)
    emb = emb.fit_transform(logp - logp.mean(axis=0))
    idx = NearestNeighbors(n_neighbors=k).fit(emb).kneighbors(emb, return_distance=False)
    return profiles[idx].mean(axis=1)


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
    ranks); genes absent from ``var_names`` are set to 0 (the profile's mean).
    """
    positions = pd.Index(var_names).get_indexer(genes)
    library = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    library[library == 0] = 1.0
    cp = _columns(x, positions) * (target_sum / library)[:, None]
    cp = neighbor_average(cp, n_neighbors) if n_neighbors > 1 else cp
    return _standardise_present(np.log1p(cp), positions >= 0, scale)


def profiles_from_expression(
    x, var_names: pd.Index, genes: pd.Index, *, scale: str = "zscore"
) -> np.ndarray:
    """Log-scale expression (e.g. GDSC's z-scores) to profiles over ``genes``.

    Each row is put on the common scale (``scale``, as in :func:`profiles_from_counts`);
    genes absent from ``var_names`` are set to 0 (the profile's mean).
    """
    positions = pd.Index(var_names).get_indexer(genes)
    return _standardise_present(_columns(x, positions), positions >= 0, scale)


#: how a profile is put on the common scale: z-scores, or normal quantiles of ranks
SCALES = {"zscore": zscore_rows, "rank": rank_gauss_rows}


def _standardise_present(values: np.ndarray, present: np.ndarray, scale: str) -> np.ndarray:
    out = np.zeros(values.shape, dtype=np.float32)
    out[:, present] = SCALES[scale](values[:, present])
    return out


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
    k = min(int(n_neighbors), bulk.shape[0])
    votes = np.zeros(bulk.shape[0], dtype=np.float64)
    bulk_t = np.asarray(bulk, dtype=np.float32).T
    for start in range(0, target.shape[0], chunk):
        sim = np.asarray(target[start : start + chunk], dtype=np.float32) @ bulk_t
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes += np.bincount(top.ravel(), minlength=bulk.shape[0])
    return votes / votes.sum()
