"""The private AnnData a ``tl`` function trains on, so the user's object stays clean."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl.data import get_matrix

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData


def training_adata(
    adata: AnnData, genes: pd.Index, *, layer: str | None, obs_keys: Sequence[str]
) -> AnnData:
    """Counts of ``genes`` (float32) with only ``obs_keys``: scvi-tools' registration then
    writes its ``_scvi_*`` columns here, not into the user's AnnData."""
    import anndata

    x = get_matrix(adata, layer)
    out = anndata.AnnData(
        X=x[:, adata.var_names.get_indexer(genes)],
        obs=adata.obs[list(dict.fromkeys(obs_keys))].copy(),
    )
    out.obs_names = adata.obs_names
    out.var_names = genes
    if out.X.dtype != np.float32:
        out.X = out.X.astype(np.float32)
    return out
