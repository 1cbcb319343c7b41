"""Input validation shared by every model's ``setup_anndata`` and every ``tl`` function.

Every check only reads: it raises before anything is written, so a failing call leaves the
user's AnnData unchanged. Large matrices are scanned in row chunks and never densified whole.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

_CHUNK_ROWS = 10_000


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error if it is missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "adata.X is empty (None). Put raw counts in adata.X or pass `layer=` naming "
                "the layer that holds them."
            )
        return adata.X
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a string or None, got {type(layer).__name__}.")
    if layer not in adata.layers:
        avail = list(adata.layers.keys())
        hint = difflib.get_close_matches(layer, avail, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers (available: {avail or 'none'}).{extra} "
            "Pass `layer=None` to use adata.X."
        )
    return adata.layers[layer]


@dataclass
class CountSummary:
    """What :func:`check_counts` learnt while scanning the matrix."""

    n_zero_cells: int
    n_zero_genes: int
    gene_totals: np.ndarray


def _iter_row_chunks(x, n_obs: int):
    for start in range(0, n_obs, _CHUNK_ROWS):
        yield x[start : min(start + _CHUNK_ROWS, n_obs)]


def check_counts(
    adata: AnnData,
    layer: str | None = None,
    *,
    allow_zero_genes: bool = False,
) -> CountSummary:
    """Check that ``adata.X`` (or ``layer``) holds raw counts a count model can use.

    Raises
    ------
    TypeError
        The matrix is not numeric.
    ValueError
        The AnnData is empty; the matrix has NaN/inf, negative or non-integer values; some
        cells have no counts; some genes have no counts (unless ``allow_zero_genes``).
    KeyError
        ``layer`` does not exist.
    """
    where = _where(layer)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "a model needs at least one cell and one gene."
        )
    x = get_matrix(adata, layer)
    dtype = getattr(x, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(
            f"{where} has dtype {dtype}; raw counts must be numeric (int or float). "
            "Convert it, e.g. `adata.X = adata.X.astype(np.float32)`."
        )
    n_obs = adata.n_obs
    row_totals = np.zeros(n_obs, dtype=np.float64)
    gene_totals = np.zeros(adata.n_vars, dtype=np.float64)
    n_bad = {"nan": 0, "neg": 0, "frac": 0}
    is_float = np.issubdtype(dtype, np.floating)
    offset = 0
    for chunk in _iter_row_chunks(x, n_obs):
        if sparse.issparse(chunk):
            vals = chunk.data
        else:
            chunk = np.asarray(chunk)
            vals = chunk.ravel()
        if is_float:
            finite = np.isfinite(vals)
            n_bad["nan"] += int(vals.size - finite.sum())
            vals = vals[finite] if not finite.all() else vals
            n_bad["frac"] += int(np.count_nonzero(vals != np.round(vals)))
        n_bad["neg"] += int(np.count_nonzero(vals < 0))
        rows = np.asarray(chunk.sum(axis=1)).ravel()
        row_totals[offset : offset + rows.size] = rows
        gene_totals += np.asarray(chunk.sum(axis=0)).ravel()
        offset += rows.size
    if n_bad["nan"]:
        raise ValueError(
            f"{where} contains {n_bad['nan']} NaN or infinite values. Raw counts must be finite; "
            "remove or fix those entries before setting up the model."
        )
    if n_bad["neg"]:
        raise ValueError(
            f"{where} contains {n_bad['neg']} negative values, so it is not raw counts "
            "(scaled or log data?). Pass the layer holding raw UMI/read counts via `layer=`."
        )
    if n_bad["frac"]:
        raise ValueError(
            f"{where} contains {n_bad['frac']} non-integer values, so it looks normalised or "
            "log-transformed. The model needs raw counts: pass `layer=` naming the raw-count "
            "layer (e.g. 'counts'), or restore counts into adata.X."
        )
    n_zero_cells = int(np.count_nonzero(row_totals == 0))
    if n_zero_cells:
        raise ValueError(
            f"{n_zero_cells} cells have zero total counts in {where}. Remove them first, e.g. "
            "`sc.pp.filter_cells(adata, min_counts=1)`."
        )
    n_zero_genes = int(np.count_nonzero(gene_totals == 0))
    if n_zero_genes and not allow_zero_genes:
        raise ValueError(
            f"{n_zero_genes} genes have zero counts in every cell of {where}. Remove them first, "
            "e.g. `sc.pp.filter_genes(adata, min_cells=1)`."
        )
    return CountSummary(n_zero_cells, n_zero_genes, gene_totals)


def check_obs_key(adata: AnnData, key: str, *, arg: str = "key") -> pd.Series:
    """Return ``adata.obs[key]``; a clear KeyError with a suggestion if it is missing."""
    if not isinstance(key, str):
        raise TypeError(f"`{arg}` must be a column name (str), got {type(key).__name__}.")
    if key not in adata.obs.columns:
        cols = list(map(str, adata.obs.columns))
        hint = difflib.get_close_matches(key, cols, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KeyError(
            f"`{arg}={key!r}` is not a column of adata.obs (columns: {cols or 'none'}).{extra}"
        )
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(
            f"adata.obs[{key!r}] has {int(col.isna().sum())} missing values; fill or drop them "
            f"before using it as `{arg}`."
        )
    return col


def check_categorical(
    adata: AnnData, key: str, *, arg: str = "key", min_categories: int = 1
) -> pd.Series:
    """Check an obs column used as a categorical covariate; require ``min_categories`` levels."""
    col = check_obs_key(adata, key, arg=arg)
    n = col.nunique()
    if n < min_categories:
        raise ValueError(
            f"`{arg}={key!r}` has {n} category ({col.unique()[:3].tolist()}) but at least "
            f"{min_categories} are needed. Check the column, or pass `{arg}=None` if there is "
            "nothing to correct for."
        )
    return col


def check_unique_var_names(adata: AnnData) -> None:
    """Gene names must be unique to align genes between datasets."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"adata.var_names has duplicates (e.g. {dup}). Call `adata.var_names_make_unique()` "
            "first."
        )


def check_count_setup(
    adata: AnnData,
    layer: str | None,
    *,
    allow_zero_genes: bool = False,
    categorical: dict[str, str | None] | None = None,
) -> CountSummary:
    """The checks every count model's ``setup_anndata`` runs, in one place.

    Unique gene names, raw counts in ``X``/``layer``, and each ``{arg: obs column}`` in
    ``categorical`` present without missing values. Raises before anything is written.
    """
    check_unique_var_names(adata)
    summary = check_counts(adata, layer, allow_zero_genes=allow_zero_genes)
    for arg, key in (categorical or {}).items():
        if key is not None:
            check_categorical(adata, key, arg=arg)
    return summary
