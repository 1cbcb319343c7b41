"""Writing an AnnData so that a failed write leaves no partial file behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike) -> Path:
    """``adata.write_h5ad(path)``, under a temporary name beside it until complete.

    A write that fails (a full disk, a column anndata cannot store) leaves an earlier file
    of that name as it was and no cut-off file that a later save or load would trust.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        adata.write_h5ad(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
