"""The graph ``tl.cluster`` partitions: the learned representation's neighbour graph averaged
with scanpy's neighbour graph on a PCA of the cells' expression.

A VAE's low-dimensional latent removes batch effects and noise but draws close, small types
together (on one-batch data it splits large types and merges small ones at a resolution where a
PCA's graph does neither); a PCA of log-normalised variable genes keeps that finer structure but
carries the batches and more noise. On the average of the two connectivity matrices, an edge
both graphs have keeps its weight and an edge only one has keeps half of it, so Leiden follows
the structure the two share. Chosen over the latent's graph alone by the mean over every
labelled set in ``../shared/data``, and the worst one (``benchmarks/README.md``).

A PCA the user stored (``sc.pp.pca``'s ``obsm["X_pca"]``) is used as it is. Otherwise one is
computed for the call: from the genes ``tl.integrate`` trained the latent on when it recorded
them (only those columns are copied, each cell normalised by its total over all genes), else
by :func:`scdl.data.unintegrated_pca` (2,000 highly variable genes of the whole matrix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl._warnings import warn_user

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy import sparse

#: the PCA key computed over when missing (scanpy's)
DEFAULT_PCA_KEY = "X_pca"
#: neighbours of the PCA graph: scanpy's default for a PCA
PCA_NEIGHBORS = 15


def expression_pca(
    adata: AnnData, use_rep: str, pca_key: str | None, layer: str | None
) -> tuple[np.ndarray | None, str]:
    """The PCA whose graph joins ``use_rep``'s and how it was found: ``obsm[pca_key]`` when
    there, else (for the default key only; another missing key is a ``KeyError``) computed
    (:func:`genes_pca` on the genes of :func:`params_genes`, else
    :func:`scdl.data.unintegrated_pca`) from ``layer`` or, when that is ``None``, the layer
    ``tl.integrate`` trained ``use_rep`` on (``X`` when none). ``(None, "")`` when ``pca_key``
    is ``None`` or ``use_rep`` itself, or (with a warning) when the data hold neither counts
    nor log-normalised counts and no layer was given. Nothing is written."""
    from scdl.data import check_embedding, unintegrated_pca

    if pca_key is None or pca_key == use_rep:
        return None, ""
    if pca_key in adata.obsm:
        return check_embedding(adata, pca_key, purpose="clustering"), pca_key
    if pca_key != DEFAULT_PCA_KEY:  # a key of the user's own: a typo is not computed over
        raise KeyError(
            f"pca_key={pca_key!r} is not in adata.obsm (available: {list(adata.obsm)}). Pass "
            f"an existing PCA, {DEFAULT_PCA_KEY!r} (computed when missing) or None."
        )
    given = layer is not None
    if not given:
        params = adata.uns.get(use_rep, {})
        params = params.get("params", {}) if isinstance(params, dict) else {}
        layer = params.get("layer") or None
    genes = params_genes(adata, use_rep)
    try:
        if genes is None:
            pca = unintegrated_pca(adata, layer=layer)
        else:
            pca = genes_pca(adata, layer, genes)
    except ValueError as err:
        if given:
            raise
        where = f"layer {layer!r}" if layer else "adata.X"
        warn_user(
            f"{pca_key!r} is not in adata.obsm and {where} holds neither counts nor "
            f"log-normalised counts ({err}); clustering on {use_rep!r}'s graph alone. Pass "
            "layer= (counts), or store a PCA in adata.obsm (e.g. `sc.pp.pca(adata)`), or "
            "pca_key=None to silence this.",
            UserWarning,
        )
        return None, ""
    how = f"uns[{use_rep!r}]['var_names']" if genes is not None else "most variable genes"
    return np.asarray(pca, dtype=np.float32), f"computed from {layer or 'X'}, {how}"


def pca_connectivities(pca: np.ndarray, random_state: int) -> sparse.csr_matrix:
    """scanpy's neighbour graph (``PCA_NEIGHBORS`` neighbours) of ``pca``, on a private
    AnnData."""
    import anndata
    import pandas as pd
    import scanpy as sc

    n = pca.shape[0]
    tmp = anndata.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)))
    tmp.obsm["pca"] = pca
    k = PCA_NEIGHBORS if n > PCA_NEIGHBORS else 1 + n // 2  # as tl.cluster's own graph
    sc.pp.neighbors(tmp, n_neighbors=k, use_rep="pca", random_state=random_state)
    return tmp.obsp["connectivities"]


def params_genes(adata: AnnData, use_rep: str) -> list[str] | None:
    """The genes ``tl.integrate`` trained ``use_rep`` on (``uns[use_rep]["var_names"]``), when
    recorded and all in ``adata``; else ``None``."""
    info = adata.uns.get(use_rep)
    genes = info.get("var_names") if isinstance(info, dict) else None
    if genes is None or len(genes) < 3 or not adata.var_names.is_unique:
        return None
    genes = [str(g) for g in np.asarray(genes).ravel()]
    return genes if adata.var_names.get_indexer(genes).min() >= 0 else None


def genes_pca(adata: AnnData, layer: str | None, genes: list[str], n_comps: int = 50):
    """PCA of log1p(counts per 10,000) of ``genes`` only, each cell's total over all its genes
    (as ``sc.pp.normalize_total`` before a gene subset): the genes the latent was trained on,
    copied alone rather than the whole matrix. Log-normalised data are used as they are."""
    import anndata
    import scanpy as sc
    from scipy import sparse

    from scdl.data import get_matrix, input_kind

    kind, _ = input_kind(adata, layer)
    x = get_matrix(adata, layer)
    if not (sparse.issparse(x) or isinstance(x, np.ndarray)):  # a backed AnnData's matrix
        x = x[:]
    cols = adata.var_names.get_indexer(genes)
    sub = sparse.csr_matrix(x[:, cols], dtype=np.float32)
    if kind == "counts":
        totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
        scale = np.where(totals > 0, 1e4 / np.maximum(totals, 1e-12), 0.0)
        sub = sparse.csr_matrix(sparse.diags(scale.astype(np.float32)) @ sub)
        sub.data = np.log1p(sub.data)
    tmp = anndata.AnnData(X=sub)
    n_comps = max(1, min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=0)
    return tmp.obsm["X_pca"]
