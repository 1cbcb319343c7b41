"""Checks of the obs columns a model registers or a function reads (batches, labels,
covariates): present, without missing values, usable as categories."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._warnings import warn_user

if TYPE_CHECKING:
    from anndata import AnnData

# numeric codes accepted as categories whatever the number of cells (e.g. batches 0-9)
_MAX_CODES = 10


def check_obs_key(
    adata: AnnData, key: str, *, arg: str = "key", missing_ok: bool = False
) -> pd.Series:
    """Return ``adata.obs[key]``; a clear KeyError with a suggestion if it is missing, and a
    ValueError if it has missing values (unless ``missing_ok``)."""
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
    if not missing_ok and col.isna().any():
        raise ValueError(
            f"adata.obs[{key!r}] has {int(col.isna().sum())} missing values; fill or drop them "
            f"before using it as `{arg}`."
        )
    return col


def check_categorical(
    adata: AnnData,
    key: str,
    *,
    arg: str = "key",
    min_categories: int = 1,
    too_few: str | None = None,
    numeric_hint: str = "",
    missing_ok: bool = False,
    max_numbers: int | None = None,
) -> pd.Series:
    """Check an obs column used as a categorical covariate; require ``min_categories`` levels
    (``too_few``: what to do instead, said when there are fewer; default: pass ``None``).
    ``numeric_hint``: where a numeric covariate goes instead, for a caller that takes one (e.g.
    ``" (numeric covariates go in `continuous_covariate_keys`)"``), said for a numeric column.
    ``missing_ok``: cells without a value are allowed (and not counted). ``max_numbers``: the
    most distinct numbers taken as codes (default: 10, or half the cells if more)."""
    col = check_obs_key(adata, key, arg=arg, missing_ok=missing_ok)
    values = col.dropna() if missing_ok else col
    _check_category_values(col, key, arg)
    if pd.api.types.is_float_dtype(values) and (values != np.round(values)).any():
        raise TypeError(
            f"adata.obs[{key!r}] holds non-integer numbers ({col.dtype}), so it is not a "
            f"category such as a sample or cell-type name. Pass a categorical column as "
            f"`{arg}`{numeric_hint}, or convert it: "
            f"`adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).astype('category')`."
        )
    n = values.nunique()
    limit = max(_MAX_CODES, col.size // 2) if max_numbers is None else max_numbers
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        if n > limit:  # e.g. total counts: one "category" per cell
            raise ValueError(
                f"adata.obs[{key!r}] holds {n} distinct numbers for {col.size} cells: a "
                f"per-cell measurement, not categories such as samples or cell types. Pass a "
                f"column of labels as `{arg}`{numeric_hint}. If the numbers are codes, convert "
                f"them: "
                f"`adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).astype('category')`."
            )
    if n < min_categories:
        raise ValueError(
            f"`{arg}={key!r}` has {n} category ({col.unique()[:3].tolist()}) but at least "
            f"{min_categories} are needed. Check the column, or "
            + (too_few or f"pass `{arg}=None` if there is nothing to correct for.")
        )
    return col


def _check_category_values(col: pd.Series, key: str, arg: str) -> None:
    """Refuse category values scvi-tools cannot sort (text mixed with numbers, as
    ``anndata.concat`` of a numbered and a named batch gives) or a saved model cannot store
    (dates, intervals from ``pd.cut``): both failed later, naming neither the column nor a fix."""
    dtype = col.dtype
    levels = col.cat.categories if isinstance(dtype, pd.CategoricalDtype) else None
    kind = levels.dtype if levels is not None else dtype
    fix = f"`adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).astype('category')`"
    if (
        isinstance(kind, pd.IntervalDtype | pd.PeriodDtype)
        or pd.api.types.is_datetime64_any_dtype(kind)
        or pd.api.types.is_timedelta64_dtype(kind)
    ):
        raise TypeError(
            f"adata.obs[{key!r}] holds {kind} values, which a saved model cannot store (its "
            f"files hold text and numbers only). Convert it before using it as `{arg}`: {fix}."
        )
    if kind is np.dtype(object):
        present = pd.unique(levels if levels is not None else col.dropna())
        is_text = [isinstance(v, str) for v in present]
        if any(is_text) and not all(is_text):
            example = [v for v in present if not isinstance(v, str)][:3]
            raise TypeError(
                f"adata.obs[{key!r}] mixes text with other values (e.g. {example} beside "
                f"{[v for v in present if isinstance(v, str)][:3]}; `anndata.concat` of a "
                f"numbered and a named batch gives this), which cannot be sorted into "
                f"categories. Convert it before using it as `{arg}`: {fix}."
            )


def warn_small_categories(col: pd.Series, key: str, arg: str = "batch_key") -> None:
    """Name every category of a batch or covariate column that holds 1 or 2 cells (valid:
    registered as scvi-tools registers it, whose own warning names one integer code in a
    column the user never sees)."""
    sizes = col.value_counts(sort=False)
    small = sizes[(sizes > 0) & (sizes < 3)]
    if len(small):
        shown = ", ".join(f"{c!r} ({n})" for c, n in list(small.items())[:5])
        warn_user(
            f"`{arg}={key!r}` has {len(small)} categor{'y' if len(small) == 1 else 'ies'} of "
            f"fewer than 3 cells: {shown}{' ...' if len(small) > 5 else ''}. Their correction "
            "rests on those cells alone; merge them with a similar category if there is one.",
            UserWarning,
        )


def warn_one_batch(col: pd.Series, key: str, arg: str = "batch_key", hint: str = "") -> None:
    """Say that a batch column of one category leaves nothing to correct (valid input, as in
    scvi-tools: a subset of one sample, a per-sample pipeline). ``hint``: the model's own
    reason to keep the column anyway, said after the fix."""
    warn_user(
        f"`{arg}={key!r}` has one category ({col.iloc[0]!r}): there is nothing to correct for, "
        f"so the cells are treated as one batch. Pass `{arg}=None` to silence this{hint}.",
        UserWarning,
    )
