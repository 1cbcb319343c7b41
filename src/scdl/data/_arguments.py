"""Checks of the arguments every public call takes besides the AnnData: numbers, flags,
seeds, ``key_added`` and the ``obsm`` key of an embedding.

Each raises before anything is written or trained, naming the argument and what it takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData


def check_positive_int(value, arg: str, *, none: str | None = None) -> int | None:
    """``value`` must be a positive integer (numpy integers too); ``None`` is allowed when
    ``none`` says what it means."""
    if value is None and none is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        allowed = f" or None ({none})" if none is not None else ""
        wrong_type = isinstance(value, bool) or not isinstance(value, int | np.integer)
        error = TypeError if wrong_type else ValueError
        raise error(f"{arg} must be a positive integer{allowed}, got {value!r}.")
    return int(value)


def check_positive_number(value, arg: str, *, meaning: str = "") -> float:
    """``value`` must be a finite number above zero (numpy numbers too, not bools);
    ``meaning`` says what it is in the message."""
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not number or not np.isfinite(value) or value <= 0:
        extra = f" ({meaning})" if meaning else ""
        error = ValueError if number else TypeError
        raise error(f"{arg} must be a positive number{extra}, got {value!r}.")
    return float(value)


def check_bool(value, arg: str, *, truthy: bool = False) -> bool:
    """``value`` must be ``True`` or ``False`` (numpy bools too): a string such as ``"no"``
    would otherwise be taken as true. ``truthy``: only strings are refused, anything else is
    read by its truth value (as scanpy reads ``copy=0`` or ``copy=None``)."""
    if isinstance(value, str) or not (truthy or isinstance(value, bool | np.bool_)):
        raise TypeError(f"{arg} must be True or False, got {value!r}.")
    return bool(value)


def check_fraction(value, arg: str, *, meaning: str = "", below_one: bool = False) -> float:
    """``value`` must be a number in [0, 1] (``below_one``: [0, 1), e.g. a dropout rate;
    numpy numbers too, not bools); ``meaning`` says what it is in the message."""
    extra = f" ({meaning})" if meaning else ""
    span = "[0, 1)" if below_one else "[0, 1]"
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"{arg} must be a number in {span}{extra}, got {value!r}.")
    if not (0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0):  # NaN fails too
        raise ValueError(f"{arg} must be a fraction in {span}{extra}, got {value!r}.")
    return float(value)


def check_non_negative(value, arg: str, *, meaning: str = "") -> float:
    """``value`` must be a finite number >= 0 (a loss weight; numpy numbers too, not bools)."""
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not number or not np.isfinite(value) or value < 0:
        extra = f" ({meaning})" if meaning else ""
        error = ValueError if number else TypeError
        raise error(f"{arg} must be a finite number >= 0{extra}, got {value!r}.")
    return float(value)


def check_random_state(value, arg: str = "random_state") -> None:
    """``value`` must be an integer seed from 0 to 2**32 - 1 (numpy's and Lightning's range)
    or ``None`` (checked before anything is written or trained; otherwise numpy's error comes
    after a step has written part of its results, or inside training)."""
    if isinstance(value, bool) or not (value is None or isinstance(value, int | np.integer)):
        raise TypeError(f"{arg} must be an integer seed (or None), got {value!r}.")
    if value is not None and not 0 <= value < 2**32:
        raise ValueError(f"{arg} must be an integer from 0 to 2**32 - 1, got {value}.")


def check_key_added(key_added) -> str:
    """``key_added`` must be a non-empty string (the key a ``tl`` step writes under) without
    "/", which h5ad files read as a path: the written file could not be read back."""
    if not isinstance(key_added, str) or not key_added:
        error = TypeError if not isinstance(key_added, str) else ValueError
        raise error(f"key_added must be a non-empty string, got {key_added!r}.")
    if "/" in key_added:
        raise ValueError(
            f"key_added={key_added!r} holds '/', which .h5ad files read as a nested group: "
            f"the file would not read back. Use another separator, e.g. "
            f"{key_added.replace('/', '_')!r}."
        )
    return key_added


def check_obsm_key(key, arg: str) -> None:
    """``key`` must be one obsm key (a string); a list of keys failed as unhashable."""
    if not isinstance(key, str):
        raise TypeError(
            f"{arg} must be one adata.obsm key (a string, e.g. 'X_scdl'), got "
            f"{type(key).__name__} {key!r}."
        )


#: the steps that write the usual obsm keys (scanpy's and scdl's own defaults)
_MAKERS = {
    "X_pca": "`sc.pp.pca(adata)` (after `sc.pp.normalize_total` and `sc.pp.log1p` on counts)",
    "X_umap": "`sc.pp.neighbors(adata)` and `sc.tl.umap(adata)`",
    "X_tsne": "`sc.tl.tsne(adata)`",
    "X_pca_harmony": "`sc.external.pp.harmony_integrate(adata, key=...)`",
    "X_scdl": "`scdl.tl.integrate(adata, ...)`",
    "X_scdl_salient": "`scdl.tl.contrastive(adata, ...)`",
    "X_scdl_shared": "`scdl.tl.contrastive(adata, ...)`",
}


def _embedding_maker(key: str) -> str:
    """What to run first for a missing obsm ``key``."""
    if key in _MAKERS:
        return f"Run {_MAKERS[key]} first"
    return (
        "Run the step that writes it first (`scdl.tl.integrate(adata, key_added="
        f"{key!r})` writes a learned space under that key; `sc.pp.pca` writes 'X_pca')"
    )


def check_embedding(
    adata: AnnData, key: str, *, purpose: str = "it", arg: str = "key"
) -> np.ndarray:
    """``adata.obsm[key]`` as a dense numeric cells x dimensions array with finite values
    (what clustering, a UMAP or the integration metrics read); ``arg`` names the argument.

    Raises
    ------
    KeyError
        ``key`` is not in ``obsm``.
    TypeError
        ``key`` is not a string; the embedding is sparse, not numeric or not two-dimensional.
    ValueError
        It holds NaN or infinite values.
    """
    check_obsm_key(key, arg)
    if key not in adata.obsm:
        raise KeyError(
            f"{key!r} is not in adata.obsm (available: {list(adata.obsm) or 'none'}). "
            f"{_embedding_maker(key)}, or pass the key of an existing embedding."
        )
    rep = adata.obsm[key]
    if sparse.issparse(rep):
        dense = None
    elif isinstance(rep, pd.DataFrame) and all(map(pd.api.types.is_numeric_dtype, rep.dtypes)):
        # nullable columns (`.convert_dtypes()`) give an object array; scanpy reads them
        dense = rep.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        dense = np.asarray(rep)
    if dense is None or dense.ndim != 2 or not np.issubdtype(dense.dtype, np.number):
        raise TypeError(
            f"adata.obsm[{key!r}] is a "
            + (
                f"sparse matrix ({type(rep).__name__})"
                if dense is None
                else f"{type(rep).__name__} of dtype {dense.dtype}, shape {dense.shape}"
            )
            + f"; {purpose} needs a dense numeric embedding (cells x dimensions), e.g. "
            f"`adata.obsm[{key!r}] = adata.obsm[{key!r}].toarray()` for a sparse one."
        )
    if not np.isfinite(dense).all():
        bad = ~np.isfinite(dense)
        rows = bad.any(axis=1)
        if rows.any() and bad[rows].all():  # whole rows: cells without a value
            raise ValueError(
                f"adata.obsm[{key!r}] holds only NaN or infinite values for {int(rows.sum())} "
                f"of {len(rows)} cells: cells without one, e.g. added by "
                "`anndata.concat(..., join='outer')`. "
                f"Subset to the cells that have them, `adata[np.isfinite(adata.obsm[{key!r}])"
                ".all(axis=1)]`, or recompute it for every cell."
            )
        raise ValueError(
            f"adata.obsm[{key!r}] has {int(bad.sum())} NaN or infinite values in "
            f"{int(rows.sum())} cells (a diverged training?). Recompute it, e.g. with "
            "`scdl.tl.integrate`."
        )
    return dense
