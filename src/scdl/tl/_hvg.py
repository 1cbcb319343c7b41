"""Which genes a model is trained on: expressed, highly variable genes from raw counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._rng import keeps_torch_threads
from scdl._warnings import warn_user
from scdl.data import read_columns

from ._training_data import unique_gene_names

if TYPE_CHECKING:
    from anndata import AnnData


@keeps_torch_threads
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
    from scipy import sparse

    names = unique_gene_names(adata)
    expressed = names[gene_totals > 0]
    if n_top_genes is None or len(expressed) <= n_top_genes:
        return expressed
    x = adata.X if layer is None else adata.layers[layer]
    in_memory = isinstance(x, np.ndarray | sparse.spmatrix | sparse.sparray)
    ranked = names  # in memory, every gene is ranked: a column subset would copy the matrix
    if not in_memory:  # a backed matrix is read (scanpy cannot rank it), expressed genes only
        ranked = expressed
        x = read_columns(x, np.flatnonzero(np.asarray(gene_totals > 0)))
    if isinstance(x, sparse.sparray):  # scanpy's seurat_v3 takes scipy's sparse matrices only
        x = sparse.csr_matrix(x) if x.format == "csr" else sparse.csc_matrix(x)
    narrow_int = x.dtype.kind in "iu" and x.dtype.itemsize <= 4 and not sparse.issparse(x)
    if x.dtype == np.float16 or narrow_int:
        # seurat_v3 squares the values in their own dtype: counts above ~256 overflow half
        # precision, and a dense integer matrix's squares wrap (uint16 above 255, int32 above
        # 46,340): other genes chosen. int64 (e.g. read from a CSV) holds the squares: no copy.
        x = x.astype(np.float32)
    obs, keep = None, slice(None)
    if batch_key is not None:
        labels, keep = _ranking_groups(adata.obs[batch_key])
        obs = pd.DataFrame({"batch": labels}, index=adata.obs_names)[keep]
    # a row subset copies too: only when cells are left out of the ranking
    tmp = anndata.AnnData(X=x if isinstance(keep, slice) or np.all(keep) else x[keep], obs=obs)
    tmp.var_names = ranked
    hvg = _seurat_v3(tmp, n_top_genes, batch_key).set_axis(ranked).loc[expressed]
    if "highly_variable_rank" in hvg:
        # scanpy's order (rank, then batches), among expressed genes only: a gene without
        # counts ranks last in every batch, except in a batch with fewer variable genes than
        # n_top_genes, where it could take an expressed gene's place
        by = [c for c in ("highly_variable_rank", "highly_variable_nbatches") if c in hvg]
        order = hvg.sort_values(by, ascending=[True, False][: len(by)], na_position="last")
        order = order.index[:n_top_genes]
        chosen = expressed.isin(order)
    else:  # too few cells for a trend: every expressed gene
        chosen = hvg["highly_variable"].to_numpy()
    # keep the original gene order, so the model's genes read like the user's
    return expressed[chosen]


# seurat_v3 fits a loess trend of variance on mean within each batch: with a few cells the
# fit is singular (scanpy raises) and with one cell there is nothing to fit (the loess
# library crashes the process). Smaller batches are ranked together as one group; if that
# group is still too small beside larger batches, its cells are left out of the ranking
# (they are still trained on).
MIN_RANKING_CELLS = 50


def _ranking_groups(batch: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Batch labels for the gene ranking (batches under MIN_RANKING_CELLS cells pooled) and
    which cells take part in it."""
    labels = batch.astype(str).to_numpy(dtype=object)
    keep = np.ones(len(labels), dtype=bool)
    sizes = pd.Series(labels).value_counts()
    small = np.isin(labels, sizes.index[sizes < MIN_RANKING_CELLS])
    if small.any():
        labels = np.where(small, "\x00small batches", labels)
        if small.sum() < MIN_RANKING_CELLS and not small.all():
            keep = ~small
    return labels, keep


#: a gene must have counts in this many cells to be ranked when the trend over every gene
#: cannot be fitted (scanpy's tutorials filter with the same number)
MIN_RANKED_CELLS = 3


def _seurat_v3(tmp: AnnData, n_top_genes: int, batch_key: str | None) -> pd.DataFrame:
    """scanpy's seurat_v3 ranking: per batch where the trend can be fitted, else pooled. Each
    is tried over every gene, then over the genes with counts in at least
    ``MIN_RANKED_CELLS`` cells (the others ranked last), before giving it up."""
    from functools import cache

    import scanpy as sc

    @cache
    def filtered() -> AnnData | None:  # made on first need, once
        return _expressed_in_cells(tmp, n_top_genes)

    # a broken scikit-misc install (0.3 wheels on numpy 2 raise ValueError at import) is an
    # install problem, not the singular fit caught below
    try:
        import skmisc.loess  # noqa: F401
    except (ImportError, ValueError) as err:
        raise ImportError(
            f"scikit-misc, which ranks highly variable genes (seurat_v3), could not be loaded "
            f"({err}); install a build for this numpy: `pip install -U 'scikit-misc>=0.4'`."
        ) from err

    def rank(by):
        try:
            return sc.pp.highly_variable_genes(
                tmp, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=by, inplace=False
            )
        except ValueError:  # a singular loess fit
            pass
        # Genes seen in one or two cells sit at nearly one (mean, variance) point, which makes
        # the loess fit singular on a few hundred droplet cells; scanpy users filter them
        # first (sc.pp.filter_genes(min_cells=3)).
        if filtered() is None:
            return None
        try:
            out = sc.pp.highly_variable_genes(
                filtered(), flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=by, inplace=False
            )
        except ValueError:
            return None
        return out.reindex(tmp.var_names)  # unranked genes: NaN rank, not variable

    if batch_key is not None and tmp.obs["batch"].nunique() > 1:
        out = rank("batch")
        if out is not None:
            return out
        warn_user(
            f"Highly variable genes could not be ranked within each batch of "
            f"adata.obs[{batch_key!r}] (seurat_v3's variance trend could not be fitted in "
            "a batch: too few cells, or too few genes with counts in it); they are ranked "
            "ignoring the batches.",
            UserWarning,
        )
    if tmp.n_obs >= 2:  # one cell has no variance to rank by
        out = rank(None)
        if out is not None:
            return out
    warn_user(
        f"Highly variable genes could not be ranked on {tmp.n_obs} cells (seurat_v3's variance "
        "trend could not be fitted); every expressed gene is used, as with n_top_genes=None.",
        UserWarning,
    )
    return pd.DataFrame({"highly_variable": np.ones(tmp.n_vars, dtype=bool)})


def _expressed_in_cells(tmp: AnnData, n_top_genes: int) -> AnnData | None:
    """``tmp`` on the genes with counts in at least ``MIN_RANKED_CELLS`` cells; ``None`` when
    that leaves every gene or no more than ``n_top_genes`` (nothing to retry)."""
    import scanpy as sc

    # scanpy's own filter (values > 0: stored zeros are not detections), as a mask
    keep, _ = sc.pp.filter_genes(tmp, min_cells=MIN_RANKED_CELLS, inplace=False)
    if not n_top_genes < keep.sum() < tmp.n_vars:
        return None
    return tmp[:, keep].copy()
