"""Writing results: into an AnnData a tool was given, and to an h5ad file without a partial
file left behind by a failed write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from scdl._paths import new_entry, written_path
from scdl._warnings import warn_user

if TYPE_CHECKING:
    from anndata import AnnData


def writable(adata: AnnData, *, copy: bool = False) -> AnnData:
    """The AnnData a tool writes its results into.

    A copy with ``copy=True``; otherwise ``adata`` itself, a view first made an actual AnnData
    (with a warning at the caller's line, as scanpy's tools do; anndata would otherwise warn
    from inside the tool at its first write).
    """
    if copy:
        return adata.copy()
    if adata.is_view:
        from anndata import ImplicitModificationWarning

        warn_user(
            "adata is a view: it is made an actual AnnData to hold the results (it no longer "
            "follows the AnnData it was taken from), as scanpy's tools do. Pass "
            "`adata[...].copy()` to keep the two apart explicitly.",
            ImplicitModificationWarning,
        )
        adata._init_as_actual(adata.copy())  # what scanpy's view_to_actual does
    return adata


def check_writable(adata: AnnData, *, copy: bool = False) -> None:
    """Refuse, before any work, an AnnData that :func:`~scdl.data.writable` could not write into: a
    view of a backed AnnData (making it actual needs it in memory), or a backed AnnData with
    ``copy=True`` (its copy needs a file). anndata refuses both only when the results are
    written, after all the computing. A string ``copy`` (``"no"``, as papermill or snakemake
    pass it) is refused: it would be taken as true, returning a copy and leaving ``adata``
    unwritten; other values are read by their truth value, as scanpy reads them."""
    from ._arguments import check_bool

    copy = check_bool(copy, "copy", truthy=True)
    if not getattr(adata, "isbacked", False):
        return
    if adata.is_view:
        raise ValueError(
            "adata is a view of a backed AnnData: the results cannot be written into it. Pass "
            "`adata[...].to_memory()` (that subset loaded into memory), or the backed AnnData "
            "itself."
        )
    if copy:
        raise ValueError(
            "copy=True of a backed AnnData needs a file to copy to: pass "
            "`adata.to_memory()` with copy=True, or write the results into the backed object "
            "with copy=False."
        )


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike) -> Path:
    """``adata.write_h5ad(path)``, under a temporary name beside it until complete.

    A write that fails (a full disk, a column anndata cannot store) leaves an earlier file
    of that name as it was and no cut-off file that a later save or load would trust. A
    leading ``~`` is the home folder; a link is written through (the link kept). Returns the
    path written: a link's target.
    """
    # through a link, as anndata writes: the partial beside the file it replaces
    path = written_path(path)
    if getattr(adata, "isbacked", False) and path.exists() and path.samefile(adata.filename):
        # replacing the file it reads: Windows refuses (an open file), elsewhere the object
        # goes on reading the old, deleted copy
        raise ValueError(
            f"The AnnData is backed by {path}, the file to write: load it into memory first "
            "(`adata = adata.to_memory()`), or write to another path."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"The folder {str(path.parent)!r} to write {path.name} into does not exist."
        )
    # a name of its own per writer: two writers of one file (a rerun beside a running job)
    # deleted each other's partial, or without HDF5 file locking wrote into the same one
    partial = new_entry(path.parent, f".{path.name}.", ".partial")
    try:
        adata.write_h5ad(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def warn_slashed_names(names, *, what: str, written: str, fix: str) -> list[str]:
    """Warn where ``names`` holding ``"/"`` become column names of a written table: .h5ad files
    read ``"/"`` as a path, and anndata >= 0.13 refuses to write them (0.12 warns). Returns
    those names."""
    slashed = sorted({str(n) for n in names if "/" in str(n)})
    if slashed:
        warn_user(
            f"{what} {slashed[:3]} contain '/': {written}, and .h5ad files cannot hold '/' in "
            f"column names (anndata >= 0.13 refuses to write them). {fix}",
            UserWarning,
        )
    return slashed


def write_categorical(adata: AnnData, column: str, values) -> None:
    """Write a categorical obs column, keeping each category's colour by name.

    scanpy pairs ``uns[f"{column}_colors"]`` with the categories by position, so a rerun that
    changes the categories (a type no cell holds any more) gave the types after it another
    type's colour. Colours of categories still present are kept; when a category is new the
    palette is dropped, and scanpy draws a new one.
    """
    import numpy as np
    import pandas as pd

    key = f"{column}_colors"
    colors = adata.uns.get(key)
    old = adata.obs[column] if column in adata.obs.columns else None
    adata.obs[column] = values
    if colors is None:
        return
    new = adata.obs[column]
    by_name = {}
    if old is not None and isinstance(old.dtype, pd.CategoricalDtype):
        cats = list(old.cat.categories)
        if len(colors) >= len(cats):
            by_name = dict(zip(map(str, cats), list(colors)[: len(cats)], strict=True))
    wanted = [str(c) for c in new.cat.categories] if hasattr(new, "cat") else None
    if wanted is not None and all(c in by_name for c in wanted):
        adata.uns[key] = np.asarray([by_name[c] for c in wanted], dtype=object)
    else:
        del adata.uns[key]
