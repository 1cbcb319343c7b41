"""Input validation shared by every model's ``setup_anndata`` and every ``tl`` function.

Every check only reads: it raises before anything is written, so a failing call leaves the
user's AnnData unchanged. Large matrices are scanned in row chunks and never densified whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from scdl._warnings import warn_user

from ._covariates import list_of_keys_fix
from ._features import feature_types_of, has_other_features, warn_other_features
from ._obs_checks import check_categorical, warn_one_batch, warn_small_categories
from ._rows import get_matrix, row_blocks

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

_CHUNK_VALUES = 2_000_000


#: largest value that log-scale expression reaches (natural or log2 of a million reads is
#: 14-20): fractional values above it are on a linear scale (TPM, estimated counts); a guard,
#: not a tuned value
LOG_SCALE_MAX = 50.0


def largest_value(x, n_rows: int | None = None) -> float:
    """The largest finite stored value of ``x`` (of its first ``n_rows`` rows), read in row
    blocks."""
    if n_rows is not None:
        x = x[: min(n_rows, x.shape[0])]
    largest = 0.0
    for chunk in row_blocks(x):
        vals = chunk.data if sparse.issparse(chunk) else np.asarray(chunk)
        if vals.size:
            largest = max(largest, float(np.nanmax(np.where(np.isfinite(vals), vals, 0))))
    return largest


def check_not_empty(adata) -> None:
    """Refuse an AnnData without cells or genes, before its columns are checked (an empty
    batch column would be blamed otherwise)."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "a model needs at least one cell and one gene."
        )


def check_is_anndata(adata, *, registering: bool = False) -> None:
    """``adata`` must be an AnnData; when ``registering``, not a view of another one."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        if type(adata).__name__ == "MuData":  # to_anndata() would mix proteins/peaks in
            raise TypeError(
                "Expected an AnnData (cells x genes), got a MuData: pass its gene expression "
                "modality, e.g. `mdata.mod['rna']` (results are written into it; "
                "`mdata.update()` afterwards)."
            )
        raise TypeError(
            f"Expected an AnnData (cells x genes), got {type(adata).__name__}. Wrap a matrix or "
            "DataFrame first: `adata = anndata.AnnData(X)`."
        )
    if not isinstance(adata.obs, pd.DataFrame):
        # anndata's read_lazy: obs is an xarray Dataset, which no check or model reads
        raise TypeError(
            f"adata.obs is a {type(adata.obs).__name__} (a lazily read AnnData, "
            "`anndata.experimental.read_lazy`): read it into memory first, "
            "`adata = adata.to_memory()`, or open the file backed (`read_h5ad(path, "
            "backed='r')`), which scdl reads a block of cells at a time."
        )
    if registering and adata.is_view:
        fix = "adata[mask].to_memory()" if adata.isbacked else "adata[mask].copy()"
        raise ValueError(
            "adata is a view of another AnnData (e.g. `adata[mask]`), and registering it "
            f"would write into it. Make it a real object first: `adata = {fix}`."
        )


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


@dataclass
class CountSummary:
    """What :func:`~.check_counts` learnt while scanning the matrix."""

    n_zero_cells: int
    n_zero_genes: int
    gene_totals: np.ndarray


def _count_stats(x, n_obs: int, n_vars: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Row and gene totals of ``x`` and its numbers of non-finite, negative and non-integer
    values, read in row chunks (a sparse matrix stays sparse)."""
    row_totals = np.zeros(n_obs, dtype=np.float64)
    gene_totals = np.zeros(n_vars, dtype=np.float64)
    n_bad = {"nan": 0, "neg": 0, "frac": 0, "frac_dev": 0.0, "max": 0.0, "ones": 0, "values": 0}
    is_float = np.issubdtype(x.dtype, np.floating)
    if isinstance(x, sparse.csr_matrix | sparse.csr_array):
        # in memory: the stored values read through views of fixed size (a row slice copied
        # each chunk: 4.5x scvi-tools' setup memory). Not scipy's sums: scipy 1.18 sums
        # duplicate entries in place, rewriting the user's matrix during a check
        indptr = np.asarray(x.indptr, dtype=np.int64)
        before = np.zeros(indptr.size, dtype=np.float64)  # sum of the values before each row
        running, bad_rows = 0.0, []
        for start in range(0, x.nnz, _CHUNK_VALUES):
            stop = min(start + _CHUNK_VALUES, x.nnz)
            vals = x.data[start:stop]
            gene_totals += np.bincount(x.indices[start:stop], weights=vals, minlength=n_vars)
            summed = vals
            if is_float:
                finite = np.isfinite(vals)
                if not finite.all():  # its row's total is NaN; the running sum goes on
                    n_bad["nan"] += int(vals.size - finite.sum())
                    where = start + np.flatnonzero(~finite)
                    bad_rows.append(np.searchsorted(indptr, where, side="right") - 1)
                    summed = np.where(finite, vals, 0)
                    vals = vals[finite]
                _count_fractions(vals, n_bad)
            n_bad["neg"] += int(np.count_nonzero(vals < 0))
            n_bad["max"] = max(n_bad["max"], float(vals.max()) if vals.size else 0.0)
            _count_ones(vals, n_bad)
            partial = running + np.cumsum(summed, dtype=np.float64)
            first, last = np.searchsorted(indptr, [start, stop], side="right")
            before[first:last] = partial[indptr[first:last] - start - 1]
            running = float(partial[-1])
        row_totals = np.diff(before)
        n_bad["detected"] = np.diff(indptr)  # stored values per cell
        for rows in bad_rows:
            row_totals[rows] = np.nan
        return row_totals, gene_totals, n_bad
    offset = 0
    detected = np.zeros(n_obs, dtype=np.int64)
    n_bad["detected"] = detected
    for chunk in row_blocks(x, n_obs):
        if sparse.issparse(chunk):
            vals = chunk.data
            detected[offset : offset + chunk.shape[0]] = chunk.getnnz(axis=1)
        else:
            chunk = np.asarray(chunk)
            vals = chunk.ravel()
            detected[offset : offset + chunk.shape[0]] = np.count_nonzero(chunk, axis=1)
        if is_float:
            finite = np.isfinite(vals)
            n_bad["nan"] += int(vals.size - finite.sum())
            vals = vals[finite] if not finite.all() else vals
            _count_fractions(vals, n_bad)
        n_bad["neg"] += int(np.count_nonzero(vals < 0))
        n_bad["max"] = max(n_bad["max"], float(vals.max()) if vals.size else 0.0)
        _count_ones(vals, n_bad)
        rows = np.asarray(chunk.sum(axis=1, dtype=np.float64)).ravel()
        row_totals[offset : offset + rows.size] = rows
        gene_totals += np.asarray(chunk.sum(axis=0, dtype=np.float64)).ravel()
        offset += rows.size
    return row_totals, gene_totals, n_bad


#: the largest value one entry of a count matrix is taken to hold (a bulk sample's most
#: expressed gene reaches ~1e7 reads); far above it the row sums lose whole cells and the
#: training's samplers overflow. A guard against damaged files, not a tuned value
MAX_COUNT = 1e9

#: non-integer values all this close to a whole number are counts with float round-off
ROUND_OFF = 1e-3


class RoundOffError(ValueError):
    """Counts whose only fault is floating-point round-off (e.g. recovered from log values)."""


def _count_ones(vals: np.ndarray, n_bad: dict) -> None:
    """Add the non-zero values of ``vals`` and those equal to 1 to ``n_bad``."""
    n_bad["ones"] += int(np.count_nonzero(vals == 1))
    n_bad["values"] += int(np.count_nonzero(vals))


def _count_fractions(vals: np.ndarray, n_bad: dict) -> None:
    """Add the non-integer values of ``vals`` (finite) and their largest distance from a whole
    number to ``n_bad``."""
    dev = np.abs(vals - np.round(vals))
    n_frac = int(np.count_nonzero(dev))
    if n_frac:
        n_bad["frac"] += n_frac
        n_bad["frac_dev"] = max(n_bad["frac_dev"], float(dev.max()))


#: cells whose totals agree this closely with their median (relative; or within half a count
#: per gene detected, what rounding each value moves a total by: rounded CPM of UMI data moves
#: by up to 4e-3, TPM by ~3e-5; real counts differ by orders of magnitude) were normalised
#: per cell
_SAME_TOTAL = 1e-3
#: fewest cells with counts for that to mean anything
_MIN_CELLS_FOR_TOTALS = 10
#: whole numbers with fewer ones than this share of their non-zero values are not molecules
#: (a molecule of a rounded CPM / TPM value is 1e6 / its cell's total: far above 1); UMI
#: counts hold 30-70% ones, and equal totals alone also come from downsampling to one depth
#: then filtering genes
_FEW_ONES = 0.01


def _constant_total(row_totals: np.ndarray, detected: np.ndarray | None = None) -> float | None:
    """The total every cell with values sums to when each is within ``_SAME_TOTAL`` of their
    median (a matrix normalised per cell), or, given the values each holds (``detected``: a
    rounded matrix), within half a count per value plus one. Else ``None``; ``None`` under
    ``_MIN_CELLS_FOR_TOTALS`` cells."""
    keep = np.isfinite(row_totals) & (row_totals > 0)
    positive = row_totals[keep]
    if positive.size < _MIN_CELLS_FOR_TOTALS:
        return None
    total = float(np.median(positive))
    allowed = _SAME_TOTAL * total
    if detected is not None:
        allowed = np.maximum(allowed, 0.5 * np.asarray(detected)[keep] + 1.0)
    return total if np.all(np.abs(positive - total) <= allowed) else None


def check_counts(
    adata: AnnData,
    layer: str | None = None,
    *,
    report_zero_genes: bool = False,
    warn_zero_cells: bool = True,
    fix: str | None = None,
    warn_normalised: bool = True,
) -> CountSummary:
    """Check that ``adata.X`` (or ``layer``) holds raw counts a count model can use.

    ``fix``: how to give the counts, named in the errors for values that are not counts
    (default: pass ``layer=`` naming the raw-count layer); a trained model reading a fixed
    place names that place.

    Genes with no counts in any cell are valid (common after subsetting cells; scvi-tools
    accepts them): they carry no information and do no harm, so they are kept and counted in
    the summary. With ``report_zero_genes`` (a fresh registration) their number is logged in
    one line. Cells with no counts are valid too (scvi-tools and scanpy take them; common
    after subsetting genes): they are kept, and with ``warn_zero_cells`` a UserWarning says
    how many and how to drop them. Whole numbers that sum to nearly one total in every cell
    (rounded CPM/TPM) are said in a warning with ``warn_normalised``.

    Raises
    ------
    TypeError
        The matrix is not numeric.
    ValueError
        The AnnData is empty; the matrix has NaN/inf, negative or non-integer values, or
        values above ``MAX_COUNT`` (1e9, no count comes near).
    KeyError
        ``layer`` does not exist.
    """
    check_is_anndata(adata)
    where = _where(layer)
    check_not_empty(adata)
    x = get_matrix(adata, layer)
    dtype = getattr(x, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(
            f"{where} has dtype {dtype}; raw counts must be numeric (int or float). "
            "Convert it, e.g. `adata.X = adata.X.astype(np.float32)`."
        )
    row_totals, gene_totals, n_bad = _count_stats(x, adata.n_obs, adata.n_vars)
    if n_bad["nan"]:
        raise ValueError(
            f"{where} contains {n_bad['nan']} NaN or infinite values. Raw counts must be finite; "
            "remove or fix those entries before setting up the model."
        )
    # the counts are often elsewhere in the same AnnData (a layer, X, scanpy's .raw): named
    raw = ""
    if fix is None and (n_bad["neg"] or n_bad["frac"]):
        from ._query import counts_elsewhere_hint

        raw = counts_elsewhere_hint(adata, layer)
    if n_bad["neg"]:
        raise ValueError(
            f"{where} contains {n_bad['neg']} negative values, so it is not raw counts "
            "(scaled or log data?). "
            + (fix or "Pass the layer holding raw UMI/read counts via `layer=`.")
            + raw
        )
    if n_bad["frac"] and n_bad["frac_dev"] <= ROUND_OFF:
        data = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise RoundOffError(
            f"{where} contains {n_bad['frac']} non-integer values, each within "
            f"{n_bad['frac_dev']:.2g} of a whole number: counts carried with floating-point "
            "round-off (as when recovered from log-normalised values). Round them: "
            f"`{data}.data = np.round({data}.data)` (sparse) or `{data} = np.round({data})` "
            "(dense)."
        )
    per_cell = _constant_total(row_totals)
    if n_bad["frac"] and per_cell is not None:  # rounding would pass them off as counts
        raise ValueError(
            f"{where} contains {n_bad['frac']} non-integer values and every cell with any sums "
            f"to {per_cell:.4g}: counts normalised per cell (CPM, TPM, normalize_total), not "
            "counts, and rounding them does not make counts. The model needs the raw read or "
            "UMI counts: "
            + (
                fix
                or "pass `layer=` naming them, or put them in adata.X (the counts table "
                "of the pipeline, e.g. Cell Ranger's matrix, featureCounts, STAR's GeneCounts)."
            )
            + raw
            + (
                " `scdl.tl.annotate` also reads log1p of such values (`sc.pp.log1p`)."
                if fix is None  # a trained model's own query has its own ways
                else ""
            )
        )
    if n_bad["frac"]:
        raise ValueError(
            f"{where} contains {n_bad['frac']} non-integer values, so it looks normalised or "
            "log-transformed. The model needs raw counts: "
            + (
                fix
                or "pass `layer=` naming the raw-count layer (e.g. 'counts'), or restore "
                "counts into adata.X."
            )
            + raw
            + (
                " If they are estimated counts (Salmon, RSEM, kallisto, alevin: fractional "
                f"read or UMI counts), round them first: `{where}.data = np.round({where}.data)` "
                f"(sparse) or `{where} = np.round({where})` (dense)."
                if largest_value(x) > LOG_SCALE_MAX  # rounding log values makes no counts
                else ""
            )
        )
    if n_bad["max"] > MAX_COUNT:
        raise ValueError(
            f"{where} holds values up to {n_bad['max']:.3g}, far above any count of molecules "
            f"or reads in one cell and gene (at most ~{MAX_COUNT:.0e}): a damaged file, or "
            "values multiplied by a large factor? "
            + (fix or "Pass `layer=` naming the raw-count layer, or restore the counts.")
        )
    few_ones = n_bad["ones"] < _FEW_ONES * max(n_bad["values"], 1)
    rounded = (
        _constant_total(row_totals, n_bad["detected"]) if warn_normalised and few_ones else None
    )
    if rounded is not None:
        # whole numbers summing to one total in every cell within rounding, and not molecules
        # (few ones): rounded CPM/TPM. Real depths differ by far more, unless downsampled
        warn_user(
            f"{where} holds whole numbers, but every cell with any sums to nearly the same "
            f"total ({rounded:.4g}): rounded CPM/TPM? A count model reads them as that many "
            "molecules per cell. Pass the raw read or UMI counts if these are not.",
            UserWarning,
        )
    n_zero_cells = int(np.count_nonzero(row_totals == 0))
    if n_zero_cells and warn_zero_cells:
        warn_empty_cells(n_zero_cells, adata.n_obs, f"in {where}")
    n_zero_genes = int(np.count_nonzero(gene_totals == 0))
    if n_zero_genes and report_zero_genes:
        logger.info(
            "%d of %d genes have no counts in any cell of %s; they are kept and carry no "
            "information (`sc.pp.filter_genes(adata, min_cells=1)` drops them).",
            n_zero_genes,
            adata.n_vars,
            where,
        )
    return CountSummary(n_zero_cells, n_zero_genes, gene_totals)


def check_not_sparse_array(adata: AnnData, layer: str | None = None) -> None:
    """Refuse counts held as a scipy sparse *array* (``csr_array``), which scvi-tools reads
    as "data type not understood", naming the conversion."""
    x = get_matrix(adata, layer)
    if isinstance(x, sparse.sparray):
        fmt = "csc" if x.format == "csc" else "csr"
        raise TypeError(
            f"{_where(layer)} is a scipy sparse array ({type(x).__name__}); scvi-tools "
            f"reads sparse matrices only. Convert it: `{_where(layer)} = "
            f"scipy.sparse.{fmt}_matrix({_where(layer)})` (no densifying)."
        )


def warn_empty_cells(n_empty: int, n_obs: int, where: str, fix: str | None = None) -> None:
    """Say that ``n_empty`` cells have no counts (kept; they carry no information) and how
    to drop them (``fix``; default: cells without any count)."""
    warn_user(
        f"{n_empty} of {n_obs} cells have no counts {where}; they are kept, with the "
        "representation of an empty cell. "
        + (fix or "`sc.pp.filter_cells(adata, min_counts=1)` drops them."),
        UserWarning,
    )


def check_unique_var_names(adata: AnnData, *, warn: bool = False) -> None:
    """Gene names must be unique to align genes between datasets; with ``warn``, where genes
    are not matched by name, duplicates are only said in a warning (as scanpy does)."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        if warn:
            warn_user(
                f"adata.var_names has duplicates (e.g. {dup}); they are used as separate genes. "
                "Call `adata.var_names_make_unique()` to match genes by name later (a query, "
                "an annotator).",
                UserWarning,
            )
            return
        other = has_other_features(feature_types_of(adata))
        raise ValueError(
            f"adata.var_names has duplicates (e.g. {dup}). Call `adata.var_names_make_unique()` "
            "first"
            + (
                " (it keeps each name on its first copy): var['feature_types'] marks features "
                "other than gene expression, which may share the genes' names; keep gene "
                "expression only instead: `adata[:, adata.var['feature_types'] == "
                "'Gene Expression'].copy()`."
                if other
                else "."
            )
        )


# covariates a model corrects for: a single level means there is nothing to correct
_COVARIATE_ARGS = ("batch_key", "categorical_covariate_keys")


def check_count_setup(
    adata: AnnData,
    layer: str | None,
    *,
    report_zero_genes: bool = True,
    categorical: dict[str, str | list[str] | None] | None = None,
    warn_one_category: bool = False,
    one_batch_hint: str = "",
    unique_genes: bool = True,
    fix: str | None = None,
    numeric_hint: str = "",
) -> CountSummary:
    """The checks every count model's ``setup_anndata`` runs, in one place.

    ``adata`` is an AnnData (not a view), gene names are unique (with ``unique_genes=False``,
    for a model that never matches genes by name, duplicates are said in a warning, as
    scanpy does), ``X``/``layer`` holds raw
    counts, and each ``{arg: obs column(s)}`` in ``categorical`` is present, categorical and
    without missing values. All-zero genes are kept (logged when ``report_zero_genes``; a
    query padded with the reference's missing genes need not be). With
    ``warn_one_category`` (a fresh registration; a query or a reloaded model may hold a single
    batch), a ``batch_key`` or ``categorical_covariate_keys`` column of one category is said in
    a warning and registered as it is, as scvi-tools does (one batch: nothing to correct);
    ``one_batch_hint``: the model's reason to keep a ``batch_key`` of one category, added to it.
    ``fix``: how to give the counts, named in the errors (:func:`check_counts`);
    ``numeric_hint``: as :func:`check_categorical`'s. Raises before anything is written.
    """
    check_is_anndata(adata, registering=True)
    check_unique_var_names(adata, warn=not unique_genes)
    warn_other_features(adata)
    check_not_sparse_array(adata, layer)
    summary = check_counts(adata, layer, report_zero_genes=report_zero_genes, fix=fix)
    for arg, keys in (categorical or {}).items():
        if keys is None:
            continue
        if arg.endswith("_keys") and not isinstance(keys, list | tuple):
            raise TypeError(
                f"`{arg}` must be a list of obs column names, got {keys!r}; "
                + list_of_keys_fix(keys, arg)
            )
        if not arg.endswith("_keys") and not isinstance(keys, str):  # scvi-tools: "unhashable"
            raise TypeError(
                f"`{arg}` must be one obs column name (str), got {keys!r}. To correct for "
                "several columns, join them into one, e.g. `adata.obs['batch'] = "
                "adata.obs['a'].astype(str) + '_' + adata.obs['b'].astype(str)`, or pass the "
                "others as `categorical_covariate_keys`."
                if arg == "batch_key"
                else f"`{arg}` must be one obs column name (str), got {keys!r}."
            )
        if isinstance(keys, str):
            keys = [keys]
        for key in keys:
            col = check_categorical(adata, key, arg=arg, numeric_hint=numeric_hint)
            if warn_one_category and arg in _COVARIATE_ARGS and col.nunique() < 2:
                warn_one_batch(col, key, arg, one_batch_hint if arg == "batch_key" else "")
            if arg in _COVARIATE_ARGS:
                warn_small_categories(col, key, arg)
    return summary
