"""Which genes a model is trained on: expressed, highly variable genes from raw counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._training_data import unique_gene_names

if TYPE_CHECKING:
    from anndata import AnnData


def select_genes(
    adata: AnnData,
    gene_totals: np.ndarray,
    *,
    layer: str | None,
    batch_key: str | None,
    n_top_genes: int | None,
) -> pd.Index:
    """Expressed genes, reduced to ``n_top_genes`` highly variable ones (seurat_v3 on counts).

    Genes with no counts are dropped (they carry no signal and break count likelihoods).
    With a ``batch_key``, variability is ranked within each batch, as in scanpy.
    Duplicated ``var_names`` are suffixed as ``var_names_make_unique`` does
    (:func:`unique_gene_names`); the user's AnnData is not renamed.
    """
    import anndata
    import scanpy as sc

    names = unique_gene_names(adata)
    expressed = names[gene_totals > 0]
    if n_top_genes is None or len(expressed) <= n_top_genes:
        return expressed
    x = adata.X if layer is None else adata.layers[layer]
    mask = np.asarray(gene_totals > 0)
    obs = adata.obs[[batch_key]].copy() if batch_key is not None else None
    tmp = anndata.AnnData(X=x[:, mask], obs=obs)
    tmp.var_names = expressed
    hvg = sc.pp.highly_variable_genes(
        tmp, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key, inplace=False
    )
    hvg.index = expressed
    # keep the original gene order, so the model's genes read like the user's
    return expressed[hvg["highly_variable"].to_numpy()]
