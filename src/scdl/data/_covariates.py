"""Checks of the covariate columns a count model registers beside its batch."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._obs_checks import check_obs_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def key_list(keys, arg: str) -> list | None:
    """Covariate keys as a list (scvi-tools takes any sequence of column names, e.g. an array
    or an Index); a single name or a non-sequence is refused with the list it should be."""
    if keys is None:
        return None
    if isinstance(keys, np.ndarray | pd.Index | pd.Series):
        keys = keys.tolist()
    if not isinstance(keys, list | tuple):
        raise TypeError(
            f"`{arg}` must be a list of obs column names, got {keys!r}; "
            + list_of_keys_fix(keys, arg)
        )
    return list(keys)


def list_of_keys_fix(keys, arg: str) -> str:
    """The list a wrong ``keys`` should be: one name in a list; a set's names in a list
    (sorted: a set has no order, and the covariates' order is the model's)."""
    if isinstance(keys, set | frozenset):
        return f"e.g. `{arg}={sorted(map(str, keys))!r}`."
    return f"e.g. `{arg}=[{keys!r}]`."


def check_covariate_keys(
    categorical: Sequence[str] | None, continuous: Sequence[str] | None
) -> None:
    """Covariate keys must be lists, each column named once: scvi-tools registers a column
    named twice twice (a categorical one then fails inside pandas, a continuous one enters the
    network twice)."""
    for arg, keys in (
        ("categorical_covariate_keys", categorical),
        ("continuous_covariate_keys", continuous),
    ):
        keys = key_list(keys, arg)
        if keys is None:
            continue
        twice = sorted(k for k, n in Counter(map(str, keys)).items() if n > 1)
        if twice:
            raise ValueError(f"`{arg}` names {twice} more than once; name each column once.")


def check_continuous_covariates(
    adata: AnnData, keys: Sequence[str] | None, *, model: str | None = None
) -> None:
    """Check the obs columns of continuous covariates: present, numeric, finite.

    ``model``: the trained model's name, for a query (the message then says the column is one
    the model was set up with, rather than an argument the user passed).
    """
    for key in key_list(keys, "continuous_covariate_keys") or []:
        if model is not None and key not in adata.obs.columns:
            raise KeyError(
                f"adata.obs lacks the column {key!r}, a continuous covariate the {model} was "
                "set up with; add it (numbers, as in the reference)."
            )
        col = check_obs_key(adata, key, arg="continuous_covariate_keys")
        if not pd.api.types.is_numeric_dtype(col):  # True/False count as 1/0, as in scvi-tools
            raise TypeError(
                f"continuous covariate {key!r} must be numeric, got {col.dtype}. Numbers "
                f"held as text or categories: `adata.obs[{key!r}] = pd.to_numeric("
                f"adata.obs[{key!r}].astype(str))`; levels such as samples go in "
                "`categorical_covariate_keys`."
            )
        values = col.to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(
                f"continuous covariate adata.obs[{key!r}] has "
                f"{int((~np.isfinite(values)).sum())} infinite values; fix or drop those cells."
            )


def covariate_scaling(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each continuous covariate (columns of ``values``); a
    constant column gets a scale of 1, so it enters the network as zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        n = values.shape[1] if values.ndim == 2 else 0
        return np.zeros(n), np.ones(n)
    center = values.mean(axis=0)
    scale = values.std(axis=0)
    scale[~np.isfinite(scale) | (scale <= 1e-8 * np.maximum(1.0, np.abs(center)))] = 1.0
    return center, scale
