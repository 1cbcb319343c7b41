"""The graph ``tl.cluster`` partitions: the learned representation's neighbour graph, averaged
with scanpy's neighbour graph on a PCA of the cells' expression for a latent of ``tl.integrate``.

A VAE's low-dimensional latent removes noise but draws close, small types together and splits
large ones (on one-batch data, at a resolution where a PCA's graph does neither); a PCA of
log-normalised variable genes keeps that finer structure. On the average of the two
connectivity matrices, an edge both graphs have keeps its weight and an edge only one has keeps
half of it, so Leiden follows the structure the two share. The PCA also carries every batch
effect: across two labs' PBMCs the averaged graph put one lab's monocytes in a cluster of their
own. So by default (``pca_key="auto"``), for a latent ``tl.integrate`` trained with a batch
key, the PCA is first corrected by Harmony over that key (harmonypy, its defaults), as a user
would before clustering a PCA of several batches. Any other representation is clustered alone
unless a PCA is named, which is used as it is (``benchmarks/README.md``).

A PCA the user stored (``sc.pp.pca``'s ``obsm["X_pca"]``) is used (harmonised for a batch latent,
not overwritten). Otherwise one is computed for the call: from the genes ``tl.integrate`` trained
the latent on when it recorded them (only those columns are copied, each cell normalised by its
total over all genes; a backed matrix is read in chunks of rows), else by
:func:`scdl.data.unintegrated_pca` (the most variable genes of a copy of the whole matrix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl._neighbors import knn_transformer
from scdl._rng import keeps_torch_threads
from scdl._warnings import scanpy_scratch, warn_user

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy import sparse

#: the PCA key computed over when missing (scanpy's)
DEFAULT_PCA_KEY = "X_pca"
#: ``pca_key`` default: a PCA joins a latent of ``tl.integrate`` (harmonised for a batch one)
AUTO = "auto"
#: what ``tl.integrate`` records as ``uns[key]["params"]["model"]``
VAE_MODEL = "scdl.models.VAE"
#: neighbours of the PCA graph: scanpy's default for a PCA
PCA_NEIGHBORS = 15


def uses_pca(adata: AnnData, use_rep: str, pca_key: str | None) -> tuple[str | None, str]:
    """The PCA key whose graph is averaged in (or ``None``) and the obs column it is
    harmonised over (``""``: none). ``"auto"`` gives ``"X_pca"`` for a latent of
    ``tl.integrate`` (its ``uns[use_rep]["params"]``), harmonised over the batch key it was
    trained with, if any; for any other representation ``None``. A key named by the user is
    used as it is; a key equal to ``use_rep`` gives ``None``."""
    batch = ""
    if pca_key == AUTO:
        info = adata.uns.get(use_rep)
        if info is None and use_rep == "X_scdl":  # tl.integrate's latent, its record gone
            warn_user(
                f"adata.obsm[{use_rep!r}] has no record in adata.uns[{use_rep!r}], so nothing "
                "says it is a tl.integrate latent: it is clustered on its own graph, without "
                "the PCA graph tl.integrate's latents are joined with (they separate cell "
                "types less well alone). After `anndata.concat` (which drops uns unless given "
                "uns_merge='same'), concatenate with uns_merge='same' or copy "
                f"adata.uns[{use_rep!r}] from the object tl.integrate wrote to; for a latent "
                "written by hand (`model.get_latent_representation()`), pass pca_key='X_pca' "
                "to join a PCA graph (not harmonised over batches), or pca_key=None to "
                "silence this.",
                UserWarning,
            )
        params = info.get("params", {}) if isinstance(info, dict) else {}
        if params.get("model") != VAE_MODEL:
            return None, ""
        pca_key, batch = DEFAULT_PCA_KEY, str(params.get("batch_key") or "")
    if pca_key is None or pca_key == use_rep:
        return None, ""
    return pca_key, batch


def expression_pca(
    adata: AnnData, use_rep: str, pca_key: str | None, layer: str | None, random_state: int = 0
) -> tuple[np.ndarray | None, str]:
    """The PCA whose graph joins ``use_rep``'s (:func:`uses_pca`) and how it was found:
    ``obsm[key]`` when there, else (for ``"X_pca"`` only; another missing key is a
    ``KeyError``) computed (:func:`scdl.data.genes_pca` on the genes of :func:`params_genes`, else
    :func:`scdl.data.unintegrated_pca`) from ``layer`` or, when that is ``None``, the layer
    ``tl.integrate`` trained ``use_rep`` on when it is still there (``X`` otherwise). ``(None,
    "")`` when no PCA joins, or (with a warning) when the data hold neither counts nor
    log-normalised counts and no layer was given. Nothing is written."""
    import warnings

    from scdl.data import check_embedding, genes_pca, input_kind, unintegrated_pca

    key, batch = uses_pca(adata, use_rep, pca_key)
    if key is None:
        return None, ""
    if batch and batch not in adata.obs:
        warn_user(
            f"{use_rep!r} was trained with batch_key={batch!r}, which is no longer in "
            f"adata.obs, so its PCA cannot be harmonised over the batches; clustering on "
            f"{use_rep!r}'s graph alone. Restore adata.obs[{batch!r}], or pass pca_key=None "
            "to silence this.",
            UserWarning,
        )
        return None, ""
    if batch and adata.obs[batch].isna().any():
        n_na = int(adata.obs[batch].isna().sum())
        raise ValueError(
            f"adata.obs[{batch!r}] (the batch key {use_rep!r} was trained with) has {n_na} "
            "missing values; the PCA averaged into the graph is harmonised over it and needs a "
            "batch for every cell. Fill them (e.g. with the batch the cells came from), or pass "
            "pca_key=None to cluster on the latent's graph alone."
        )
    if key in adata.obsm:
        pca = check_embedding(adata, key, purpose="clustering")
        return harmonised(adata, pca, batch, key, random_state)
    if key != DEFAULT_PCA_KEY:  # a key of the user's own: a typo is not computed over
        raise KeyError(
            f"pca_key={key!r} is not in adata.obsm (available: {list(adata.obsm)}). Pass "
            f"an existing PCA, {DEFAULT_PCA_KEY!r} (computed when missing), 'auto' or None."
        )
    given = layer is not None
    if not given:
        params = adata.uns.get(use_rep, {})
        params = params.get("params", {}) if isinstance(params, dict) else {}
        layer = params.get("layer") or None
        if layer is not None and layer not in adata.layers:  # dropped since: X is read
            layer = None
    try:
        with warnings.catch_warnings():  # tl.cluster says what it reads (uns, below)
            warnings.simplefilter("ignore", UserWarning)
            kind, _ = input_kind(adata, layer)
    except ValueError as err:
        if given:
            raise
        where = f"layer {layer!r}" if layer else "adata.X"
        warn_user(
            f"{key!r} is not in adata.obsm and {where} holds neither counts nor "
            f"log-normalised counts ({err}); clustering on {use_rep!r}'s graph alone. Pass "
            "layer= (counts), or store a PCA in adata.obsm (e.g. `sc.pp.pca(adata)`), or "
            "pca_key=None to silence this.",
            UserWarning,
        )
        return None, ""
    genes = params_genes(adata, use_rep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pca = (
                unintegrated_pca(adata, layer=layer)
                if genes is None
                else genes_pca(adata, genes, layer=layer, kind=kind)
            )
    except ValueError as err:  # e.g. no count in those genes: the user asked for no PCA
        if given:
            raise
        warn_user(
            f"{key!r} is not in adata.obsm and could not be computed ({err}); clustering on "
            f"{use_rep!r}'s graph alone. Pass layer= (counts), or pca_key=None to silence this.",
            UserWarning,
        )
        return None, ""
    how = f"uns[{use_rep!r}]['var_names']" if genes is not None else "most variable genes"
    source = f"computed from {layer or 'X'}, {how}"
    return harmonised(adata, np.asarray(pca, dtype=np.float32), batch, source, random_state)


@keeps_torch_threads
def harmonised(
    adata: AnnData, pca: np.ndarray, batch: str, source: str, random_state: int
) -> tuple[np.ndarray, str]:
    """``pca`` corrected by Harmony (harmonypy's defaults, seeded by ``random_state``) over
    ``obs[batch]``, and its source with ``", harmonised over obs[...]"``; unchanged when
    ``batch`` is ``""`` or names one category. Harmony's default number of clusters,
    ``round(cells / 30)``, is none up to 15 cells (an error in harmonypy): one is used there."""
    import harmonypy
    import pandas as pd

    if not batch:
        return pca, source
    codes = pd.DataFrame({"batch": adata.obs[batch].astype(str).to_numpy()})
    if codes["batch"].nunique() < 2:
        return pca, source
    n = pca.shape[0]
    few = {"nclust": 1} if round(n / 30.0) < 1 else {}
    # components x cells: harmonypy reads a square matrix that way, so no orientation is
    # ambiguous; it returns cells x components
    out = harmonypy.run_harmony(
        np.asarray(pca, dtype=np.float64).T,
        codes,
        "batch",
        random_state=random_state,
        verbose=False,
        **few,
    )
    z = np.asarray(out.Z_corr, dtype=np.float32)
    if z.shape != pca.shape:  # another harmonypy than the >= 2 pyproject asks for
        raise RuntimeError(f"harmonypy returned shape {z.shape} for a PCA of {pca.shape}.")
    return np.ascontiguousarray(z), f"{source}, harmonised over obs[{batch!r}]"


@scanpy_scratch()
@keeps_torch_threads
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
    sc.pp.neighbors(
        tmp, n_neighbors=k, use_rep="pca", random_state=random_state, transformer=knn_transformer(n)
    )
    return tmp.obsp["connectivities"]


def params_genes(adata: AnnData, use_rep: str) -> list[str] | None:
    """The genes ``tl.integrate`` trained ``use_rep`` on (``uns[use_rep]["var_names"]``), when
    recorded and all in ``adata``; else ``None``."""
    info = adata.uns.get(use_rep)
    genes = info.get("var_names") if isinstance(info, dict) else None
    if genes is None or len(genes) < 3 or not adata.var_names.is_unique:
        return None
    genes = [str(g) for g in np.asarray(genes).ravel()]
    # compared as text (tl.integrate stores names as text; integer var_names stay integers)
    where = adata.var_names.astype(str).get_indexer(genes)
    return list(adata.var_names[where]) if where.min() >= 0 else None
