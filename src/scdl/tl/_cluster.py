"""``scdl.tl.cluster``: Leiden clustering on a learned representation, at a given resolution,
a resolution chosen without labels, or the resolution giving a number of clusters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np

from scdl._neighbors import knn_transformer
from scdl._rng import keeps_rng
from scdl._warnings import warn_user
from scdl.data import (
    check_embedding,
    check_is_anndata,
    check_key_added,
    check_obsm_key,
    check_random_state,
    check_writable,
    get_matrix,
    warn_other_features,
    writable,
)

from ._cluster_graph import expression_pca, pca_connectivities

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData


@keeps_rng
def cluster(
    adata: AnnData,
    *,
    use_rep: str = "X_scdl",
    resolution: float | Literal["auto"] = 1.0,
    n_clusters: int | None = None,
    n_neighbors: int = 30,
    pca_key: str | None = "auto",
    layer: str | None = None,
    key_added: str = "scdl_cluster",
    random_state: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Cluster cells by Leiden community detection on a learned representation.

    Builds a k-nearest-neighbour graph on ``obsm[use_rep]`` (scanpy's
    :func:`~scanpy.pp.neighbors`; the neighbours are exact, scikit-learn's search, up to 20,000
    cells, where scanpy would switch to pynndescent from 8,192) and runs scanpy's Leiden
    (igraph flavour) on it. For a latent of :func:`scdl.tl.integrate`, the graph is first
    averaged with scanpy's 15-neighbour graph on a PCA of the cells' expression
    (``obsm["X_pca"]``, computed when missing): the VAE's
    low-dimensional latent draws close, small types together and splits large ones, the PCA
    keeps that finer structure, and on the average cells stay linked by the edges both graphs
    give them. A PCA also carries every batch effect (across two labs it put one lab's
    monocytes in a cluster of their own), so for a latent trained with a batch key the PCA is
    first corrected by Harmony (``harmonypy``) over that key. Any other representation is
    clustered on its own graph unless ``pca_key`` names a PCA. The graph is stored under its
    own key, so a PCA-based ``neighbors`` graph is left as it was.

    ``resolution="auto"`` chooses the resolution without labels: Leiden runs at each
    resolution of a grid (0.1 to 2), the mean silhouette width of each partition is computed
    in ``use_rep`` (Euclidean, on at most 2,000 random cells), and the highest resolution
    whose silhouette is within 0.01 of the best, among those giving two or more clusters, is
    kept, but never one below 0.4: the silhouette can peak at a few coarse groups of types
    (e.g. lymphoid and myeloid cells), below the types themselves; on a PCA of blood cells
    the floor is often the choice. When no partition's silhouette is above 0.01 (e.g.
    identical cells), the lowest resolution of the grid is kept; otherwise "auto" never
    returns a single cluster, and it is made for data of several types: on one homogeneous
    population in a low-dimensional space (one cell type subset out of a VAE latent), arbitrary
    splits score silhouettes of 0.03-0.1, the scan is flat and the choice follows noise (the
    seed, a subsample), from 2 to over 10 clusters; pass a number there, or read the scan
    (:func:`scdl.pl.cluster_resolution`) first. Like any silhouette choice it favours
    well-separated groups: subtypes that overlap in the representation may stay merged;
    pass a number or ``n_clusters`` then.

    ``n_clusters=k`` bisects the resolution until Leiden gives ``k`` clusters (the closest
    count when none gives ``k`` exactly); as Leiden never returns fewer clusters than the
    graph has connected components, a smaller ``k`` is reached by merging the clusters whose
    centroids in ``use_rep`` are closest (average linkage).

    To sub-cluster some clusters (scanpy's ``restrict_to``), run scanpy's Leiden on the graph
    written here: ``sc.tl.leiden(adata, restrict_to=("scdl_cluster", ["0"]),
    neighbors_key="scdl_cluster_neighbors", flavor="igraph", n_iterations=2,
    key_added="scdl_subcluster")``; ``sc.tl.umap`` and ``sc.tl.paga`` read it with the same
    ``neighbors_key``. For a graph of your own only (``sc.pp.neighbors``, bbknn), use
    ``sc.tl.leiden``: this step builds its graph from ``use_rep``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        obsm key of the representation, e.g. the output of :func:`scdl.tl.integrate`.
    resolution
        Leiden resolution: higher gives more, smaller clusters. ``"auto"`` chooses it by
        silhouette width, at least 0.4 (see above). Ignored, with a warning, when
        ``n_clusters`` is given.
    n_clusters
        Number of clusters wanted; the resolution is searched for it.
    n_neighbors
        Neighbours per cell in ``use_rep``'s graph. The default, twice scanpy's 15, suits a
        VAE's low-dimensional latent space: on it a 15-neighbour graph breaks large cell
        types into more Leiden clusters, at the same resolution, than a 15-neighbour graph
        on 50 principal components does. Pass 15 for scanpy's usual graph.
    pca_key
        ``"auto"``: average in the graph of ``obsm["X_pca"]`` for a latent of
        :func:`scdl.tl.integrate` (``uns[use_rep]["params"]``), harmonised over
        ``obs[batch_key]`` when it was trained with one (harmonypy's defaults; one Harmony
        cluster up to 15 cells; not harmonised when one batch is left; a warning and
        ``use_rep``'s graph alone when that column is gone; a ``ValueError`` when it has missing
        values); else ``use_rep``'s graph alone. An obsm key (e.g.
        ``sc.pp.pca``'s ``"X_pca"``, or a harmonised PCA of your own): average in that PCA's
        15-neighbour graph, used as it is, whatever ``use_rep`` is (the key must be in ``obsm``,
        except ``"X_pca"``). A missing ``"X_pca"`` is computed for the call (not stored) from
        ``layer``: counts per 10,000, ``log1p``, 50 components, on the genes ``tl.integrate``
        trained ``use_rep`` on (``uns[use_rep]["var_names"]``), else on 2,000 highly variable genes
        (:func:`scdl.data.unintegrated_pca`); log-normalised data are used as they are. Store a PCA
        to reuse it across calls. Data that are neither (e.g. scaled) give a warning and
        ``use_rep``'s graph alone. ``None`` (or ``use_rep`` itself): ``use_rep``'s graph alone.
    layer
        Layer of counts for a PCA that is computed; ``None``: the layer ``tl.integrate``
        trained ``use_rep`` on (``uns[use_rep]["params"]["layer"]``) while it exists, else
        ``X``. A layer given must exist, even where no PCA is computed.
    key_added
        obs column of the clusters (not ``use_rep`` or its UMAP's key, nor a key whose ``uns``
        entry is another step's record, e.g. ``"neighbors"``: each is refused, as it would be
        overwritten). A clustering's record under it (this step's, ``sc.tl.leiden``'s) is
        replaced.
    random_state
        Seed of the Leiden optimisation, the neighbour graphs and Harmony. ``None``: not
        seeded (each run can differ).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``. Writes:

    ``adata.obs[key_added]``
        Cluster labels (categorical), named ``"0"``, ``"1"``, ... from the largest.
    ``adata.uns[key_added]``
        Leiden parameters, with ``resolution`` (the one used) and ``resolution_method``
        (``"fixed"``, ``"auto"`` or ``"n_clusters"``). ``"auto"`` adds ``scan``: a dict of
        arrays ``resolution``, ``n_clusters`` and ``silhouette`` over the grid (plot it with
        :func:`scdl.pl.cluster_resolution`); ``n_clusters`` adds ``n_clusters`` (the
        count reached: the closest one, with a warning, when no resolution gives the one
        requested), ``n_clusters_requested``, ``n_clusters_leiden`` (Leiden's count at
        ``resolution``: more than ``n_clusters`` when closest centroids were merged) and
        ``scan`` with the ``resolution`` and ``n_clusters`` of each search step.
    ``adata.uns[f"{key_added}_neighbors"]``
        The neighbour graph's ``params`` (scanpy's layout), with ``params["pca"]``: the obsm
        key of the PCA whose graph was averaged in, ``"computed from X, ..."`` (the layer and
        genes it was computed from) when it was computed, either followed by ``", harmonised
        over obs[...]"`` when Harmony corrected it; ``""`` when none was.
    ``adata.obsp[f"{key_added}_neighbors_connectivities"]``
        The graph Leiden ran on: ``use_rep``'s connectivities, averaged with the PCA's when
        one joined.
    ``adata.obsp[f"{key_added}_neighbors_distances"]``
        The kNN distances in ``use_rep``.

    Raises
    ------
    KeyError
        ``use_rep`` or ``pca_key`` is not in ``adata.obsm`` (``pca_key="X_pca"`` is computed
        when missing), or ``layer`` is not in ``adata.layers``.
    TypeError
        ``n_neighbors``, ``n_clusters``, ``resolution``, ``use_rep`` or ``pca_key`` has the
        wrong type (e.g. a sparse or non-numeric ``use_rep``).
    ValueError
        ``use_rep`` holds NaN or infinite values; fewer than 3 cells; ``resolution`` neither
        a positive number nor ``"auto"``, ``n_neighbors`` below 2 or ``n_clusters`` outside 1
        to the number of cells; the batch key ``use_rep`` was trained with has missing values
        (its PCA is harmonised over it); a given ``layer`` holds neither counts nor
        log-normalised counts; ``key_added`` would overwrite another step's record in
        ``adata.uns``. Every refusal listed here leaves ``adata`` unchanged.

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> scdl.tl.integrate(adata, batch_key="sample")
    >>> scdl.tl.cluster(adata, resolution="auto")
    >>> scdl.pl.cluster_resolution(adata)
    >>> scdl.pl.embedding(adata, color=["scdl_cluster", "sample"])
    """
    import scanpy as sc

    rep, n_neighbors = _check_inputs(
        adata, use_rep, resolution, n_clusters, n_neighbors, pca_key, layer, key_added, random_state
    )
    check_writable(adata, copy=copy)
    # computed (or refused) before anything is written
    pca, pca_source = expression_pca(adata, use_rep, pca_key, layer, random_state)
    if pca is not None:  # read from every column of X
        warn_other_features(adata)
    adata = writable(adata, copy=copy)
    neighbors_key = f"{key_added}_neighbors"
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        use_rep=use_rep,
        key_added=neighbors_key,
        random_state=random_state,
        transformer=knn_transformer(adata.n_obs),
    )
    graph = f"{neighbors_key}_connectivities"
    if pca is not None:
        averaged = (adata.obsp[graph] + pca_connectivities(pca, random_state)) / 2
        # float32 as scanpy writes it (the division promoted it to float64: twice the memory)
        adata.obsp[graph] = averaged.tocsr().astype(np.float32)
    adata.uns[neighbors_key]["params"]["pca"] = pca_source
    connectivities = adata.obsp[graph]
    if n_clusters is not None:
        _cluster_to_k(adata, connectivities, rep, int(n_clusters), key_added, random_state)
        return adata if copy else None
    scan = None
    if isinstance(resolution, str):
        from ._resolution import choose
        from ._resolution import scan as scan_resolutions

        table = scan_resolutions(connectivities, rep, seed=random_state)
        resolution = choose(table)
        scan = {c: table[c].to_numpy() for c in ("resolution", "n_clusters", "silhouette")}
    sc.tl.leiden(
        adata,
        resolution=float(resolution),
        key_added=key_added,
        neighbors_key=neighbors_key,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=random_state,
    )
    # named by size, as with n_clusters (igraph numbers them from the first cell's)
    adata.obs[key_added] = named_by_size(adata.obs[key_added].to_numpy())
    adata.uns[key_added]["resolution"] = float(resolution)
    adata.uns[key_added]["resolution_method"] = "fixed" if scan is None else "auto"
    if scan is not None:
        adata.uns[key_added]["scan"] = scan
    return adata if copy else None


def _check_inputs(
    adata, use_rep, resolution, n_clusters, n_neighbors, pca_key, layer, key_added, random_state
):
    """The representation to cluster and the number of neighbours to use, with every argument
    checked before anything is written."""
    check_is_anndata(adata)
    rep = check_embedding(adata, use_rep, purpose="clustering", arg="use_rep")
    if pca_key is not None and pca_key != "auto":
        check_obsm_key(pca_key, "pca_key")
    check_random_state(random_state)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer):
        raise TypeError(f"n_neighbors must be an integer, got {n_neighbors!r}.")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}.")
    if n_clusters is not None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer):
            raise TypeError(f"n_clusters must be an integer or None, got {n_clusters!r}.")
        if not 1 <= n_clusters <= adata.n_obs:
            raise ValueError(
                f"n_clusters must be between 1 and the number of cells ({adata.n_obs}), got "
                f"{n_clusters}."
            )
        if isinstance(resolution, str) or resolution != 1.0:  # 1.0: the default, unsaid
            warn_user(
                f"resolution={resolution!r} is ignored: n_clusters={n_clusters} searches the "
                "resolution giving that many clusters.",
                UserWarning,
            )
    elif isinstance(resolution, str):
        if resolution != "auto":
            raise ValueError(f'resolution must be a number > 0 or "auto", got {resolution!r}.')
    elif isinstance(resolution, bool) or not isinstance(resolution, int | float | np.number):
        raise TypeError(f'resolution must be a number > 0 or "auto", got {resolution!r}.')
    elif not 0 < resolution < np.inf:
        raise ValueError(f"resolution must be > 0 and finite (e.g. 0.5 to 2), got {resolution!r}.")
    check_key_added(key_added)
    if key_added == use_rep or key_added == f"{use_rep}_umap":
        # uns[key_added] would replace the representation's record (tl.integrate's genes and
        # batch key, which the next tl.cluster reads) or pl.embedding's UMAP cache
        raise ValueError(
            f"key_added={key_added!r} would overwrite adata.uns[{key_added!r}], the record of "
            f"use_rep={use_rep!r}. Choose another key, e.g. 'scdl_cluster'."
        )
    record = adata.uns.get(key_added)
    params = record.get("params") if isinstance(record, Mapping) else None
    clustering = (isinstance(params, Mapping) and "resolution" in params) or key_added in adata.obs
    if record is not None and not clustering:
        # a clustering's record (scdl's, sc.tl.leiden's, or one whose params a concat thinned
        # beside its obs column) is replaced as scanpy replaces it; another step's is not:
        # key_added="neighbors" replaced sc.pp.neighbors' record, and sc.tl.umap then failed
        other = "scdl_cluster" if key_added != "scdl_cluster" else "scdl_leiden"
        raise ValueError(
            f"key_added={key_added!r} would overwrite adata.uns[{key_added!r}], which is not "
            "a clustering's record (e.g. sc.pp.neighbors' graph, which sc.tl.umap reads). "
            f"Choose another key, e.g. {other!r}."
        )
    if layer is not None:  # a typo is refused even where no PCA is computed
        get_matrix(adata, layer)
    if pca_key is not None and not isinstance(pca_key, str):
        raise TypeError(f"pca_key must be an obsm key (str) or None, got {pca_key!r}.")
    if adata.n_obs <= n_neighbors:
        if adata.n_obs < 3:
            raise ValueError(
                f"{adata.n_obs} cells are too few to cluster (a neighbour graph needs >= 3)."
            )
        used = 1 + adata.n_obs // 2  # scanpy's choice for too few cells
        warn_user(
            f"{adata.n_obs} cells cannot have n_neighbors={n_neighbors}; using "
            f"n_neighbors={used}, as scanpy does (pass a smaller n_neighbors to choose).",
            UserWarning,
        )
        n_neighbors = used
    return rep, n_neighbors


def named_by_size(labels) -> pd.Categorical:
    """Clusters named "0", "1", ... from the largest (ties: the first cell's first)."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(labels))  # in order of first appearance
    order = np.argsort(-np.bincount(codes), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    names = [str(i) for i in range(len(uniques))]
    return pd.Categorical.from_codes(rank[codes], categories=names)


def _cluster_to_k(adata, connectivities, rep, n_clusters: int, key_added: str, random_state):
    """Leiden at the resolution searched for ``n_clusters`` (merging the closest centroids
    below the graph's components); clusters named 0, 1, ... by size."""

    from ._resolution import merge_to, search_n_clusters

    chosen, labels, steps = search_n_clusters(connectivities, n_clusters, seed=random_state)
    leiden_count = len(np.unique(labels))
    labels = merge_to(labels, rep, n_clusters)
    named = named_by_size(labels)
    sizes = named.value_counts()
    if len(sizes) != n_clusters:  # Leiden's counts jump, or stop growing at resolution 10
        warn_user(
            f"No resolution gives {n_clusters} Leiden clusters on this graph; using the "
            f"closest, {len(sizes)} clusters at resolution {chosen:.3g} (recorded in "
            f"uns[{key_added!r}]['n_clusters']).",
            UserWarning,
        )
    adata.obs[key_added] = named
    adata.uns[key_added] = {
        "params": {"resolution": chosen, "random_state": random_state, "n_iterations": 2},
        "resolution": chosen,
        "resolution_method": "n_clusters",
        "n_clusters": len(sizes),
        "n_clusters_requested": int(n_clusters),
        # Leiden's count at that resolution, when closest centroids were merged below it
        "n_clusters_leiden": leiden_count,
        "scan": {
            "resolution": np.array([r for r, _ in steps]),
            "n_clusters": np.array([k for _, k in steps]),
        },
    }
