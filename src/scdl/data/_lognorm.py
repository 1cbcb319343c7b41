"""Queries that ship log-normalised values instead of raw counts: detect, or refuse clearly."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from scdl._warnings import warn_user

from ._checks import (
    LOG_SCALE_MAX,
    RoundOffError,
    check_counts,
    warn_empty_cells,
)
from ._query import counts_elsewhere_hint
from ._rows import get_matrix, in_memory, row_blocks

if TYPE_CHECKING:
    from anndata import AnnData

# per-cell totals of expm1(X) equal to within this relative spread count as "normalised to a
# constant total" (float32 storage of log1p values leaves ~1e-6; 1% allows rounded files)
_TOTAL_SPREAD = 0.01


class Log2Error(ValueError):
    """log2(x + 1) of counts normalised to ``total`` per cell, where natural-log values are
    read (named with the conversion)."""

    def __init__(self, message: str, total: float):
        super().__init__(message)
        self.total = total


def _expm1_row_totals(x) -> tuple[np.ndarray, int, int, int, float, np.ndarray]:
    """Per-cell totals of expm1(x); counts of non-finite, negative and fractional values;
    the largest value; per-cell totals of 2**x - 1 (log2(x + 1) data, e.g. log2(TPM + 1))."""
    totals, n_nan, n_bad, n_frac, vmax, totals2 = [], 0, 0, 0, 0.0, []
    for chunk in row_blocks(x):
        vals = chunk.data if sparse.issparse(chunk) else np.asarray(chunk).ravel()
        vals = np.asarray(vals, dtype=np.float64)
        n_nan += int(np.count_nonzero(~np.isfinite(vals)))
        n_bad += int(np.count_nonzero(vals < 0))
        n_frac += int(np.count_nonzero(vals != np.round(vals)))
        if vals.size:
            vmax = max(vmax, float(np.nanmax(np.where(np.isfinite(vals), vals, 0.0))))
        if sparse.issparse(chunk):
            chunk = sparse.csr_matrix(chunk, dtype=np.float64, copy=True)
            clipped = np.clip(chunk.data, 0.0, 50.0)
            chunk.data = np.expm1(clipped)
            totals.append(np.asarray(chunk.sum(1)).ravel())
            chunk.data = np.exp2(clipped) - 1.0
            totals2.append(np.asarray(chunk.sum(1)).ravel())
        else:
            clipped = np.clip(np.nan_to_num(np.asarray(chunk, dtype=np.float64)), 0.0, 50.0)
            totals.append(np.expm1(clipped).sum(1))
            totals2.append((np.exp2(clipped) - 1.0).sum(1))
    return np.concatenate(totals), n_nan, n_bad, n_frac, vmax, np.concatenate(totals2)


def input_kind(adata: AnnData, layer: str | None = None) -> tuple[str, float | None]:
    """Whether ``adata.X`` (or ``layer``) holds raw counts or log1p of normalised counts.

    Returns ``("counts", None)`` for raw counts, or ``("log1p", total)`` when ``expm1`` of the
    matrix sums to the same ``total`` (to within 1%) in every cell with any expression: the
    output of ``sc.pp.normalize_total(adata, target_sum=total); sc.pp.log1p(adata)`` on all
    genes, the form many public files ship, where an empty cell stays empty (kept, with a
    warning, as in raw counts). A warning says so once.

    Raises
    ------
    ValueError
        The matrix is neither: e.g. scaled (negative values), a gene subset of log-normalised
        data (per-cell totals differ), or another transformation. The message names what was
        found and what to pass instead.
    """
    try:
        check_counts(adata, layer)
        return "counts", None
    except RoundOffError:  # counts after all: the message says to round them
        raise
    except ValueError:
        totals, n_nan, n_bad, n_frac, vmax, totals2 = _expm1_row_totals(get_matrix(adata, layer))
        if n_nan or not (n_bad or n_frac):  # NaN, or integer counts with another problem
            raise
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    fix = (
        "Pass raw counts (`layer=` naming them, e.g. 'counts'), or log1p of counts normalised "
        "to a constant total over all genes (`sc.pp.normalize_total(adata, target_sum=1e4); "
        "sc.pp.log1p(adata)` before any gene selection or scaling)."
    ) + counts_elsewhere_hint(adata, layer)
    if n_bad:
        raise ValueError(
            f"{where} holds neither raw counts nor log-normalised counts: {n_bad} values are "
            f"negative (scaled data?). {fix}"
        )
    positive = totals[totals > 0]  # fractional values exist, so some cell has expression
    lo, hi = float(positive.min()), float(positive.max())
    positive2 = totals2[totals2 > 0]
    natural = vmax <= 25 and hi <= lo * (1 + _TOTAL_SPREAD)
    constant2 = positive2.max() <= positive2.min() * (1 + _TOTAL_SPREAD)  # 2**x - 1 totals
    if not natural and vmax <= LOG_SCALE_MAX and constant2:
        total2 = float(np.median(positive2))
        raise Log2Error(
            f"{where} holds log2(x + 1) of counts normalised to {total2:.4g} per cell (e.g. "
            "log2(TPM + 1)): 2**x - 1 sums to that in every cell. scdl reads natural-log "
            f"values: convert them, `{where}.data = np.log1p(np.exp2({where}.data) - 1)` "
            f"(sparse) or `{where} = np.log1p(np.exp2({where}) - 1)` (dense), or pass raw "
            "counts.",
            total2,
        )
    if not natural and vmax > LOG_SCALE_MAX:  # far above any log scale: linear values
        log_layer = "" if layer is None else f", layer={layer!r}"
        raise ValueError(
            f"{where} has {n_frac} non-integer values up to {vmax:.4g}, far above a log scale: "
            "linear values, not raw counts. If they are estimated counts (Salmon, RSEM, "
            "kallisto, alevin: fractional read or UMI counts), round them: "
            f"`{where}.data = np.round({where}.data)` (sparse) or `{where} = np.round({where})` "
            "(dense); if they are counts normalised to a constant total per cell over all "
            f"genes (CPM, TPM), log them: `sc.pp.log1p(adata{log_layer})`; FPKM / RPKM "
            "(per-cell totals differ) become TPM when each cell is scaled to 1e6 first: "
            f"`sc.pp.normalize_total(adata, target_sum=1e6{log_layer})`, then log1p. {fix}"
        )
    if not natural:
        raise ValueError(
            f"{where} has {n_frac} non-integer values, so it is not raw counts; nor is it log1p "
            f"of counts normalised per cell: expm1 of it sums to {lo:.4g}-{hi:.4g} per cell (a "
            "constant total is expected; a gene subset or a scaled matrix gives a spread, and "
            "so does log1p of FPKM / RPKM: take expm1, scale each cell to 1e6 with "
            "`sc.pp.normalize_total(adata, target_sum=1e6)` (that is TPM), then log1p) and "
            f"its largest value is {vmax:.3g}. {fix}"
        )
    if positive.size < totals.size:  # normalize_total leaves an empty cell empty: kept
        warn_empty_cells(totals.size - positive.size, totals.size, f"in {where}")
    total = float(np.median(positive))
    warn_user(
        f"{where} is not raw counts but log1p of counts normalised to {total:.4g} per cell; "
        "reading it as such (log-normalising its counts would give the same values).",
        UserWarning,
    )
    return "log1p", total


def normalised_from_log1p(adata: AnnData, layer: str | None = None):
    """``expm1`` of log1p-normalised ``adata.X`` (or ``layer``): the normalised counts, for
    steps that normalise counts themselves (a constant total per cell normalises to itself).
    Sparse stays sparse.

    Raises
    ------
    ValueError
        The matrix is raw counts, or neither counts nor log1p of normalised counts (as
        :func:`input_kind`).
    """
    with warnings.catch_warnings():  # the caller says what it reads
        warnings.simplefilter("ignore", UserWarning)
        kind, _ = input_kind(adata, layer)
    if kind != "log1p":
        raise ValueError(
            f"{'adata.X' if layer is None else f'adata.layers[{layer!r}]'} holds raw counts, "
            "not log1p of normalised counts: pass `modality='counts'` (or 'auto')."
        )
    x = get_matrix(adata, layer)
    x = in_memory(x)
    if sparse.issparse(x):
        x = sparse.csr_matrix(x, dtype=np.float64, copy=True)
        x.data = np.expm1(x.data)
        return x
    return np.expm1(np.asarray(x, dtype=np.float64))


#: a scaled value this close to an integer reads as a whole count (float32 log1p values of a
#: count of 10^4 come back within 0.003 of it, of 10^5 within 0.05: a larger count fails the
#: test and the query is read on the normalised scale)
_WHOLE = 0.05


def counts_from_log1p(x_log, units: np.ndarray) -> sparse.csr_matrix | None:
    """The counts behind log1p-normalised rows: ``expm1(x_log)`` divided by each row's one
    count (``units``, :func:`~scdl.data.log1p_count_units`, measured over all of the
    AnnData's genes before any subset), rounded (:func:`~scdl.data.whole_counts`); ``None``
    when a value is not then a whole count (a cell without a count of 1, rounded or edited
    values, NaN): the caller keeps ``expm1``. A cell without a count of 1 whose counts all
    share a factor (a near-empty cell of counts 2, 4, 6) is read divided by it.

    The counts give every step that follows (clustering, thinning, the depth checks) the
    values the raw counts give, not merely the same values up to a per-cell scale."""
    x = sparse.csr_matrix(x_log, dtype=np.float64, copy=True)
    x.eliminate_zeros()  # a stored zero is no value
    if x.nnz == 0 or not np.all(np.isfinite(x.data)):
        return None
    x.data = np.expm1(x.data)
    return whole_counts(x, units)


def whole_counts(x, units: np.ndarray, *, min_share: float = 1.0) -> sparse.csr_matrix | None:
    """Rows of values each scaled to a constant total (``expm1`` of log-normalised data)
    divided by their row's one count (``units``) and rounded, as CSR float32, when at least
    ``min_share`` of the values are then within ``_WHOLE`` of a whole count of 1 or more;
    else ``None``. ``x`` is not changed."""
    x = sparse.csr_matrix(x, dtype=np.float64, copy=True)
    units = np.asarray(units, dtype=np.float64).ravel()
    per_value = np.repeat(units, np.diff(x.indptr))
    if x.nnz == 0 or not np.all(np.isfinite(per_value) & (per_value > 0)):
        return None
    scaled = x.data / per_value
    whole = np.rint(scaled)
    if np.mean((np.abs(scaled - whole) < _WHOLE) & (whole >= 1)) < min_share:
        return None
    x.data = whole
    return sparse.csr_matrix(x, dtype=np.float32)


def log1p_count_units(x) -> np.ndarray:
    """Each row's one count in log1p-normalised values: ``expm1`` of its smallest positive
    value (a count of 1 times the cell's scale, ``target_sum / total``; nearly every cell of
    UMI data holds genes of one count), NaN for an empty row. Read in row blocks over every
    gene (the scale was set over all of them)."""
    out = []
    for chunk in row_blocks(x):
        if sparse.issparse(chunk):
            chunk = sparse.csr_matrix(chunk, dtype=np.float64)
            chunk.data = np.where(chunk.data > 0, chunk.data, np.inf)
            lo = np.full(chunk.shape[0], np.inf)
            filled = np.diff(chunk.indptr) > 0
            if filled.any():
                lo[filled] = np.minimum.reduceat(chunk.data, chunk.indptr[:-1][filled])
        else:
            block = np.asarray(chunk, dtype=np.float64)
            lo = (
                np.where(block > 0, block, np.inf).min(1)
                if block.shape[1]
                else np.full(block.shape[0], np.inf)
            )
        out.append(np.where(np.isfinite(lo), np.expm1(lo), np.nan))
    return np.concatenate(out) if out else np.zeros(0)
