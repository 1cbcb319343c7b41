"""Checks of drug-response inputs: the response table, drug names, shared genes, profiles.

Each function reads its input only and raises a ``KeyError``/``TypeError``/``ValueError``
that names the problem and the fix, so a model refuses bad input before it writes anything.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scdl._warnings import warn_user

from ._checks import LOG_SCALE_MAX, largest_value
from ._rows import get_matrix, in_memory
from ._write import warn_slashed_names

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: fewest genes shared by bulk profiles and cells for a meaningful transfer
MIN_SHARED_GENES = 100
#: fewest measured cell lines per drug (a spread is needed to standardise it)
MIN_LINES_PER_DRUG = 3


# --- the response table --------------------------------------------------------------------


#: the largest response magnitude taken (ln IC50 spans about -11..14, AUC 0..1, CCLE's
#: activity area 0..8; an IC50 unlogged reaches 1e7 in nM): far above, the model's sums of
#: squares overflow. A guard against unit slips, not a tuned value
MAX_RESPONSE = 1e12


def check_response(adata: AnnData, key: str, *, arg: str = "response_key") -> pd.DataFrame:
    """Return ``adata.obsm[key]``, a cell lines x drugs DataFrame (NaN = not measured).

    Drug names holding "/" are warned of (``tl.drug_response`` names columns by them).

    Raises
    ------
    TypeError
        ``key`` is not a string, or the entry is not a numeric DataFrame.
    KeyError
        ``key`` is not in ``adata.obsm``.
    ValueError
        Infinite values or values beyond 1e12 (``MAX_RESPONSE``); no measured value at all;
        drugs measured on fewer than :data:`MIN_LINES_PER_DRUG` lines (e.g. a column that is
        all NaN) or with one value only.
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
    values = table.to_numpy(dtype=np.float64, na_value=np.nan)  # nullable dtypes' pd.NA too
    if np.isinf(values).any():
        raise ValueError(
            f"adata.obsm[{key!r}] holds {int(np.isinf(values).sum())} infinite values; use NaN "
            "for unmeasured entries."
        )
    big = np.abs(values) > MAX_RESPONSE
    if big.any():
        raise ValueError(
            f"adata.obsm[{key!r}] holds {int(big.sum())} values beyond +-{MAX_RESPONSE:.0e} "
            f"(largest {np.nanmax(np.abs(values)):.6g}): no response metric (ln IC50, AUC, "
            "activity area, an IC50 concentration) comes near, and the model's sums of their "
            "squares overflow. A unit slip? If they are IC50 concentrations, take their log: "
            f"`adata.obsm[{key!r}] = np.log(adata.obsm[{key!r}])`."
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
            f"{MIN_LINES_PER_DRUG} cell lines ({what}; e.g. {few[:5]}). Keep the others: "
            f"`adata.obsm[{key!r}] = adata.obsm[{key!r}].loc[:, adata.obsm[{key!r}].notna()"
            f".sum() >= {MIN_LINES_PER_DRUG}]`."
        )
    with np.errstate(invalid="ignore"):
        flat = np.nanstd(values, axis=0) == 0
    if flat.any():
        raise ValueError(
            f"Drugs {table.columns[flat].astype(str).tolist()[:5]} have the same response on "
            f"every measured line in adata.obsm[{key!r}]; drop them (nothing to predict)."
        )
    warn_slashed_names(
        table.columns,
        what="Drugs",
        written="tl.drug_response writes a column per drug",
        fix=f"Rename them before setup, e.g. `adata.obsm[{key!r}].columns = "
        f"adata.obsm[{key!r}].columns.str.replace('/', '|')`.",
    )
    return table


_MODEL_DRUGS = (
    "model's",
    "The model predicts the drugs of the response table it was trained on (model.drugs).",
)


def resolve_drugs(requested, available: Sequence[str], *, source=_MODEL_DRUGS) -> list[str]:
    """Check drug names against the model's (or, with ``source``, another list: whose, and
    why a drug may be missing from it); a KeyError lists close matches."""
    of, why = source
    available = [str(d) for d in available]
    if requested is None:
        return available
    if isinstance(requested, str):
        requested = [requested]
    names = list(requested) if isinstance(requested, Iterable) else None
    if names is None or any(not isinstance(d, str) for d in names):
        raise TypeError(
            f"`drugs` must be a drug name or a list of names (or None for every drug), got "
            f"{requested!r}."
        )
    requested = names
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
        raise KeyError(f"Drug {d!r} is not one of the {of} {len(available)} drugs.{extra} {why}")
    return list(dict.fromkeys(out))


def shared_genes(
    reference: pd.Index,
    query: pd.Index,
    *,
    min_genes: int = MIN_SHARED_GENES,
    names: tuple[str, str] = ("bulk profiles", "cells"),
    query_var: pd.DataFrame | None = None,
    query_name: str = "adata",
) -> pd.Index:
    """Genes in both indexes, in the reference's order; a clear error if too few, with what
    the query's ``var`` (``query_var``) or the names' case suggest; ``query_name``: the
    query's argument, as the fix names it."""
    from ._genes import identifier_hint

    common = pd.Index(reference)[pd.Index(reference).isin(query)]
    if len(common) == 0 or len(common) < min_genes:  # the hint reads every var column
        hint = identifier_hint(
            reference, query, query_var, other_kind="human", query_name=query_name
        )
    if len(common) == 0:
        raise ValueError(
            f"The {names[0]} and the {names[1]} share no gene names (e.g. "
            f"{list(map(str, reference[:3]))} vs {list(map(str, query[:3]))}). Genes are "
            f"matched by name: {hint}."
        )
    if len(common) < min_genes:
        raise ValueError(
            f"The {names[0]} and the {names[1]} share only {len(common)} genes (at least "
            f"{min_genes} are needed). {hint}; and "
            "check that the cells were not already reduced to a small gene panel."
        )
    if query_var is not None and len(common) < 0.5 * len(reference):
        from ._genes import best_var_column

        # enough genes match, but by the wrong identifiers (symbols beside the Ensembl IDs
        # of genes without one): another var column matching far more is the right one
        column, n = best_var_column(reference, query_var, floor=2 * len(common))
        if column is not None:
            warn_user(
                f"The {names[0]} and the {names[1]} share only {len(common)} of "
                f"{len(reference)} gene names; the {names[1]}' var[{column!r}] holds {n} of "
                f"them: use it as the names (`{query_name}.var_names = "
                f"{query_name}.var[{column!r}]"
                f".astype(str)`, then `{query_name}.var_names_make_unique()`). Until then "
                f"only those {len(common)} genes are used.",
                UserWarning,
            )
    return common


def _odd_values(x, n_rows: int) -> tuple[int, int, int, int]:
    """Negative, fractional or non-finite stored values in the first ``n_rows`` rows, the
    non-finite ones among them, the stored values there, and the rows read (cheap check, no
    copy of X)."""
    part = x[: min(n_rows, x.shape[0])]
    vals = part.data if sparse.issparse(part) else np.asarray(part).ravel()
    vals = np.asarray(vals, dtype=np.float64)
    odd = int(np.count_nonzero((vals < 0) | (vals != np.round(vals))))  # NaN and inf included
    return odd, int(np.count_nonzero(~np.isfinite(vals))), vals.size, part.shape[0]


def looks_like_counts(x, n_rows: int = 2000) -> bool:
    """Non-negative integers in the first ``n_rows`` rows (cheap check, no copy of X)."""
    odd, _, size, _ = _odd_values(x, n_rows)
    return size > 0 and odd == 0


#: share of a matrix's stored values that are negative or fractional from which it reads as
#: log-scale profiles: a guard between the two kinds, not a tuned value (in the first 2,000
#: rows, GDSC's z-scores and every shared data file after normalize_total + log1p: 100%;
#: their raw counts: 0%)
PROFILE_ODD_SHARE = 0.1


def guess_modality(x, n_rows: int = 2000, where: str = "adata.X") -> str:
    """``"counts"`` for non-negative integers in the first ``n_rows`` rows, ``"profiles"``
    when at least ``PROFILE_ODD_SHARE`` of their stored values are negative or fractional.

    Raises
    ------
    ValueError
        NaN or infinite values; a few odd values among integers: raw counts with a defect,
        or a mix; reading them as profiles would change every prediction silently.
    """
    odd, n_bad, size, rows = _odd_values(x, n_rows)
    if n_bad:
        raise ValueError(
            f"{where} holds {n_bad} NaN or infinite values in its first {rows} rows: neither "
            "raw counts nor log-scale profiles. Fix or drop those entries (or cells) first."
        )
    if odd == 0:  # empty rows too: the counts check says what they are
        return "counts"
    if odd >= PROFILE_ODD_SHARE * size:
        return "profiles"
    raise ValueError(
        f"{where} holds mostly non-negative integers but {odd} of {size} values in its "
        f"first {rows} rows are negative or fractional: neither raw counts nor "
        "log-scale profiles. Pass raw counts (fix or drop the odd values; `layer=` naming a "
        "raw-count layer) with `modality='counts'`, or log-scale expression with "
        "`modality='profiles'`."
    )


#: per-cell total (of expm1) below which log1p-normalised data read as single cells: scanpy
#: normalises cells to 1e4 (or their median count, 1e3-1e4 for 10x); bulk data to a million
SINGLE_CELL_MAX_TOTAL = 1e5


def resolve_modality(adata: AnnData, layer: str | None = None, n_rows: int = 2000) -> str:
    """What ``modality="auto"`` reads ``adata.X`` (or ``layer``) as, logged.

    ``"counts"`` (non-negative integers); ``"log1p"`` (log1p of counts normalised to a
    constant total below ``SINGLE_CELL_MAX_TOTAL``, as ``sc.pp.normalize_total`` +
    ``sc.pp.log1p`` leave single cells; with a warning); ``"profiles"`` (other log-scale
    expression; log1p of counts per million with a warning naming ``modality="log1p"`` for
    single cells normalised that way). Raises as :func:`guess_modality`.
    """
    import warnings

    from ._lognorm import Log2Error, input_kind
    from ._query import counts_elsewhere_hint

    x = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    modality = guess_modality(x, n_rows, where=where)
    if modality == "profiles":
        try:
            with warnings.catch_warnings():  # the caller says what it reads
                warnings.simplefilter("ignore", UserWarning)
                kind, total = input_kind(adata, layer)
        except Log2Error as err:
            if err.total < SINGLE_CELL_MAX_TOTAL:  # single cells: as profiles, not smoothed
                raise ValueError(str(err)) from None
            kind, total = "log2", err.total
            warn_user(
                f"{where} holds log2(x + 1) of counts normalised to {total:.3g} per sample "
                "(bulk convention, e.g. log2(TPM + 1)): read as bulk log-scale profiles, "
                f"without neighbour smoothing. For single cells convert them (`{where} = "
                f"np.log1p(np.exp2({where}) - 1)`, on `.data` when sparse) and pass "
                "`modality='log1p'`.",
                UserWarning,
            )
        except ValueError:  # scaled, a gene subset, z-scores, ...: log-scale profiles
            kind, total = "profiles", None
        if kind == "profiles" and _gene_standardised(x):
            raise ValueError(
                f"{where} looks standardised gene by gene across its rows (every gene centred "
                "to mean 0, as sc.pp.scale leaves single cells): such values are neither counts "
                "nor a sample's own log profile, and reading them as bulk profiles shifts every "
                "prediction. Pass raw counts (a counts layer with `layer=`, or "
                "`adata.raw.to_adata()`), or `modality='profiles'` for bulk profiles "
                "standardised that way." + counts_elsewhere_hint(adata, layer)
            )
        vmax = largest_value(x, n_rows)
        if kind == "profiles" and vmax > LOG_SCALE_MAX:
            raise ValueError(
                f"{where} holds fractional values up to {vmax:.4g}, far above a log scale: not "
                "raw counts, log-normalised cells or log-scale bulk profiles (TPM, FPKM or "
                "estimated counts?). For TPM or CPM of single cells pass their log1p "
                f"(`{where}.data = np.log1p({where}.data)`, dense: `{where} = "
                f"np.log1p({where})`) with `modality='log1p'`; round estimated counts "
                "(Salmon, RSEM, kallisto) with `np.round` and pass `modality='counts'`; "
                "log-transform bulk profiles and pass `modality='profiles'`."
            )
        if kind == "log1p" and total < SINGLE_CELL_MAX_TOTAL:
            modality = "log1p"
            msg = (
                f"{where} holds log1p of counts normalised to {total:.3g} per cell, as "
                "sc.pp.normalize_total + sc.pp.log1p leave single cells: read back to "
                "normalised counts and smoothed over neighbouring cells, as counts are. Pass "
                "`modality='profiles'` to read them as bulk profiles instead."
            )
            warn_user(msg, UserWarning)
        elif kind == "log1p":
            msg = (
                f"{where} holds log1p of counts normalised to {total:.3g} per sample (bulk "
                "convention): read as bulk log-scale profiles, without neighbour smoothing. "
                "For single cells normalised that way pass `modality='log1p'`."
            )
            warn_user(msg, UserWarning)
    logger.info("modality='auto': %s read as %s.", where, modality)
    return modality


#: rows needed before a gene-wise centring is told from chance
_MIN_ROWS_STANDARDISED = 50


def _gene_standardised(x, n_rows: int = 2000) -> bool:
    """Whether the genes of ``x`` look centred across its rows (``sc.pp.scale``'s output):
    the median gene's |mean| is under a tenth of its sd, over up to ``n_rows`` rows spread
    through the matrix (cells are often sorted by type). Log-scale profiles have positive
    gene means, several sds above 0."""
    n = x.shape[0]
    if n < _MIN_ROWS_STANDARDISED:
        return False
    rows = np.unique(np.linspace(0, n - 1, min(n, n_rows)).astype(int))
    sub = x[rows]
    if sparse.issparse(sub):  # moments without densifying
        mean = np.asarray(sub.mean(axis=0), dtype=float).ravel()
        sq = np.asarray(sub.multiply(sub).mean(axis=0), dtype=float).ravel()
    else:
        sub = np.asarray(sub, dtype=float)
        mean, sq = sub.mean(axis=0), (sub * sub).mean(axis=0)
    sd = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    varying = sd > 1e-8
    if varying.sum() < 10:
        return False
    ratio = np.abs(mean[varying]) / sd[varying]
    return bool(np.median(ratio) < 0.1)


def check_profiles(adata: AnnData, layer: str | None = None) -> None:
    """Bulk input must be finite, log-scale, non-constant profiles (sparse input stays sparse).

    Raises
    ------
    TypeError
        The expression is not numeric.
    ValueError
        The AnnData is empty; NaN or infinite values; constant profiles (e.g. all zero); raw
        counts or values above a log scale (``LOG_SCALE_MAX``, e.g. TPM: log-transform them
        first).
    """
    x = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    x = in_memory(x)  # a backed matrix (bulk lines: small) is read to be checked
    dtype = getattr(x, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.number):
        raise TypeError(f"{where} has dtype {dtype}; expression must be numeric.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"The AnnData is empty ({adata.n_obs} x {adata.n_vars}).")
    values = x.data if sparse.issparse(x) else np.asarray(x)
    if not np.isfinite(values).all():
        raise ValueError(
            f"{where} has {int((~np.isfinite(values)).sum())} NaN or infinite values; fill or "
            "drop them first."
        )
    flat = _row_sd(x) == 0
    if flat.any():
        names = list(map(str, adata.obs_names[flat][:3]))
        raise ValueError(
            f"{int(flat.sum())} profiles in {where} are constant (e.g. all zero): {names}; "
            "drop them (all-zero rows: `sc.pp.filter_cells(adata, min_genes=1)`)."
        )
    if looks_like_counts(x):
        advice = (
            "bulk profiles must be log-scale expression (e.g. GDSC's z-scores). Log-transform "
            "them first, e.g. `sc.pp.normalize_total(bulk); sc.pp.log1p(bulk)`."
        )
        if values.max(initial=0) > 50:
            raise ValueError(f"{where} looks like raw counts, but {advice}")
        # small integers may be binned log-scale values; counts this shallow are unusual
        warn_user(
            f"{where} holds only non-negative integers (at most "
            f"{values.max(initial=0):g}), as raw counts do; read as log-scale profiles. If they "
            f"are counts, {advice}",
            UserWarning,
        )
    elif (vmax := largest_value(x)) > LOG_SCALE_MAX:  # as predict() refuses such profiles
        raise ValueError(
            f"{where} holds fractional values up to {vmax:.4g}, far above a log scale (TPM, "
            "CPM, FPKM or estimated counts?): bulk profiles must be log-scale expression "
            f"(e.g. GDSC's z-scores). Log-transform them first, e.g. `{where} = "
            f"np.log1p({where})` (sparse: `{where}.data = np.log1p({where}.data)`)."
        )


def _row_sd(x) -> np.ndarray:
    """Standard deviation of each row, without densifying a sparse matrix."""
    if not sparse.issparse(x):
        return np.asarray(x).std(axis=1)
    x = sparse.csr_matrix(x, dtype=np.float64)
    mean = np.asarray(x.mean(axis=1)).ravel()
    mean_sq = np.asarray(x.multiply(x).mean(axis=1)).ravel()
    return np.sqrt(np.maximum(mean_sq - mean**2, 0.0))
