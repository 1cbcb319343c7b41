"""Fitting the two paths of :class:`~scdl.models.DrugResponseModel`: Lightning training of the
deep path (scvi-tools' loop, with the cells as a second domain), the closed-form ridges of the
wide path, and the per-drug calibration on held-out lines; the bulk lines' profiles and
responses, their scaling, their folds and the check that the network did not blow up.

A mixin of the model class (``train`` orchestrates; these are its steps).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.model.base import UnsupervisedTrainingMixin

from scdl._warnings import warn_user
from scdl.data import (
    check_non_negative,
    check_positive_int,
    matched_reference,
    profiles_from_expression,
)
from scdl.module import RESPONSE_KEY, drug_table, heldout_predictions
from scdl.train import TrainingDivergedError, guarded_training

from ._training import plan_training

#: ``DrugResponseModel.train``'s ``target_batch_size`` default
DEFAULT_TARGET_BATCH_SIZE = 32
#: held-out error over the measured responses' spread (median over drugs) above which the
#: network's weights count as blown up: a working model sits near or below 1
MAX_RESIDUAL_RATIO = 10.0


class DrugFittingMixin:
    """Training steps of :class:`~scdl.models.DrugResponseModel`; ``_bulk`` (the lines'
    profiles and responses) is read by prediction too (the line similarity, attributions)."""

    def _bulk(self) -> tuple[np.ndarray, np.ndarray]:
        """Training profiles (lines x model genes) and responses (lines x drugs)."""
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        profiles = profiles_from_expression(
            x, self.adata.var_names, self.genes, scale=self.input_scale
        )
        y = self.adata_manager.get_from_registry(RESPONSE_KEY)
        # nullable Float64/Int64 columns come as objects holding pd.NA: read as NaN
        y = pd.DataFrame(y)
        return profiles, np.asarray(y.where(y.notna(), np.nan), dtype=np.float64)

    def _set_scaling(self) -> None:
        """The module's input and response scaling: the bulk lines' per-gene mean and sd, and
        each drug's mean and sd over the lines measured."""
        profiles, y = self._bulk()
        gene_scale = profiles.astype(np.float64).std(axis=0)
        # A gene with one value in every bulk line (e.g. at the array's floor) carries no
        # signal; float32 rounding leaves it a spread of ~1e-5, and dividing by that would
        # blow a cell's value up ~1e5-fold. An infinite scale gives it input 0 everywhere.
        typical = np.median(gene_scale[gene_scale > 0]) if (gene_scale > 0).any() else 1.0
        gene_scale[gene_scale < 1e-4 * typical] = np.inf
        self.module.set_scaling(
            profiles.mean(axis=0), gene_scale, np.nanmean(y, axis=0), np.nanstd(y, axis=0)
        )

    def _train_network(self, profiles, folds, *, max_epochs, plan, after=None, **kwargs):
        """Lightning training of the deep path (scvi-tools' loop), guarded against divergence;
        ``after()`` (the calibration on the new weights) runs inside the same guard, so an
        interrupt there leaves the model as an interrupt during the epochs does."""
        n_obs = self.adata.n_obs
        reference_p = None
        if self._target_profiles is not None and self.match_neighbors > 0:
            reference_p = matched_reference(self._target_profiles, profiles, self.match_neighbors)
        batch_size, target_batch_size = kwargs.pop("batch_size"), kwargs.pop("target_batch_size")
        target_batch_size = check_positive_int(target_batch_size, "target_batch_size")
        n_target = 0 if self._target_profiles is None else len(self._target_profiles)
        if 0 < n_target < target_batch_size:
            # each minibatch draws its target cells with replacement: more draws than cells
            # repeat them, at a cost that grows with the square of the size (the default is
            # capped quietly: nobody chose it)
            if target_batch_size != DEFAULT_TARGET_BATCH_SIZE:
                warn_user(
                    f"target_batch_size={target_batch_size} is more than the {n_target} target "
                    f"cells; {n_target} are used.",
                    UserWarning,
                )
            target_batch_size = n_target
        if "weight_decay" in plan:
            check_non_negative(plan["weight_decay"], "weight_decay", meaning="AdamW's decay")
        # the documented default (every line): scvi-tools' splitter would read None as 0.9
        train_size = kwargs.pop("train_size")
        train_size = 1.0 if train_size is None else train_size
        user_splitter = kwargs.pop("datasplitter_kwargs", None) or {}
        max_epochs, batch_size = plan_training(
            n_obs,
            max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            trainer_kwargs=kwargs,
            devices=kwargs.get("devices"),
            plan_kwargs=plan,
            unit="lines",
            n_cells_seen=600 * 128,
        )
        plan = {"n_epochs_kl_warmup": max(1, max_epochs // 2), **plan}
        with warnings.catch_warnings(), guarded_training(self, kwargs, lr=plan["lr"]):
            # minibatches hold lines and fewer target cells: Lightning's batch-size guess
            # finds two sizes and warns; the logged losses are per line either way
            warnings.filterwarnings("ignore", message=".*infer the `batch_size`")
            out = UnsupervisedTrainingMixin.train(
                self,
                max_epochs=max_epochs,
                batch_size=batch_size,
                train_size=train_size,
                plan_kwargs=plan,
                datasplitter_kwargs={
                    **user_splitter,
                    "profiles": profiles,
                    "target_x": self._target_profiles,
                    "reference_p": reference_p,
                    "folds": folds,
                    "target_batch_size": target_batch_size,
                },
                **kwargs,
            )
            if after is not None:
                after()
        return out

    def _fit_ridge(self, profiles, responses, folds) -> np.ndarray:
        """Fit the wide path: each member's ridge on the lines its deep part trains on.

        Called after the network (``train_indices`` set): with ``train_size < 1`` the
        validation lines, which calibrate the model with the ensemble's left-out folds, are
        left out of every ridge too; a ridge fitted on them gave them training residuals as
        "held-out" ones (an overconfident sensitive probability).
        """
        module = self.module  # in eval mode: no input noise
        k = module.n_ensemble
        with torch.inference_mode():
            xs = module._standardise(torch.as_tensor(profiles, device=module.device)).cpu()
        y_std = (responses - module.drug_mean.cpu().numpy()) / module.drug_scale.cpu().numpy()
        in_train = self._in_train(len(folds))
        members = [(folds != j if k > 1 else True) & in_train for j in range(k)]
        return self.module.set_ridge(xs, y_std, members)

    def _in_train(self, n_lines: int) -> np.ndarray:
        """Which lines trained (``train_indices``); every line when none are recorded."""
        if self.train_indices is None:
            return np.ones(n_lines, dtype=bool)
        in_train = np.zeros(n_lines, dtype=bool)
        in_train[np.asarray(self.train_indices, dtype=np.int64)] = True
        return in_train

    def _calibrate(self, folds: np.ndarray, alphas=None, bulk=None) -> pd.DataFrame:
        """Per drug: lines, bulk median, held-out residual sd and Spearman correlation, and
        the ridges' penalty (median over members; NaN without a wide path)."""
        profiles, y = self._bulk() if bulk is None else bulk
        members = self._run(profiles, self.module.member_predictions)  # K x lines x drugs
        in_train = (
            self._in_train(len(y)) if self.train_indices is not None else np.zeros(len(y), bool)
        )
        heldout, self.calibration_source_ = heldout_predictions(members, folds, in_train)
        if self.calibration_source_ == "training lines":
            # the wide path trains on every line whatever train_size: only members help there
            wide = self.module.prediction == "wide"
            warn_user(
                "With n_ensemble=1"
                + ("" if wide else " and train_size=1")
                + " there are no held-out lines: the sensitive probability uses training "
                "residuals, which understate the uncertainty. Use n_ensemble >= 2"
                + (" (the wide path trains on every line)." if wide else " or train_size < 1."),
                UserWarning,
            )
        return drug_table(heldout, y, self.drugs, alphas)


def line_folds(adata, n_folds: int, seed: int) -> tuple[np.ndarray, pd.Index]:
    """Each bulk row's fold, drawn with ``seed``, and the cell lines in order of first row.

    Folds of cell lines, not rows: a line's replicate in another fold would make its
    "held-out" prediction a training one (and the calibrated sd too narrow); with one row per
    line this is the permutation of rows. A line is its ``obs["cell_line_key"]``
    (:func:`scdl.datasets.gdsc`'s join key) where given, else its row.
    """
    line = pd.Series(adata.obs_names, index=adata.obs_names, dtype=object)
    if "cell_line_key" in adata.obs:
        key = adata.obs["cell_line_key"].astype(object)
        line = key.where(key.notna(), line)
    codes, lines = pd.factorize(line.astype(str))
    order = np.random.RandomState(seed).permutation(len(lines))
    return (order % n_folds)[codes], lines


def check_not_diverged(stats: pd.DataFrame, responses, *, lr: float, weight_decay: float) -> None:
    """Refuse a network whose held-out error (``stats["residual_sd"]``, per drug) is over
    ``MAX_RESIDUAL_RATIO`` times the spread of the measured ``responses`` (median over the
    drugs that vary): weights blown up without reaching NaN (a huge lr or weight_decay)
    predict finite values far outside every measured response."""
    spread = np.nanstd(np.asarray(responses, dtype=np.float64), axis=0)
    varies = spread > 0  # a drug every line answers alike has no spread to compare
    ratio = float(np.nanmedian(stats["residual_sd"].to_numpy()[varies] / spread[varies]))
    if ratio > MAX_RESIDUAL_RATIO:
        raise TrainingDivergedError(
            f"Training diverged: on held-out lines the predictions' error is {ratio:.3g} "
            "times the spread of the measured responses (median over drugs): the "
            "weights blew up without becoming NaN. The model's weights were restored to "
            f"what they were before this .train() call. Lower lr={lr:g} or "
            f"weight_decay={weight_decay:g} (e.g. 10x smaller) and train again."
        )
