"""The query-side steps of a :class:`~scdl.models.CellTypeTransformer` call: the query's own
statistics blended into the standardisation (:mod:`._adaptation`), and the Unknown call's
clusters of the query, their novelty and their reference shares (:mod:`._novelty`,
:mod:`._mixing`), with the query filled to the reference's composition where it lacks types
(:mod:`._composition`).

A mixin of :class:`._annotator_predict.AnnotatorPredictionMixin`; it reads the trained module
and the calibration ``train`` stored.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from scdl._warnings import warn_user

from ._adaptation import (
    MAX_RECENTRE_STEPS,
    RECENTRE_TOLERANCE,
    blend_query_stats,
    composition_corrected_shift,
)
from ._composition import (
    composition_warning,
    composition_weights,
    filled_stats,
    query_fill,
    shift_is_plausible,
    shifted_query_weights,
    sketch_stats,
)
from ._depth import (
    DEPTH_LEVELS,
    depth_ratio,
    integer_counts,
    level_fraction,
    looks_amplified,
    match_depth,
    min_typed_counts,
    type_depths,
)
from ._mixing import (
    MIN_QUERY_CELLS,
    MIN_SKETCH_COVERAGE,
    cluster_means,
    reference_share,
    sketch_coverage,
)
from ._novelty import (
    MAX_COMPOSITION_SHIFT,
    NOVELTY_RESOLUTION,
    _mean_sd,
    celltypist_resolution,
    cluster_cells,
    cluster_novelty,
    composition_shift,
    log_normalize,
)
from ._refit import refit_linear


class AnnotatorQueryMixin:
    """Query adaptation, the linear path for a query lacking genes and the Unknown call's
    per-cluster checks of a call."""

    def _min_typed_counts(self, totals) -> float:
        """Fewest counts in the model's genes a cell of a query whose cells hold ``totals`` is
        typed by (:func:`._depth.min_typed_counts`)."""
        return min_typed_counts(self.module.sketch_depth.detach().cpu().numpy(), totals)

    def _depths_comparable(self, counts) -> bool:
        """Whether the query's ``counts`` (``None``: not recovered) and the reference's count
        the same thing: molecules on both sides, or amplified reads on both
        (:func:`._depth.looks_amplified`; the reference read from its stored sample, taken as
        molecules in a model saved without one)."""
        if counts is None:
            return False
        sample = self.module.reference_sample()
        reference_reads = sample is not None and looks_amplified(sample[0])
        return looks_amplified(counts) == reference_reads

    def _warn_if_shallow(self, totals: np.ndarray, best: np.ndarray, present=None) -> None:
        """Warn when the typed cells hold, at the median, less than the lowest depth level the
        model keeps (1/16) of the counts its reference cells of their predicted types hold:
        the classifier saw only the reference's own depth, and its calls lose accuracy fast
        below that (imaging panels of a few dozen counts per cell). A query lacking genes is
        compared with the model's reference sample over the genes it holds (no warning for a
        model saved without that sample)."""
        depths = self.module.sketch_depth.detach().cpu().numpy()
        if self._lacks_genes(present):  # the sketch's depths count genes the query lacks
            sample = self.module.reference_sample()
            if sample is None:
                return
            counts, labels = sample
            counts = counts[:, np.asarray(present, dtype=bool)]
            kept = type_depths(counts, labels) if len(labels) else np.zeros(0, np.float32)
            # a type without sampled cells takes the sample's overall median
            overall = type_depths(counts)[0] if len(labels) else 0.0
            depths = np.full(len(depths), overall)
            depths[: kept.size] = kept
            depths[depths <= 0] = overall  # a type without counts in these genes: the sample's
        ratio = depth_ratio(totals, depths, best)
        if np.isfinite(ratio) and ratio < level_fraction(DEPTH_LEVELS - 1):
            warn_user(
                f"The query's cells hold {ratio:.1%} of the counts (median) that the "
                "reference's cells of their types hold in the model's genes, below 1/16, the "
                "shallowest depth the model is checked at: its calls lose accuracy fast at "
                "such depths (see the model card). Compare them with a simple classifier on "
                "these cells, e.g. a logistic regression on log-normalised counts, and use "
                "the calls with care.",
                UserWarning,
            )

    def _lacks_genes(self, present) -> bool:
        """Whether the query lacks genes carrying more than 10% of the reference sketch
        (:data:`MIN_SKETCH_COVERAGE`; ``False`` for a model without a sketch)."""
        if present is None:
            return False
        loadings = {"sketch_loadings": self.module.sketch_loadings.detach().cpu().numpy()}
        return bool(sketch_coverage(loadings, present) < MIN_SKETCH_COVERAGE)

    @contextlib.contextmanager
    def _linear_for(self, present):
        """For the duration, the linear path refitted to the genes ``present`` on the model's
        reference sample (:mod:`._refit`) when the query lacks the sketch's genes; the trained
        one otherwise, and afterwards."""
        refit = None
        if self._lacks_genes(present):
            # one fit per gene set and sample, reused by the calls of a query
            key = (np.packbits(np.asarray(present, dtype=bool)).tobytes(), self.module.sample_id)
            cached = getattr(self, "_refit_cache", None)
            if cached is None or cached[0] != key:
                cached = (key, refit_linear(self.module, present, getattr(self, "linear_C_", None)))
                self._refit_cache = cached
            refit = cached[1]
        if refit is None:
            yield
            return
        lin = self.module.linear
        saved = (lin.weight.detach().clone(), lin.bias.detach().clone())
        try:
            with torch.no_grad():
                lin.weight.copy_(refit[0])
                lin.bias.copy_(refit[1])
            yield
        finally:  # the trained path is never changed by a call
            with torch.no_grad():
                lin.weight.copy_(saved[0])
                lin.bias.copy_(saved[1])

    def _warn_if_composition_differs(self, best: np.ndarray, read: str) -> None:
        """Warn when the query's predicted composition is far from the reference's (e.g. one
        sorted population) or the call weighed it to the reference's, what the Unknown call
        can then tell; ``read``: how :meth:`_cluster_calls` read the query
        (:mod:`._composition`)."""
        shift = composition_shift(best, self.module.sketch_composition.cpu().numpy())
        if shift > MAX_COMPOSITION_SHIFT or read == "weighted":
            warn_user(composition_warning(shift, read), UserWarning)

    def _adapted_features(self, x, present, batch_size, host, weight: float, first):
        """:meth:`_features` with the query's own statistics blended in by ``weight``, the
        query filled to the reference's composition by its unadapted probabilities ``first``
        (:func:`._adaptation.blend_query_stats`); the model's statistics are restored."""
        mod = self.module
        saved = (mod.gene_mean.clone(), mod.gene_std.clone())
        try:
            blend_query_stats(mod, host, present, weight, first.argmax(1))
            return self._features(x, present, batch_size)
        finally:  # the model's reference statistics are never changed by a call
            mod.gene_mean.copy_(saved[0])
            mod.gene_std.copy_(saved[1])

    def _recentred_features(self, x, present, batch_size, host, probs, novelty):
        """``"auto"``'s adaptation of a shifted query, after the blend: the reference's per-gene
        mean moved by the query's shift at the query's own composition, measured from its calls
        so far (:func:`._adaptation.composition_corrected_shift`; the reference's sd kept), and
        the calls made again, until they settle. Returns the probabilities, the novelty and the
        passes made; 0, and the calls given, where it is not made: a model saved before the
        reference's type means, a query without counts, one whose calls are far from the
        reference's composition, or one whose calls do not settle (see the module notes of
        :mod:`._adaptation`). The model's statistics are restored."""
        mod = self.module
        if mod.sketch_moments.numel() == 0:
            return probs, novelty, 0
        has = np.asarray(host.sum(1)).ravel() > 0  # empty droplets are no sample of the shift
        best = probs.argmax(1).numpy()
        composition = mod.sketch_composition.cpu().numpy()
        if not has.any() or composition_shift(best[has], composition) > MAX_COMPOSITION_SHIFT:
            return probs, novelty, 0
        x_log = log_normalize(host[has])
        type_means = mod.sketch_moments[0].detach().cpu().numpy()
        held = None if present is None else torch.as_tensor(present, device=mod.device)
        saved = mod.gene_mean.clone()
        try:
            for steps in range(1, MAX_RECENTRE_STEPS + 1):
                shift = composition_corrected_shift(x_log, best[has], type_means)
                shift = torch.as_tensor(shift, dtype=saved.dtype, device=mod.device)
                if held is not None:  # genes the query lacks keep the reference's mean
                    shift = torch.where(held, shift, torch.zeros_like(shift))
                mod.gene_mean.copy_(saved + shift)
                moved, moved_novelty = self._features(x, present, batch_size)
                now = moved.argmax(1).numpy()
                changed, best = float((now[has] != best[has]).mean()), now
                if changed < RECENTRE_TOLERANCE:
                    return moved, moved_novelty, steps
        finally:  # the model's reference statistics are never changed by a call
            mod.gene_mean.copy_(saved)
        return probs, novelty, 0  # still moving: the calls feed their own shift

    def _lacks_sketch_genes(self, x, present) -> bool:
        """Whether the mixing check is skipped only because the query lacks the sketch's genes
        (a sketch to compare with, and enough cells with counts to measure on)."""
        with_counts = int((np.asarray(x.sum(1)).ravel() > 0).sum())
        return self._lacks_genes(present) and with_counts >= MIN_QUERY_CELLS

    def _cluster_calls(
        self,
        x,
        present,
        best,
        resolution,
        seed,
        *,
        cluster: bool = True,
        warn: bool = True,
        shifted: bool = False,
    ):
        """Query clusters, their novelty and reference share per cell, the over-clustering for
        voting (``resolution=False``: none, ``-1``), each cell's own reference share (what
        ``"auto"`` adaptation decides on) and how the query's statistics were read
        (``"own"``, ``"filled"``, ``"weighted"``, ``"shifted"``, or ``"unlike"`` where a fill
        was refused: :mod:`._composition`). ``cluster=False``:
        the cells' own shares only (no clustering; the other outputs -1 / NaN).
        ``warn=False``: a query lacking the sketch's genes is not warned about here (a later
        call in the same step warns). ``shifted``: the query's cells mix poorly with the
        reference's as a whole (another lab or chemistry); its statistics are then read at the
        reference's composition (:func:`._composition.shifted_query_weights`), the pool as it is."""
        n = x.shape[0]
        has = np.asarray(x.sum(1)).ravel() > 0
        if 0 < has.sum() < n:  # cells without counts are Unknown; clustered with the others,
            # they form clusters of their own and pull the query's statistics (the shared
            # shift the call removes), which called many real cells Unknown: left out
            out = (np.full(n, -1), *np.full((2, n), np.nan), np.full(n, -1), np.full(n, np.nan))
            sub = self._cluster_calls(
                x[has],
                present,
                best[has],
                resolution,
                seed,
                cluster=cluster,
                warn=warn,
                shifted=shifted,
            )
            for full, part in zip(out, sub[:5], strict=True):
                full[has] = part
            return (*out, sub[5])
        if not cluster:
            resolution = False
        if resolution is None:  # CellTypist's choice by query size
            resolution = celltypist_resolution(n)
        if n < MIN_QUERY_CELLS:  # a few cells' own mean is their profile, not a shared
            # shift: every cluster would look new (all Unknown below ~60 cells); no novelty
            # (annotate_cells says so), only the over-clustering for voting
            over = np.full(n, -1)
            if resolution is not False and n < 10:  # too few to over-cluster: a vote over
                over = np.arange(n)  # them all would overwrite right calls; each keeps its own
            elif resolution is not False:
                (over,) = cluster_cells(
                    log_normalize(x), resolutions=(float(resolution),), seed=seed
                )
            nan = np.full((2, n), np.nan)
            return np.zeros(n, dtype=int), *nan, over, np.full(n, np.nan), "own"
        x_log = log_normalize(x)
        own = _mean_sd(x_log)  # the query's own per-gene statistics, read by all three steps
        # a query lacking reference types is filled to the reference's composition first
        sketch = self.module.sketch()
        centroids = self.module.centroids.cpu().numpy()
        genes = self.novelty_genes_ if self.novelty_genes_ is not None else range(x.shape[1])
        fill, stats, part, unlike = query_fill(best, sketch), own, 1.0, False
        if fill is not None and not shift_is_plausible(
            x_log, best, sketch, fill, centroids, genes, present
        ):
            fill, unlike = None, True  # its types are unlike the reference's: no shift
        # a query far from the reference's composition with every type present (a sample
        # dominated by one type) is read at the reference's composition; not for "auto"'s
        # decision (cluster=False): the unadapted calls it reads take a shifted query's
        # composition poorly, and weights from them moved its calls (benchmarks/README.md)
        # the weights of the pool's query side and of the query's statistics
        weights = stat_weights = None
        if cluster and fill is None:
            weights = stat_weights = composition_weights(best, sketch["sketch_composition"])
            if weights is None and shifted:
                # a query shifted as a whole stands in for the reference under that shift only
                # at the reference's composition: its own mean, at another composition (another
                # lab's donors), moved known types' clusters away from their profiles
                # (benchmarks/README.md, stop 75). Its statistics alone: a population the
                # reference lacks keeps its place in the mixing check's pool
                stat_weights = shifted_query_weights(best, sketch["sketch_composition"])
        weighted = None if stat_weights is None else _mean_sd(x_log, stat_weights)
        if fill is not None:
            stats, part = filled_stats(x_log, best, sketch["sketch_moments"], *fill)
        elif weighted is not None:
            stats = weighted
        clusters, score, over = np.full(n, -1), np.full(n, np.nan), np.full(n, -1)
        if cluster:
            resolutions = (NOVELTY_RESOLUTION * part,)
            resolutions += () if resolution is False else (float(resolution),)
            clusters, *more = cluster_cells(
                x_log, resolutions=resolutions, seed=seed, device=self.module.device, stats=own
            )
            over = more[0] if more else over
            score, _ = cluster_novelty(
                x_log,
                clusters,
                best,
                centroids,
                genes,
                present,
                stats,
                mixture=self.novelty_rule_ in ("mixture", "prototypes"),
                prototypes=self.module.prototypes() if self.novelty_rule_ == "prototypes" else None,
            )
        # the mixing check compares the query with the reference sketch at the query's depth
        cells = sketch["sketch_cells"]
        counts = integer_counts(x)
        level, thinned = match_depth(
            counts if self._depths_comparable(counts) else None,
            sketch["sketch_depth"],
            n_levels=len(cells) if cells.ndim == 3 else 1,
            calls=best,
            seed=seed,
        )
        if thinned is not None:  # deeper than the reference: thinned to its depth
            x_log = log_normalize(thinned)
            own = _mean_sd(x_log)
            weighted = None if stat_weights is None else _mean_sd(x_log, stat_weights)
        stats, pseudo = own, None
        if fill is not None:
            stats = sketch_stats(x_log, best, sketch, fill, own, level)
            pseudo = np.round(fill[0])
        elif weighted is not None:
            stats = weighted
        own_share = reference_share(
            x_log,
            None,
            sketch,
            present,
            seed=seed,
            stats=stats,
            level=level,
            fill=pseudo,
            warn=warn,
            weights=weights,
        )
        share = cluster_means(own_share, clusters) if cluster else np.full(n, np.nan)
        read = "filled" if fill is not None else "weighted" if weights is not None else "own"
        read = "shifted" if weights is None and stat_weights is not None else read
        return clusters, score, share, over, own_share, "unlike" if unlike else read
