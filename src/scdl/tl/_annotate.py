"""``scdl.tl.annotate``: cell-type labels, confidence and probabilities written into AnnData."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from scdl._rng import keeps_rng
from scdl._version import __version__ as scdl_version
from scdl._warnings import warn_user
from scdl.data import check_writable, warn_slashed_names, writable, write_categorical

from ._majority import (
    categories_given,
    cluster_column,
    clusters_given,
    given_clusters,
    majority_vote,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from scdl.models import CellTypeTransformer


#: obs fields written with majority voting (a call without it removes them under its key)
_VOTING_FIELDS = ("over_clustering", "majority_voting", "majority_support")


@keeps_rng
def annotate(
    adata: AnnData,
    *,
    model: CellTypeTransformer | str | os.PathLike = "pbmc_kang2018",
    layer: str | None = None,
    batch_key: str | None = None,
    key_added: str = "scdl_cell_type",
    unknown: bool = True,
    min_gene_overlap: float = 0.5,
    batch_size: int | None = None,
    adapt_to_query: float | Literal["auto"] = "auto",
    majority_voting: bool = False,
    over_clustering: str | Sequence | np.ndarray | pd.Series | pd.Categorical | None = None,
    min_support: float = 0.0,
    random_state: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Annotate cell types with a trained or pretrained :class:`~scdl.models.CellTypeTransformer`.

    Genes are matched by name to the model's; genes the data lacks count as unmeasured.
    Clusters of the query whose mean profile, corrected for the shift the whole query shares,
    is unlike the reference type they are predicted as are called ``"Unknown"``; the threshold
    is set on the reference alone (one batch against the others, or random halves) with a
    margin for the shift a new dataset brings (see
    :class:`~scdl.models.CellTypeTransformer`). The profiles are compared on the genes that
    tell the reference types apart (``model.novelty_genes_``, positions in its genes), so a
    new type whose own genes are not among them can pass as the known types it is called
    (megakaryocytes beside the shipped PBMC annotator, whose PPBP and PF4 are not: mostly
    called CD4 T cells); check clusters of such markers by hand. Cells with no count in the
    model's genes, or with fewer than 1/16 of the query's median count there (at most 10, and
    at most 1/16 of the shallowest reference type's median), are called ``"Unknown"`` too,
    with a warning. The call is not a doublet or empty-droplet detector:
    run scanpy's quality control first. Nor does it remove ambient RNA: a profile shared by
    every cell of a droplet sample (the soup of lysed cells) moves cells towards the sample's
    most abundant types and costs accuracy, more than it costs a logistic regression, without
    a warning; remove it first where it is strong (SoupX, CellBender, DecontX), or compare the
    calls with ``adapt_to_query=0.5``. Pass ``unknown=False`` to keep every cell's most
    probable type.

    The query is read as one dataset: its clusters, its shift from the reference and (with
    ``adapt_to_query``) its gene statistics are computed over all its cells, so a sample's
    calls can change with the other samples annotated beside it (unlike a per-cell classifier
    such as CellTypist without voting). Where samples differ by chemistry or protocol, pass
    their obs column as ``batch_key``: each sample is then read as a query of its own and the
    calls are joined, as annotating each apart would give them (a given ``over_clustering`` is
    voted over as given, across samples; see ``batch_key`` for what reading apart costs). The
    order of the cells does not change the calls: the query's Leiden clusters (the Unknown
    call's and the over-clustering for voting, which in scanpy depend on the order of the
    cells) are made with the cells in an order of their own content, so the same cells in any
    order get the same calls, probabilities and votes.

    The input may be raw counts or, when a file ships no counts, log1p of counts normalised to
    a constant total per cell (``sc.pp.normalize_total`` then ``sc.pp.log1p`` on all genes):
    that is detected, said once in a warning, and read as the counts behind it (each cell's
    smallest value over all genes is one count), which gives every output the counts give,
    the over-clustering and votes included. Where the values no longer scale to whole counts
    (rounded, edited), they are read on the normalised scale: the forced calls then agree
    with the counts' on nearly every cell, while Leiden's clusters, and so the Unknown call
    made per cluster and the votes, may differ. Any other matrix (scaled, a gene subset of
    log data, ...) is refused with a ValueError.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts (or log1p of normalised counts, see above) in
        ``X`` or ``layer``.
    model
        A trained annotator, or a pretrained one by name (:func:`scdl.pretrained.available`),
        folder or archive. For a URL, load it with its checksum first,
        ``scdl.pretrained.load(url, sha256=...)``, and pass the model.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    batch_key
        obs column of the query's samples (chemistry, donor, condition): each sample is
        annotated as a query of its own, with its own shift from the reference, statistics and
        clusters (the Unknown call's and the over-clustering, numbered on from one sample to
        the next; a graph in ``obsp`` is cut to each sample's cells), and the calls are joined
        in the cells' order. A sample of fewer than 100 cells gets no Unknown call (with a
        warning naming it). For samples that differ by chemistry or protocol, where the
        pooled query's shift is wrong for each: a sample read alone is judged on its own cells,
        so one holding only a condition the reference lacks is judged more strictly, and a type
        new to the reference, spread over smaller queries, is called Unknown less often than
        in the pooled query. ``None`` (default): the query is one dataset.
    key_added
        Key under which results are written (see below).
    unknown
        Call unlike cells ``"Unknown"``; ``False`` keeps every cell's most probable type.
        The call compares clusters of the query and needs at least 100 cells with counts:
        below that it is skipped (every cell takes its most probable type) and a warning says
        how many cells lie beyond their type's per-cell novelty threshold.
    min_gene_overlap
        Smallest fraction of the model's genes that ``adata`` must hold. When it lacks genes
        carrying more than 10% of the model's reference sketch, the model's linear path is
        refitted to the genes it holds (see :class:`~scdl.models.CellTypeTransformer`).
    batch_size
        Cells per forward pass; ``None``: the model's own choice for its device (1,024 on
        CPU, 16,384 on a CUDA GPU).
    adapt_to_query
        Blend (0-1) of the query's own per-gene statistics into the standardisation of each
        cell (its tokens and per-cell novelty; the Unknown call already removes the query's
        shared shift), taken with the reference types the query lacks filled in; ``0`` uses
        the reference's statistics only. ``"auto"`` (default) adapts when the query's cells mix
        poorly with the reference (the median of the cells' own reference shares below 0.3, as for
        data of another lab or chemistry) or when that cannot be measured because the query lacks
        the genes of the model's reference sketch (another gene panel), and not otherwise:
        adapting blends 0.5, then moves the reference's mean by the query's shift at the query's
        own composition and calls again until the calls settle (unless the calls are far from
        the reference's composition, e.g. a sorted population, or do not settle: the blend's
        calls stay); the blend and the re-centring passes kept are written to ``uns``.
        See :meth:`~scdl.models.CellTypeTransformer.annotate_cells`.
    majority_voting
        Refine the calls over an over-clustering of the query, as CellTypist does: each
        cluster's most frequent call (``"Unknown"`` included) is written to
        ``obs[f"{key_added}_majority_voting"]``; ``obs[key_added]`` keeps the per-cell
        calls. A call without it removes the voting columns an earlier call left under the
        same ``key_added``. The over-clustering (Leiden, of the query's own PCA or of the
        graph in ``obsp``) is made in the cells' content order, so a reordered query votes
        alike (in CellTypist it depends on the order of the cells). Voting
        fixes isolated calls inside a cluster of one type; where a cluster mixes types (close
        types in a query unlike the reference), it gives every cell the majority's type and can
        lower accuracy, as it does in CellTypist. A type with fewer query cells than an
        over-cluster holds (tens of cells at the default resolution) has no cluster of its
        own and is voted away, as in CellTypist.
        Compare both columns before keeping the vote, or set ``min_support``. A query of
        fewer than 10 cells is too small to over-cluster: each cell is its own cluster.
    over_clustering
        obs column (or per-cell array, or a Series indexed by ``adata.obs_names``, matched by
        name) of clusters for the vote; ``None`` uses a Leiden
        over-clustering at CellTypist's resolution for the query's size (5 below 5,000 cells,
        10 below 20,000, ...): of the query's neighbour graph
        ``adata.obsp["connectivities"]`` when it has one (from ``sc.pp.neighbors``, e.g. on
        an integrated space, as CellTypist does), else of a kNN graph on the query's own PCA.
    min_support
        With ``majority_voting``, clusters whose majority call holds fewer than this fraction
        of their cells keep the per-cell calls (``0``: always vote, as CellTypist). A cluster
        whose most frequent calls tie keeps the per-cell calls too (CellTypist takes the
        first in sorted order). CellTypist's ``min_prop`` names such clusters
        ``"Heterogeneous"``; here they keep the per-cell calls, and
        ``obs[f"{key_added}_majority_support"] < min_support`` picks them out.
    random_state
        Seed of the query's PCA and Leiden clusterings (the clusters the Unknown call is made
        on, and the over-clustering); the same seed gives the same calls on CPU. Their neighbour
        search is exact up to 100,000 cells and approximate above on a CPU (exact on a GPU), so
        there a GPU's calls can differ slightly. ``None``: not seeded (each run can differ).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.obs[key_added]``
        Cell type (categorical, in the model's order; types no cell holds are not
        categories), ``"Unknown"`` for flagged cells.
    ``adata.obs[f"{key_added}_confidence"]``
        Probability of the most probable type (the model's softmax; NaN for a cell without a
        count in the model's genes). Not calibrated: training's label smoothing keeps it below
        the share of right calls on cells like the reference's, and on another lab's or
        chemistry's cells it can lie above it. The Unknown call, not a cut on this value, is
        the check for cells unlike the reference.
    ``adata.obs[f"{key_added}_unknown"]``
        Whether the cell was flagged as unlike the reference (bool; before any vote).
    ``adata.obs[f"{key_added}_cluster_novelty"]``
        Novelty of the cell's query cluster (1 - cosine similarity to its predicted type's
        reference profile, after the query's shared shift is removed); over the model's
        ``cluster_threshold_`` it is the first check's evidence of the cluster's Unknown call.
    ``adata.obs[f"{key_added}_cluster_reference_share"]``
        Share of reference cells among the neighbours of the cluster's cells in the model's
        reference sketch (about 0.5 where the reference holds such cells, near 0 where it holds
        none); ``(0.5 - share) / (0.5 - min_reference_share_)`` (0 at 0.5, 1 at 0.15) is the
        second check's evidence. The cluster is called Unknown when one check passes its
        threshold and the two sum above the model's ``unknown_evidence_`` (1.6). NaN for a model
        saved without a sketch, a query of fewer than 100 cells or one lacking genes that carry
        more than 10% of the sketch (with a warning).
    ``adata.obs[f"{key_added}_over_clustering"]``
        With ``majority_voting``: the clusters voted over (categorical of strings; in the
        order of a categorical ``over_clustering``, else numeric ids by value).
    ``adata.obs[f"{key_added}_majority_voting"]``
        With ``majority_voting``: the cluster's majority call (categorical); ``key_added``
        keeps the per-cell call.
    ``adata.obs[f"{key_added}_majority_support"]``
        With ``majority_voting``: the fraction of the cell's cluster that carries the
        majority call.
    ``adata.obsm[f"{key_added}_probabilities"]``
        DataFrame of probabilities, cells x cell types (NaN rows for cells without a count
        in the model's genes).
    ``adata.uns[key_added]``
        ``params`` (``layer``, ``batch_key``, ``unknown``, ``min_gene_overlap``, ``adapt_to_query``,
        ``majority_voting``, ``over_clustering``, ``min_support``, ``random_state``: the
        options that change the calls; ``""`` for ``None``, except ``over_clustering``, which
        records the clusters: the obs column given, ``"an array given per cell"``,
        ``"Leiden of obsp['connectivities']"`` when voting over the query's own graph, else
        ``""``), ``model`` (its name or path, or
        ``"CellTypeTransformer (in memory)"`` for a model object not from
        :func:`scdl.pretrained.load`), ``model_sha256`` (the sha256 of the weights file of a
        model from :func:`scdl.pretrained.load`, ``""`` for one in memory), ``scdl_version``
        (the scdl that made the calls), ``cell_types``, ``n_genes_model`` and
        ``n_genes_matched`` (the model's genes, and how many ``adata`` holds), the model's
        thresholds (``cluster_threshold``, ``min_reference_share`` and ``unknown_evidence``,
        which make the Unknown call, the last two absent for models saved without them;
        ``novelty_calibration``; ``confidence_threshold`` and ``novelty_thresholds``, a
        DataFrame of each type's per-cell threshold indexed by cell type: they make the call
        only for models saved before the cluster call; the per-type thresholds also count the
        cells of a query under 100 cells that lie beyond them), ``unknown_fraction`` (the
        fraction called Unknown), ``majority_voting`` (as in ``params``),
        ``adapt_to_query`` (the blend that gave the starting calls: with ``"auto"``, 0 or 0.5),
        ``recentre_steps`` (the re-centring passes ``"auto"`` kept after its blend; 0 where
        none was kept),
        ``median_reference_share`` (the median of the cells' own reference shares, before
        the cluster average of ``cluster_reference_share``, that ``"auto"`` and the mixing
        level decided on; with a blend given, measured on the final calls; NaN
        when it was not measured: then ``"auto"`` blended 0.5 if the query lacked the sketch's
        genes, else 0) and ``mixing_level`` (the reference share the Unknown call counted as
        fully mixed: 0.5, or lower for a query shifted as a whole from the reference; NaN
        without the call's mixing check). With ``batch_key``, these four are given per sample
        instead, in ``batches``: a DataFrame indexed by sample with ``n_cells``,
        ``unknown_fraction``, the four, and ``composition_read`` (how the Unknown call read
        the sample's composition; ``""`` without its clusters).

    Raises
    ------
    KeyError
        ``layer`` is not in ``adata.layers``; ``batch_key`` names no obs column; with
        ``majority_voting``, ``over_clustering`` names no obs column.
    TypeError
        ``model`` is neither a model nor a pretrained annotator's name or path, or an option
        has the wrong type (e.g. ``adapt_to_query`` neither a number nor ``"auto"``, a
        ``key_added`` or ``batch_key`` that is not a string, a ``batch_key`` column of
        non-integer numbers).
    ValueError
        ``model`` names no known annotator, archive or URL; the values are neither raw counts
        nor log1p of normalised counts (fractional linear values, negative, NaN or infinite
        values); fewer than ``min_gene_overlap`` of the model's genes are in
        ``adata.var_names``; ``adata`` has no cells or no ``X``; an option is out of range
        (``min_gene_overlap``, ``min_support`` or a numeric ``adapt_to_query`` outside [0, 1],
        ``batch_size`` below 1, ``key_added`` empty or holding "/"); with ``majority_voting``,
        ``over_clustering`` does not give one cluster to every cell; the model has a type
        named ``"Unknown"``; ``batch_key``'s column has missing values, or more distinct
        numbers than a column of sample codes holds (a per-cell measurement).
    FileNotFoundError
        ``model`` is a folder that holds no saved model. Every refusal listed here leaves
        ``adata`` unchanged.

    Examples
    --------
    The pretrained PBMC annotator, on cells it was not trained on:

    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc_heldout()
    >>> scdl.tl.annotate(adata)
    >>> adata.obs["scdl_cell_type"].value_counts()
    >>> scdl.pl.annotation(adata, groupby="cell_type")

    An annotator trained on your own reference (here control cells), calling other cells
    (stimulated ones):

    >>> cells = scdl.datasets.kang_pbmc()
    >>> ref = cells[cells.obs["condition"] == "ctrl"].copy()
    >>> query = cells[cells.obs["condition"] == "stim"].copy()
    >>> scdl.models.CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    >>> model = scdl.models.CellTypeTransformer(ref)
    >>> model.train()
    >>> scdl.tl.annotate(query, model=model)
    """
    from scdl.data import (
        check_bool,
        check_fraction,
        check_is_anndata,
        check_key_added,
        check_positive_int,
        check_random_state,
        warn_other_features,
    )

    # everything is computed (and checked) before anything is written
    check_is_anndata(adata)
    check_writable(adata, copy=copy)  # anndata refuses these only after all the work
    check_key_added(key_added)
    check_random_state(random_state)
    check_positive_int(batch_size, "batch_size", none="the model's choice")
    unknown = check_bool(unknown, "unknown")
    majority_voting = check_bool(majority_voting, "majority_voting")
    min_gene_overlap = check_fraction(
        min_gene_overlap, "min_gene_overlap", meaning="the share of the model's genes needed"
    )
    if not (isinstance(adapt_to_query, str) and adapt_to_query == "auto"):
        adapt_to_query = check_fraction(
            adapt_to_query, "adapt_to_query", meaning='a blend, or "auto"'
        )
    min_support = check_fraction(min_support, "min_support", meaning="a share of a cluster")
    if over_clustering is not None and not majority_voting:
        warn_user(
            "over_clustering is used only for majority voting; pass majority_voting=True to "
            "vote over it (it is ignored now).",
            UserWarning,
        )
    model, model_name = _resolve_model(model)
    _check_model_labels(model, key_added, unknown=unknown)
    # the annotator reads its own genes only: other features matter where they bear those names
    warn_other_features(adata, among=model.get_var_names())
    # a loaded model's labels were never checked here (setup_anndata warns whoever trains it)
    warn_slashed_names(
        model.labels,
        what="The model's cell types",
        written=f"they name the columns of adata.obsm['{key_added}_probabilities']",
        fix=f"Rename those columns before `adata.write_h5ad`: `df = adata.obsm["
        f"'{key_added}_probabilities']; df.columns = df.columns.str.replace('/', '|')`.",
    )
    clusters, graph = None, None
    if majority_voting and over_clustering is not None:
        clusters = given_clusters(adata, over_clustering)
    elif majority_voting:  # the user's neighbour graph, as CellTypist over-clusters
        graph = adata.obsp["connectivities"] if "connectivities" in adata.obsp else None
    calls, probs = model.annotate_cells(
        adata,
        layer=layer,
        min_gene_overlap=min_gene_overlap,
        batch_size=batch_size,
        adapt_to_query=adapt_to_query,
        unknown_call=unknown,
        batch_key=batch_key,
        over_clustering=majority_voting and over_clustering is None,
        over_clustering_graph=graph,
        seed=random_state,
    )
    n_present = int(pd.Index(model.get_var_names()).isin(adata.var_names).sum())
    label = calls["label"] if unknown else calls["label_forced"]
    categories = model.labels + (["Unknown"] if unknown else [])
    if majority_voting:
        if clusters is None:
            clusters = calls["over_cluster"].to_numpy()
        voted, support = majority_vote(label.to_numpy(), clusters, min_support=min_support)
    user_order = categories_given(adata, over_clustering) if majority_voting else None
    adata = writable(adata, copy=copy)
    # the model's order, without types no cell holds (scanpy's rank_genes_groups and dotplot
    # fail on an empty group; uns[key_added]["cell_types"] lists every type)
    write_categorical(
        adata,
        key_added,
        pd.Categorical(label.to_numpy(), categories=categories).remove_unused_categories(),
    )
    adata.obs[f"{key_added}_confidence"] = calls["confidence"].to_numpy()
    adata.obs[f"{key_added}_unknown"] = calls["is_unknown"].to_numpy() & unknown
    adata.obs[f"{key_added}_cluster_novelty"] = calls["cluster_novelty"].to_numpy()
    adata.obs[f"{key_added}_cluster_reference_share"] = calls["cluster_reference_share"].to_numpy()
    adata.obsm[f"{key_added}_probabilities"] = probs
    voting = [f"{key_added}_{k}" for k in _VOTING_FIELDS]
    if majority_voting:
        adata.obs[voting[0]] = cluster_column(clusters, user_order)
        write_categorical(
            adata,
            voting[1],
            pd.Categorical(voted, categories=categories).remove_unused_categories(),
        )
        adata.obs[voting[2]] = support
    else:  # an earlier call's voting under this key would contradict the new calls
        for column in [c for c in voting if c in adata.obs]:
            del adata.obs[column]
    adata.uns[key_added] = {
        "params": {  # what changes the calls, as scanpy's tl functions record them
            "layer": layer or "",
            "batch_key": batch_key or "",
            "unknown": bool(unknown),
            "min_gene_overlap": float(min_gene_overlap),
            "adapt_to_query": adapt_to_query,
            "majority_voting": bool(majority_voting),
            # clusters given without majority voting are not used (said in a warning)
            "over_clustering": clusters_given(over_clustering, graph) if majority_voting else "",
            "min_support": float(min_support),
            "random_state": "" if random_state is None else int(random_state),
        },
        **_model_summary(model, model_name),
        "n_genes_matched": n_present,
        "unknown_fraction": float(adata.obs[f"{key_added}_unknown"].mean()),
        "majority_voting": bool(majority_voting),
        **_reading(calls.attrs),
    }
    return adata if copy else None


def _reading(attrs: dict) -> dict:
    """How the query was read, for ``uns``: the four entries, or the table per sample."""
    if "batches" in attrs:  # a table by sample (.h5ad writes a DataFrame; "/" in a key nests)
        table = pd.DataFrame.from_dict(attrs["batches"], orient="index")
        return {"batches": table.rename_axis("batch")}
    keys = ("adapt_to_query", "recentre_steps", "median_reference_share", "mixing_level")
    return {k: attrs[k] for k in keys}


def _resolve_model(model) -> tuple:
    """The annotator and its name for ``uns``: a trained model, or a pretrained name/path."""
    from scdl.models import CellTypeTransformer

    if isinstance(model, str | os.PathLike):
        from scdl.pretrained import load

        return load(model), str(model)
    if isinstance(model, CellTypeTransformer):
        # a model from scdl.pretrained.load keeps its name or path
        return model, getattr(model, "source_", None) or "CellTypeTransformer (in memory)"
    raise TypeError(
        "model must be a CellTypeTransformer or the name/path of a pretrained annotator "
        f"(see scdl.pretrained.available()), got {type(model).__name__}."
    )


def _check_model_labels(model, key_added: str, *, unknown: bool) -> None:
    """A model trained before setup refused them may carry a type named as the Unknown call
    (a category without cells) or one without a name: refused / said before the query runs."""
    labels = model.labels
    if unknown and "Unknown" in labels:  # the calls' categories would repeat it (pandas fails)
        key = model.registry_["setup_args"].get("labels_key") or "labels_key"
        raise ValueError(
            "The model has a cell type named 'Unknown', the name of the annotator's own call "
            "for cells unlike every type, so its calls could not be written beside it (a "
            "model trained before setup refused it, e.g. from a category without cells). "
            f"Annotate without the call, `scdl.tl.annotate(adata, model=model, unknown=False)`, "
            f"or retrain it without that category: `ref.obs[{key!r}] = ref.obs[{key!r}]"
            ".cat.remove_unused_categories()` before setup."
        )
    blank = [name for name in labels if not name.strip()]
    if blank:
        warn_user(
            f"The model has a cell type without a name ({blank[0]!r}): it names a column of "
            f"adata.obsm['{key_added}_probabilities'], which `adata.write_h5ad` cannot write. "
            f"Rename it before writing: `df = adata.obsm['{key_added}_probabilities']; "
            f"df.columns = [c if c.strip() else 'unnamed' for c in df.columns]`.",
            UserWarning,
        )


def _model_summary(model, model_name: str) -> dict:
    """What ``uns`` records about the annotator: its types, genes and thresholds."""
    return {
        "model": model_name,
        # which weights made the calls: a retrained annotator may keep its name
        "model_sha256": getattr(model, "source_sha256_", None) or "",
        "scdl_version": scdl_version,
        "cell_types": list(model.labels),
        "n_genes_model": len(model.get_var_names()),
        "confidence_threshold": float(model.module.confidence_threshold),
        # a table, not a dict keyed by cell type: .h5ad reads "/" in a key as a nested group
        "novelty_thresholds": pd.DataFrame(
            {"threshold": model.module.novelty_threshold.cpu().numpy().astype(float)},
            index=pd.Index([str(x) for x in model.labels], name="cell_type"),
        ),
        "cluster_threshold": model.cluster_threshold_,
        # the mixing check's floor and the evidence needed (absent for models saved without)
        **{
            k: float(v)
            for k, v in (
                ("min_reference_share", model.min_reference_share_),
                ("unknown_evidence", model.unknown_evidence_),
            )
            if v is not None
        },
        "novelty_calibration": model.novelty_calibration_,
    }
