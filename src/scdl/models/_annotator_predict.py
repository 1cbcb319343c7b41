"""Calls of a trained :class:`~scdl.models.CellTypeTransformer`: probabilities and novelty,
the Unknown call per query cluster and labels (the query read in the model's gene order and the
warnings about cells that cannot be typed: :mod:`._annotator_input`; the query's adaptation and
the cluster checks: :mod:`._annotator_query`; gene attributions: :mod:`._annotator_attribution`).

A mixin of the model class (as scvi-tools keeps ``get_normalized_expression`` and friends in
``RNASeqMixin``); it reads the trained module and the calibration ``train`` stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from scdl.data import (
    CSRTensors,
    check_categorical,
    check_random_state,
    inference_batch_size,
    sparse_tensors_on,
)
from scdl.dataloaders import dense_rows

from ._adaptation import auto_blend, check_adapt
from ._annotator_batches import annotate_by_batch
from ._annotator_input import AnnotatorInputMixin, warn_small_query, warn_untyped_cells
from ._annotator_query import AnnotatorQueryMixin
from ._arguments import check_switches
from ._checked_query import cell_positions
from ._depth import integer_counts, rows_emptied
from ._mixing import MIN_QUERY_CELLS, SHIFTED_BELOW_SHARE, mixing_level
from ._novelty import celltypist_resolution, content_order, leiden_on_graph, unknown_clusters

if TYPE_CHECKING:
    from anndata import AnnData

#: the label of a cell whose cluster matches no reference type
UNKNOWN = "Unknown"


class AnnotatorPredictionMixin(AnnotatorInputMixin, AnnotatorQueryMixin):
    """Inference methods of :class:`~scdl.models.CellTypeTransformer`."""

    # --- prediction --------------------------------------------------------------------------
    def _features(self, x, present=None, batch_size: int | None = None):
        """Probabilities and novelty (cells) for a matrix in vocabulary order; the linear path
        refitted to the genes a query lacking the sketch's genes holds (:mod:`._refit`)."""
        with self._linear_for(present):
            return self._features_of(x, present, batch_size)

    def _features_of(self, x, present=None, batch_size: int | None = None):
        """Probabilities and novelty (cells) for a matrix in vocabulary order.

        Novelty is 1 - the cosine similarity between a cell's standardised profile and the
        mean profile of the type it is predicted as (over the genes the data holds): a cell of
        a type absent from the reference, forced onto the nearest type, matches it poorly.
        Sparse input (scipy or :class:`~scdl.data.CSRTensors`) goes through the module's CSR
        path (cost in the non-zeros; same values as the dense path), on the model's device.
        """

        self.module.eval()
        dev = self.module.device
        if batch_size is None:
            batch_size = inference_batch_size(dev)
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise TypeError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        elif batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
        mask = None if present is None else torch.as_tensor(present, device=dev)
        centroids = self.module.centroids
        if mask is not None:
            centroids = centroids * mask
        c_norm = centroids.norm(dim=1)
        if not sparse_tensors_on(dev):  # e.g. Apple's MPS: dense minibatches from the host
            x = x.to_scipy() if isinstance(x, CSRTensors) else x
        elif sparse.issparse(x):
            x = CSRTensors.from_scipy(x, dev)
        probs, novelty = [], []
        with torch.inference_mode():
            n = x.n_rows if isinstance(x, CSRTensors) else x.shape[0]
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                if isinstance(x, CSRTensors):
                    crow, col, data = x.rows(start, stop)
                    _, logits, dots, z_norm = self.module.features_csr(
                        crow, col, data, mask, centroids
                    )
                else:
                    xb = dense_rows(x, np.arange(start, stop)).to(dev)
                    _, logits, z = self.module.features(xb, mask)
                    dots, z_norm = z @ centroids.T, z.norm(dim=1)
                p = torch.softmax(logits, 1)
                best = p.argmax(1)
                sim = dots.gather(1, best[:, None]).squeeze(1) / (z_norm * c_norm[best]).clamp(
                    min=1e-8
                )
                probs.append(p)
                novelty.append(1 - sim)
        return torch.cat(probs).cpu(), torch.cat(novelty).cpu()

    def annotate_cells(
        self,
        adata: AnnData | None = None,
        *,
        layer: str | None = None,
        min_gene_overlap: float = 0.5,
        batch_size: int | None = None,
        adapt_to_query: float | Literal["auto"] = "auto",
        over_clustering: bool = False,
        over_clustering_graph=None,
        over_clustering_resolution: float | None = None,
        seed: int = 0,
        unknown_call: bool = True,
        batch_key: str | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Everything :func:`scdl.tl.annotate` writes: per-cell calls and probabilities.

        Parameters
        ----------
        adata, layer, min_gene_overlap, batch_size
            As in :meth:`predict`.
        adapt_to_query
            Blend (0-1) of the query's own per-gene mean and sd of log-normalised expression
            into the reference's before standardising the query; ``0`` uses the reference's
            only. Under a shift that moves every cell of the query the same way (another lab,
            chemistry or a stimulation absent from the reference), the blend keeps that shift
            from deciding which genes become a cell's tokens; where the query's composition
            differs from the reference's (a new donor), the blend moves its mean too, which can
            cost accuracy. ``"auto"`` (default) decides from the query: it adapts when the
            median of its cells' own reference shares (the mixing check's, before
            ``cluster_reference_share`` averages them over a cluster) is below 0.3 (its cells
            mix poorly with the reference's, as data of another lab or chemistry do; about 0.5
            when they mix fully), and not otherwise. Where the mixing check cannot be made
            because the query lacks genes carrying more than 10% of the sketch (another gene
            panel or annotation, mostly another lab's), it adapts; where it is not made for
            another reason (a model without a sketch, fewer than 100 cells with counts), not.
            Adapting is a blend of 0.5, then a re-centring that removes the shift the blend
            only halves without taking the query's composition for one: starting from the
            blend's calls, the reference's per-gene mean (not blended) is moved by the query's
            mean minus the reference's type means weighted by the share of the query's cells
            called each type (its sd is kept), the calls are made again, and again until fewer
            than 0.1% of the cells change; those calls are returned. It is not made, and the
            blend's calls stay, where the calls read the query's composition poorly: when they
            are more than half away from the reference's composition (total-variation
            distance; a sorted population), or do not settle within 10 passes (miscalls
            feeding their own shift); nor for a model saved before the reference's type means.
            A number blends that much and does not re-centre. ``calls.attrs`` records the blend
            that gave the starting calls (``"adapt_to_query"``), the re-centring passes made
            (``"recentre_steps"``, 0 where none was kept), the median
            (``"median_reference_share"``: with a blend given, the one the Unknown call
            measures on the final calls; NaN where no share was measured) and the Unknown
            call's ``"mixing_level"`` (set from that median, see the class notes; NaN without
            its mixing check) and how it read the query's composition (``"composition_read"``:
            ``"own"``, ``"filled"``, ``"weighted"``, ``"shifted"`` or ``"unlike"``, see the class
            notes; unset without the Unknown call's clusters). The query's statistics are taken
            after filling it to the reference's composition: reference types that its unadapted
            calls leave out (or nearly) are added as pseudo-cells with the reference's statistics
            for those types, moved by the shift its present types share, so a query of one or a few
            populations does not take its own markers as its mean (a model saved before it kept
            those statistics blends unfilled). Cells without counts (empty droplets) are left out. A
            blend costs one more forward pass, each re-centring pass one more; ``"auto"``, and the
            Unknown call whatever the blend, one more neighbour search of the mixing check (the
            cells' own shares, before the query is clustered). The Unknown call clusters the query
            on its own statistics, then compares the clusters with the reference standardised by
            the query's statistics read at the reference's composition where the query is
            filled, dominated by one type or shifted as a whole (its cells' median reference
            share, measured on the unadapted calls, below 0.3); it follows the adapted calls.
        over_clustering
            Also over-cluster the query (for majority voting) and return it as
            ``over_cluster`` (``-1`` otherwise); it costs a second Leiden run.
        over_clustering_graph
            A cells x cells graph (e.g. ``adata.obsp["connectivities"]`` from
            ``sc.pp.neighbors`` on an integrated space) to over-cluster on instead of the
            query's own PCA, as CellTypist does when the query has a neighbour graph.
        over_clustering_resolution
            Leiden resolution of that over-clustering; ``None`` chooses it from the number of
            cells as CellTypist does (5 below 5,000 cells, 10 below 20,000, 15 below 40,000,
            else 20).
        seed
            Seed of the query's PCA and clustering.
        unknown_call
            Cluster the query and make the Unknown call (the clustering is most of the cost);
            ``False`` returns forced calls only (no cell Unknown, cluster columns -1 / NaN).
        batch_key
            obs column of the query's samples: each is annotated as a query of its own (its
            shift, statistics and clusters), and the calls are joined in the cells' order,
            cluster ids numbered on from one sample to the next. ``calls.attrs`` then
            holds ``"batches"`` in place of them: a dict by sample of its cells, share called
            Unknown and those entries.

        Returns
        -------
        calls
            DataFrame (cells) with ``label`` (``"Unknown"`` where flagged, and for a cell
            without any count in the model's genes),
            ``label_forced`` (the most probable type), ``confidence`` (its probability; NaN,
            as the cell's probabilities are, for a cell without any count in the model's genes),
            ``novelty`` (1 - cosine similarity of the cell's standardised profile to the
            predicted type's mean reference profile), ``cluster`` and ``cluster_novelty``
            (the query cluster the Unknown call is made on and its novelty, see the class
            notes; NaN, and no cell flagged, for a query of fewer than 100 cells with counts,
            with a warning), ``cluster_reference_share`` (the share of reference cells among the
            neighbours of the cluster's cells in the model's reference sketch; NaN without a
            sketch, for a query of fewer than 100 cells or one lacking genes that carry more
            than 10% of the sketch, with a warning), ``over_cluster`` (a finer clustering of
            the query) and ``is_unknown``.
        probabilities
            DataFrame (cells x cell types).
        """
        over_clustering, unknown_call = check_switches(over_clustering, unknown_call)
        adapt = check_adapt(adapt_to_query)
        check_random_state(seed, "seed")  # numpy's errors name no argument
        if batch_key is not None:
            if adata is None:  # the registered cells, read from the layer they were set up with
                adata = self._require_adata("annotate", takes_adata=True)
                layer = self.registry_["setup_args"].get("layer")
            return annotate_by_batch(
                self,
                adata,
                check_categorical(adata, batch_key, arg="batch_key"),
                layer=layer,
                min_gene_overlap=min_gene_overlap,
                batch_size=batch_size,
                adapt_to_query=adapt_to_query,
                over_clustering=over_clustering,
                over_clustering_graph=over_clustering_graph,
                over_clustering_resolution=over_clustering_resolution,
                seed=seed,
                unknown_call=unknown_call,
            )
        x, present, kind = self._query_matrix(adata, layer, min_gene_overlap)
        # Leiden (the Unknown call's clusters, the over-clustering), the query's float sums and
        # the thinning draws follow the order of the cells: the query is read in an order of
        # its cells' own content, so the same cells in any order get the same calls (the
        # reference, its prototypes and its calibration keep their own order)
        matrix = x.to_scipy()
        # cells identical in the model's genes by name: their rows in a user's graph differ
        order = content_order(matrix, (self.adata if adata is None else adata).obs_names)
        # the host copy, in that order, that query statistics, clustering and the empty-cell
        # check read (the device copy is made from it)
        matrix = matrix[order]
        x = CSRTensors.from_scipy(matrix, self.module.device)
        host = matrix if adapt != 0.0 or unknown_call or over_clustering else None
        values = np.asarray(matrix.sum(1)).ravel()
        # counts, also behind log-normalised input (None: not recoverable, depth unknown)
        counts = integer_counts(matrix)
        totals = None if counts is None else np.asarray(counts.sum(1)).ravel()
        # cells of a few counts (segmentation slivers, near-empty droplets) get confident calls
        # that rest on nothing, and in the Unknown call's clusters and mixing check they called
        # real cells Unknown: that call reads them as empty (the query's statistics, which the
        # forced calls adapt to, keep them: a shallow query is mostly such cells)
        few, floor = np.zeros(len(values), dtype=bool), float("nan")
        if totals is not None:
            floor = self._min_typed_counts(totals)
            few = (totals > 0) & (totals < floor)
        checked = rows_emptied(host, few) if host is not None and few.any() else host
        own_graph = over_clustering and over_clustering_graph is None
        resolution = over_clustering_resolution if own_graph else False
        probs, novelty = self._features(x, present, batch_size)
        median_share, first_median = float("nan"), float("nan")
        if adapt == "auto" or unknown_call:
            # the query's mixing with the reference decides "auto"'s blend (._adaptation) and
            # how the Unknown call reads its statistics (shifted as a whole or not); the cells'
            # own shares need no clustering, which is made once, on the final calls. The
            # mixing check's skip is said by the Unknown call below, where there is one
            first = probs.argmax(1).numpy()
            first_share = self._cluster_calls(
                checked, present, first, False, seed, cluster=False, warn=False
            )[4]
            if np.isfinite(first_share).any():
                first_median = float(np.nanmedian(first_share))
            if adapt == "auto":
                lacks = self._lacks_sketch_genes(checked, present)
                median_share, adapt = auto_blend(first_share, lacks_sketch_genes=lacks)
        steps = 0
        if adapt > 0:
            # the unadapted calls say which reference types the query lacks; filling them
            # in keeps a query of few types from standardising its own markers away
            probs, novelty = self._adapted_features(x, present, batch_size, host, adapt, probs)
            if adapt_to_query == "auto":  # then the shift at the query's own composition
                probs, novelty, steps = self._recentred_features(
                    x, present, batch_size, host, probs, novelty
                )
        names = np.asarray(self.labels, dtype=object)
        conf, best = probs.max(1)
        forced = names[best.numpy()]
        index = (self.adata if adata is None else adata).obs_names[order]
        calls = pd.DataFrame(
            {
                "label_forced": forced,
                "confidence": conf.numpy(),
                "novelty": novelty.numpy(),
            },
            index=index,
        )
        calls.attrs["adapt_to_query"] = float(adapt)
        calls.attrs["median_reference_share"] = median_share
        calls.attrs["recentre_steps"] = steps
        calls.attrs["mixing_level"] = float("nan")  # set by the Unknown call's mixing check
        calls["cluster"], calls["cluster_novelty"], calls["over_cluster"] = -1, np.nan, -1
        calls["cluster_reference_share"] = np.nan
        if unknown_call or own_graph:
            # the mixing check's skip is said only where there is an Unknown call to weaken
            cluster, score, share, over, own_share, read = self._cluster_calls(
                checked,
                present,
                best.numpy(),
                resolution,
                seed,
                warn=unknown_call,
                shifted=bool(first_median < SHIFTED_BELOW_SHARE),
            )
            calls["cluster"], calls["cluster_novelty"], calls["over_cluster"] = cluster, score, over
            calls["cluster_reference_share"] = share
            calls.attrs["composition_read"] = read
        if over_clustering and not own_graph:
            graph = over_clustering_graph
            if getattr(graph, "shape", None) != (len(calls), len(calls)):
                raise ValueError(
                    f"over_clustering_graph must be a cells x cells matrix ({len(calls)} x "
                    f"{len(calls)}), got shape {getattr(graph, 'shape', None)}."
                )
            res = over_clustering_resolution
            res = celltypist_resolution(len(calls)) if res is None else float(res)
            graph = sparse.csr_matrix(graph)[order][:, order]  # the cells' content order
            calls["over_cluster"] = leiden_on_graph(graph, resolution=res, seed=seed)
        if not unknown_call:  # forced calls only
            unknown = np.zeros(len(calls), dtype=bool)
        elif self.cluster_threshold_ is not None:
            # a query shifted as a whole (another lab) reads its shares partly relative to its
            # known clusters', not only to full mixing (._mixing.mixing_level)
            share = calls["cluster_reference_share"].to_numpy()
            if np.isnan(median_share) and np.isfinite(own_share).any():
                # a given blend: the median of the cells' shares on the final calls; for a
                # query read as shifted, the median that decided it (its shares on reweighted
                # statistics are higher, and would read it as less shifted than it is)
                median_share = first_median if read == "shifted" else float(np.nanmedian(own_share))
                calls.attrs["median_reference_share"] = median_share
            level = mixing_level(
                calls["cluster_novelty"].to_numpy(), self.cluster_threshold_, share, median_share
            )
            if np.isfinite(share).any():  # recorded where the mixing check was made
                calls.attrs["mixing_level"] = level
            unknown = unknown_clusters(
                calls["cluster_novelty"].to_numpy(),
                self.cluster_threshold_,
                share,
                self.min_reference_share_,
                self.unknown_evidence_,
                level,
            )
        else:  # a model calibrated before the cluster call: its per-cell thresholds
            unknown = (
                (conf < self.module.confidence_threshold.cpu())
                | (novelty > self.module.novelty_threshold.cpu()[best])
            ).numpy()
        if totals is not None and self._depths_comparable(counts):
            self._warn_if_shallow(totals[totals > 0], best.numpy()[totals > 0], present)
        empty = (values == 0) | few
        warn_untyped_cells(
            values, few, floor, totals, layer=layer, kind=kind, unknown_call=unknown_call
        )
        if unknown_call:  # no count in the model's genes: nothing to type the cell by
            unknown = unknown | empty
        typed = 0 if not unknown_call else int((~empty).sum())
        if self.cluster_threshold_ is not None and 0 < typed < MIN_QUERY_CELLS:
            # the per-cell thresholds (calibrated on held-out reference cells) say whether
            # the cells resemble the reference at all: a few of a query of its kind pass them,
            # nearly all of another tissue's
            beyond = (novelty > self.module.novelty_threshold.cpu()[best]).numpy()[~empty]
            warn_small_query(typed, beyond)  # _cluster_calls made no novelty
        elif self.cluster_threshold_ is not None and typed >= MIN_QUERY_CELLS:
            self._warn_if_composition_differs(best.numpy()[~empty], read)  # the typed cells
        calls.insert(0, "label", np.where(unknown, UNKNOWN, forced))
        calls["is_unknown"] = unknown
        probs = probs.numpy()
        # a cell without a count in the model's genes has nothing its probabilities rest on:
        # the softmax of an empty profile read as a confident call (0.78 in the shipped model)
        blank = values == 0
        probs[blank] = np.nan
        calls.loc[blank, "confidence"] = np.nan
        probs = pd.DataFrame(probs, index=index, columns=self.labels)
        back = np.argsort(order)  # the cells' own order again
        return calls.iloc[back], probs.iloc[back]

    def predict(
        self,
        adata: AnnData | None = None,
        indices=None,
        *,
        soft: bool = False,
        unknown: bool = True,
        layer: str | None = None,
        min_gene_overlap: float = 0.5,
        batch_size: int | None = None,
        adapt_to_query: float | Literal["auto"] = "auto",
    ) -> np.ndarray | pd.DataFrame:
        """Cell-type labels (or probabilities) for ``adata`` (raw counts).

        Parameters
        ----------
        adata
            Query AnnData; ``None`` predicts the reference. Genes are aligned by name.
        indices
            Cells of ``adata`` to predict (positions or a boolean mask, as in scvi-tools);
            ``None``: all. The Unknown call is then made among these cells only.
        soft
            Return probabilities (DataFrame cells x cell types) instead of labels; rows of
            cells without a count in the model's genes are NaN.
        unknown
            Call cells unlike any reference type ``"Unknown"`` (see the class notes).
        layer
            Layer of ``adata`` holding raw counts.
        min_gene_overlap
            Smallest fraction of the model's genes the query must hold. A query lacking genes
            that carry more than 10% of the model's reference sketch is called with the linear
            path refitted on the model's reference sample over the genes it holds (see the
            class notes; models saved before the sample keep the trained path).
        batch_size
            Cells per forward pass.
        adapt_to_query
            Blend of the query's own gene statistics into the standardisation, or ``"auto"``
            (default; see :meth:`annotate_cells`); ``0`` uses the reference's only.
        """
        from scdl.data import check_bool

        soft = check_bool(soft, "soft", truthy=True)
        unknown = check_bool(unknown, "unknown")  # on by default: None is no "off"
        if indices is not None:
            host = self._require_adata("predict", takes_adata=True) if adata is None else adata
            adata = host[cell_positions(indices, host.n_obs)]
        calls, probs = self.annotate_cells(
            adata,
            layer=layer,
            min_gene_overlap=min_gene_overlap,
            batch_size=batch_size,
            adapt_to_query=adapt_to_query,
            unknown_call=unknown and not soft,
        )
        if soft:
            return probs
        return calls["label" if unknown else "label_forced"].to_numpy()
