"""Calibration of a trained :class:`~scdl.models.CellTypeTransformer` on its reference: the
per-cell Unknown thresholds on held-out cells, the linear path's final fit, and the
cluster-level Unknown call (threshold, compared genes, the types' prototypes and the reference
sketch), and the sample of reference cells kept for a query lacking genes.

A mixin of the model class; :meth:`~scdl.models.CellTypeTransformer.train` runs it after
training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from scdl._warnings import warn_user
from scdl.data import in_memory
from scdl.dataloaders import dense_rows

from ._mixing import MIN_REFERENCE_SHARE, build_sketch
from ._novelty import UNKNOWN_EVIDENCE, reference_prototypes
from ._novelty_calibration import calibrate_threshold
from ._refit import linear_weights, sample_rows

#: most values (cells x genes) densified for the linear path's fit: with 2,000 genes every
#: cell up to 20,000; with a whole transcriptome (~30,000 genes) about 4,000
LINEAR_FIT_VALUES = 125_000_000


class AnnotatorCalibrationMixin:
    """``calibrate``, ``calibrate_clusters`` and the linear path's fit."""

    def _calibrate_after_training(self, splitter, *, unknown_rate: float, linear_C: float) -> None:
        """Unknown thresholds on the held-out cells, the final linear path, cluster calls."""
        self.module.eval()
        heldout = splitter.val_idx
        if len(heldout) == 0:  # a tiny reference (< 10 cells at 0.9), or validation_size=0
            warn_user(
                f"No reference cell is held out ({self.adata.n_obs} cells): the Unknown "
                "thresholds are set on the training cells, so they flag fewer query cells. "
                "Hold some out: leave `validation_size` unset (or above 0), lower `train_size`, "
                "or train on at least 10 cells.",
                UserWarning,
            )
            heldout = splitter.train_idx
        self.calibrate(splitter.train_idx, heldout, unknown_rate=unknown_rate)
        if self.module.linear is not None:
            # the held-out cells have calibrated the Unknown call with a linear path that never
            # saw them; a convex fit needs no held-out cells, so the final one uses every cell
            self._fit_linear_head(np.arange(self.adata.n_obs), C=linear_C)
        self.calibrate_clusters()

    def calibrate_clusters(self, *, batch_key: str | None = None, seed: int = 0) -> None:
        """Set the cluster-level Unknown threshold on the reference (see the class notes), the
        types' prototypes (``scdl.models._prototypes``), the reference sketch of its mixing
        check and the sample of reference cells the linear path is refitted on for a query
        lacking genes (``scdl.models._refit``).

        :meth:`train` calls it; call it again to calibrate on other batches of the reference.

        Parameters
        ----------
        batch_key
            obs column of the reference whose batches play the query in turn (default: the
            registered ``batch_key``; one batch means four random halvings).
        seed
            Seed of the first halving (the others follow it), of the clustering and of the
            reference sketch.
        """
        from scdl.data import check_random_state

        from ._novelty import log_normalize

        check_random_state(seed, "seed")
        self._require_adata("train")  # registered again if another model's setup has since
        counts = in_memory(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        x_log = log_normalize(counts)
        labels = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        if batch_key is None:
            batches = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
        else:
            from scdl.data import check_obs_key

            obs = check_obs_key(self.adata, batch_key, arg="batch_key")
            batches = pd.factorize(obs.astype(str), sort=True)[0]  # not the cells' order
        labels = labels.astype(int)
        threshold, how, genes = calibrate_threshold(x_log, labels, batches.astype(int), seed=seed)
        self.cluster_threshold_, self.novelty_calibration_ = float(threshold), how
        if not np.isfinite(threshold):
            warn_user(
                f"The reference ({len(labels)} cells) is too small to calibrate the Unknown "
                "call (no held-out part of 10 or more cells): this annotator calls no cell "
                "Unknown. Train on more labelled cells for a novelty call, or annotate with "
                "`unknown=False` to say so.",
                UserWarning,
            )
        self.novelty_rule_ = "prototypes"
        self.novelty_genes_ = genes
        # the types' states, standardised by the reference statistics as the centroids are
        # (their mean profiles, not the centroids' mean of per-cell values clamped at +-10)
        stats = (
            self.module.gene_mean.cpu().numpy().astype(np.float64),
            self.module.gene_std.cpu().numpy().astype(np.float64),
        )
        self.module.set_prototypes(
            *reference_prototypes(x_log, labels, genes, seed=seed, stats=stats)
        )
        self.module.set_sketch(**build_sketch(counts, seed=seed, x_log=x_log, labels=labels))
        rows = sample_rows(labels, seed)
        self.module.set_reference_sample(counts[rows], labels[rows].astype(int))
        self.min_reference_share_ = MIN_REFERENCE_SHARE
        self.unknown_evidence_ = UNKNOWN_EVIDENCE

    def _fit_linear_head(self, train_idx, *, C: float, max_cells: int = 20_000) -> None:
        """Fit the linear path as an L2 logistic regression on centred log expression; frozen.

        scikit-learn solves this convex problem exactly; the transformer then learns what it
        misses. At most ``max_cells`` of the given cells (drawn at random) are densified for
        the fit, and fewer with a large vocabulary: at most ``LINEAR_FIT_VALUES`` values
        (cells x genes), so the dense copies stay near 0.5 GB each.
        """
        from sklearn.linear_model import LogisticRegression

        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        labels = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        max_cells = min(max_cells, max(2_000, LINEAR_FIT_VALUES // max(x.shape[1], 1)))
        rows = np.sort(np.asarray(train_idx))
        if len(rows) > max_cells:
            rng = np.random.default_rng(0)
            rows = np.sort(rng.choice(rows, max_cells, replace=False))
        with torch.inference_mode():
            xb = dense_rows(x, rows).to(self.module.device)
            z = self.module.centre(self.module.log_normalize(xb))
        y = labels[rows].astype(int)
        lin = self.module.linear
        lin.requires_grad_(False)
        if np.unique(y).size < 2:  # nothing to separate: the transformer alone decides
            with torch.no_grad():
                lin.weight.zero_()
                lin.bias.zero_()
            return
        clf = LogisticRegression(C=C, max_iter=1000)
        clf.fit(z.cpu().numpy(), y)
        weight, bias = linear_weights(clf, self.summary_stats.n_labels, z.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(bias.astype(np.float32)))

    @torch.inference_mode()
    def calibrate(self, train_indices, heldout_indices, *, unknown_rate: float = 0.05) -> None:
        """Set the per-cell Unknown thresholds from held-out reference cells (see the class
        notes); :meth:`train` calls it.

        Parameters
        ----------
        train_indices
            Reference cells whose mean profiles give each type's centroid.
        heldout_indices
            Reference cells the thresholds are set on (not seen in training).
        unknown_rate
            Share of held-out cells the per-cell thresholds leave Unknown (a fifth of it by
            confidence, the rest by novelty).
        """
        self._require_adata("train")  # registered again if another model's setup has since
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        labels = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        train_indices, heldout_indices = np.sort(train_indices), np.sort(heldout_indices)
        # each type's mean standardised profile over its training cells
        n_labels = self.summary_stats.n_labels
        sums = torch.zeros(n_labels, self.summary_stats.n_vars, dtype=torch.float64)
        y = torch.from_numpy(labels[train_indices].astype(np.int64))
        for start in range(0, len(train_indices), 4096):
            rows = train_indices[start : start + 4096]
            xb = dense_rows(x, rows).to(self.module.device)
            z = self.module.standardize(self.module.log_normalize(xb)).cpu()
            sums.index_add_(0, y[start : start + 4096], z.double())
        counts = torch.bincount(y, minlength=n_labels).clamp(min=1).unsqueeze(1)
        self.module.centroids.copy_((sums / counts).float())
        probs, novelty = self._features(x[heldout_indices])
        # most of the budget goes to novelty: low confidence alone mostly marks cells between
        # two reference types (and cells under a condition shift), not new types
        q_conf, q = unknown_rate / 5, unknown_rate * 4 / 5
        conf, pred = probs.max(1)
        self.module.confidence_threshold.fill_(
            float(torch.quantile(conf, q_conf)) if q_conf > 0 else 0.0
        )
        overall = float(torch.quantile(novelty, 1 - q)) if q > 0 else float("inf")
        thresholds = torch.full((n_labels,), overall)
        for c in range(n_labels):
            own = novelty[pred == c]
            if q > 0 and len(own) >= 10:  # per type where enough held-out cells exist
                thresholds[c] = torch.quantile(own, 1 - q)
        self.module.novelty_threshold.copy_(thresholds)
        self.unknown_rate_ = float(unknown_rate)
