"""``scdl.models.ContrastiveVAE``: what is specific to target cells versus a background."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from scdl._warnings import registering_quietly
from scdl.data import (
    check_category_kind,
    check_count_setup,
    check_fraction,
    check_non_negative,
    check_positive_int,
    resolve_groups,
    warn_if_batch_nested,
    warn_if_few_cells,
)
from scdl.dataloaders import ContrastiveSplitter
from scdl.module import ContrastiveModule
from scdl.train import EpochLoggingTrainingPlan, guarded_training

from ._base import SafeSaveLoadMixin
from ._checked_query import CheckedQueryMixin
from ._contrastive_expression import ContrastiveExpressionMixin
from ._devices import lightning_devices
from ._docs import counts_dsp
from ._training import plan_training, vae_plan_kwargs

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData

logger = logging.getLogger(__name__)


def _obs_fingerprint(adata: AnnData) -> str:
    return hashlib.sha1("\n".join(map(str, adata.obs_names)).encode()).hexdigest()


# --- the model -----------------------------------------------------------------------------


class ContrastiveVAE(
    ContrastiveExpressionMixin,
    SafeSaveLoadMixin,
    CheckedQueryMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Separate what is specific to target cells from what they share with a background.

    contrastiveVI's model (:cite:`Weinberger23`): every cell has a shared latent code ``z``
    (cell type, state, everything background cells also show); target cells (e.g.
    stimulated, diseased, treated) also have a salient code ``s``, which is zero for
    background (e.g. control) cells by construction. Counts are decoded from ``[z, s]`` with
    a negative binomial likelihood. Two penalties keep each space to its job: an MMD
    between the shared codes of background and target cells keeps the target condition out
    of the shared space, and an independence penalty (the HSIC between the shared and the
    salient code of target cells) keeps cell identity, which the shared space holds, out of
    the salient one. Registration, data splitting
    (contrastiveVI's) and the training plan are scvi-tools' own; minibatches go through
    scdl's fast batch path.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Saved registry, to build the model without data (used by :meth:`load`).
    n_shared_latent, n_salient_latent
        Dimensions of the shared and the salient latent spaces.
    n_hidden
        Units per hidden layer.
    n_layers
        Hidden layers in encoders and decoder.
    gene_likelihood
        ``"nb"`` (negative binomial) or ``"zinb"`` (zero-inflated NB).
    dropout_rate
        Dropout in the encoders.
    wasserstein_penalty
        Weight of the penalty pulling the salient posterior of background cells to zero
        (contrastiveVI's Wasserstein term): it keeps variation that background cells show
        too, such as cell type, out of the salient space. ``0`` turns it off.
    shared_mmd_weight
        Weight of the MMD between the shared codes of background and target cells, so the
        shared space does not also code the target condition. ``0`` turns it off (plain
        contrastiveVI behaviour).
    independence_weight
        Weight of the penalty making the salient code of target cells independent of their
        shared code (the HSIC, a kernel measure of dependence, between ``z`` and ``s``), so
        cell types separate in the shared space and much less in the salient one. Responses that
        differ between cell types are still decoded (the decoder combines both codes).
        ``0`` turns it off. It applies to minibatches holding at least 8 target cells; the
        training history's ``salient_dependence`` is the penalty's mean value per minibatch
        (0 in those with fewer, where it is off).

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()  # obs["condition"]: ctrl or stim
    >>> scdl.models.ContrastiveVAE.setup_anndata(adata)
    >>> model = scdl.models.ContrastiveVAE(adata)
    >>> model.train(groupby="condition", background="ctrl")
    >>> adata.obsm["X_salient"] = model.get_latent_representation(representation="salient")
    >>> model.get_salient_genes(n_top=20)
    """

    _module_cls = ContrastiveModule
    _data_splitter_cls = ContrastiveSplitter
    _training_plan_cls = EpochLoggingTrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_shared_latent: int = 10,
        n_salient_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        gene_likelihood: Literal["nb", "zinb"] = "nb",
        dropout_rate: float = 0.1,
        wasserstein_penalty: float = 1.0,
        shared_mmd_weight: float = 10.0,
        independence_weight: float = 100.0,
    ):
        super().__init__(adata, registry)
        for name, value in (
            ("n_shared_latent", n_shared_latent),
            ("n_salient_latent", n_salient_latent),
            ("n_hidden", n_hidden),
            ("n_layers", n_layers),
        ):
            check_positive_int(value, name)
        check_fraction(dropout_rate, "dropout_rate", below_one=True)
        for name, value in (
            ("wasserstein_penalty", wasserstein_penalty),
            ("shared_mmd_weight", shared_mmd_weight),
            ("independence_weight", independence_weight),
        ):
            check_non_negative(value, name, meaning="a loss weight")
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=self.summary_stats.n_batch,
            n_hidden=n_hidden,
            n_shared_latent=n_shared_latent,
            n_salient_latent=n_salient_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            gene_likelihood=gene_likelihood,
            wasserstein_penalty=wasserstein_penalty,
            shared_mmd_weight=shared_mmd_weight,
            independence_weight=independence_weight,
        )
        # set by train(); saved with the model so load() knows the target cells again
        self.contrastive_split_: dict | None = None
        self._model_summary_string = (
            f"scdl ContrastiveVAE: n_shared_latent={n_shared_latent}, "
            f"n_salient_latent={n_salient_latent}, n_hidden={n_hidden}, n_layers={n_layers}, "
            f"gene_likelihood={gene_likelihood}, wasserstein_penalty={wasserstein_penalty}, "
            f"shared_mmd_weight={shared_mmd_weight}, independence_weight={independence_weight}, "
            f"n_batch={self.summary_stats.n_batch}"
        )
        self.init_params_ = self._get_init_params(locals())
        self._warn_if_unsavable()

    @classmethod
    @counts_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Check ``adata`` and register it for the model.

        As in scvi-tools, registering writes into ``adata``: ``obs["_scvi_batch"]``,
        ``uns["_scvi_uuid"]`` and ``uns["_scvi_manager_uuid"]``. The ``scdl.tl`` steps train on
        a copy and leave them out.

        Which cells are background and which are target is given to :meth:`train`.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        batch_key
            obs column of a technical batch (e.g. donor) to condition on. It must not be
            nested in the background/target grouping (a sample column of
            ``ctrl1, stim1, ...``): the batch covariate would then absorb the target-specific
            signal (:meth:`train` warns when it is).

        Raises
        ------
        %(raises_counts)s
        """
        cls._refuse_setup_options(kwargs)
        setup_method_args = cls._get_setup_method_args(**locals())
        from_registry = kwargs.get("source_registry") is not None
        check_count_setup(
            adata,
            layer,
            report_zero_genes=not from_registry,
            categorical={"batch_key": batch_key},
            warn_one_category=not from_registry,
            unique_genes=False,  # as in scvi-tools: genes are matched by name only for a query
        )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        with registering_quietly():  # small categories: said by check_count_setup
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @counts_dsp.dedent
    def train(
        self,
        background_indices: Sequence[int] | np.ndarray | None = None,
        target_indices: Sequence[int] | np.ndarray | None = None,
        *,
        groupby: str | None = None,
        background=None,
        target=None,
        max_epochs: int | None = None,
        batch_size: int = 128,
        early_stopping: bool = False,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        n_epochs_kl_warmup: int | None = None,
        lr: float = 1e-3,
        plan_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train on background and target cells (Lightning; history in ``history``).

        %(train_seed)s

        Say which cells are which either by position or by an obs column:

        - ``background_indices`` and/or ``target_indices`` (integer positions or boolean
          masks); a missing one means all other cells;
        - ``groupby`` with ``background`` (a value or list of values of
          ``adata.obs[groupby]``); target cells are all other cells, or those with the
          value(s) in ``target``.

        Parameters
        ----------
        background_indices, target_indices
            Positions (or boolean masks) of background and target cells.
        groupby
            obs column naming each cell's group (e.g. ``"condition"``).
        background, target
            Value(s) of ``groupby`` for background and target cells.
        max_epochs
            Passes through the data; ``None`` chooses from the number of cells.
        batch_size
            Cells per minibatch (background and target cells mixed). Where the target's
            training cells outnumber the background's more than 4 times (and the background
            holds at least 20 cells), each epoch repeats every background cell equally often
            to that ratio, as contrastiveVI pairs the groups: an epoch is then longer, and
            ``elbo_train`` weighs the background more than ``elbo_validation`` does.
        early_stopping
            Stop when the validation ELBO stops improving.
        accelerator, devices
            Passed to Lightning; further ``Trainer`` arguments go in ``**kwargs``.
        train_size
            Fraction of each group used for training (the rest for validation); default 0.9.
        n_epochs_kl_warmup
            Epochs over which the KL (and Wasserstein) weight rises from 0 to 1; default half
            of ``max_epochs``.
        lr
            Adam learning rate.
        plan_kwargs
            Further arguments for :class:`scvi.train.TrainingPlan`.

        Raises
        ------
        KeyError
            ``groupby`` is not a column of ``adata.obs``.
        ValueError
            A ``background``/``target`` value is not in the column (the message lists the
            values present); no target or no background cells; a cell is both.
        """
        bg, tg, split = resolve_groups(
            self._require_adata(),
            background_indices,
            target_indices,
            groupby=groupby,
            background=background,
            target=target,
        )
        warn_if_few_cells(bg, tg)
        if self.summary_stats.n_batch > 1:
            batch = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
            batch_key = self.adata_manager.registry["setup_args"]["batch_key"]
            groups = f"groupby={groupby!r}" if groupby is not None else "the indices given"
            warn_if_batch_nested(batch, bg, tg, batch_key=batch_key, groups=groups)
        max_epochs, batch_size = plan_training(
            bg.size + tg.size,
            max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            trainer_kwargs=kwargs,
            devices=devices,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
            groups=(bg.size, tg.size),  # contrastiveVI splits each group on its own
        )
        plan = vae_plan_kwargs(
            max_epochs, lr=lr, n_epochs_kl_warmup=n_epochs_kl_warmup, plan_kwargs=plan_kwargs
        )
        with guarded_training(self, kwargs, lr=plan["lr"]):
            out = super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                early_stopping=early_stopping,
                accelerator=accelerator,
                devices=lightning_devices(devices),
                train_size=train_size,
                plan_kwargs=plan,
                datasplitter_kwargs={
                    **(kwargs.pop("datasplitter_kwargs", None) or {}),
                    "background_indices": bg,
                    "target_indices": tg,
                },
                **kwargs,
            )
        self.contrastive_split_ = {
            **split,
            "background_indices": bg,
            "target_indices": tg,
            "n_obs": int(self.adata.n_obs),
            "obs_names_sha1": _obs_fingerprint(self.adata),
        }
        return out

    # --- which cells of some AnnData are target cells ---

    def _target_mask(self, adata: AnnData, target_mask=None) -> np.ndarray:
        if target_mask is not None:
            mask = np.asarray(target_mask)
            if mask.dtype != bool or mask.shape != (adata.n_obs,):
                raise ValueError(
                    f"target_mask must be a boolean array with one entry per cell ({adata.n_obs})."
                )
            return mask
        split = self.contrastive_split_
        if split is None:
            raise RuntimeError("The model is not trained yet: call `.train()` first.")
        if adata.n_obs == split["n_obs"] and _obs_fingerprint(adata) == split["obs_names_sha1"]:
            mask = np.zeros(adata.n_obs, dtype=bool)
            mask[np.asarray(split["target_indices"], dtype=np.int64)] = True
            return mask
        groupby = split["groupby"]
        if groupby is not None and groupby in adata.obs:
            col = adata.obs[groupby]
            if split.get("values") is not None:  # models saved before it was kept: not checked
                _check_trained_values(col, split)
            if split["target"] is not None:
                return col.isin(split["target"]).to_numpy()
            if col.isna().any():  # refused in training for the same reason
                raise ValueError(
                    f"adata.obs[{groupby!r}] has {int(col.isna().sum())} missing values; the "
                    "model, trained with target=None, would take them as target cells. Fill "
                    "or drop them, or pass target_mask= (True for target cells)."
                )
            return ~col.isin(split["background"]).to_numpy()
        how = f"an obs column {groupby!r} or " if groupby is not None else ""
        raise ValueError(
            "These are not the cells the model was trained on, and they lack "
            f"{how}a way to tell target cells: pass target_mask= (True for target cells)."
        )

    def _cells(self, adata, indices, batch_size, salient: bool, target_mask=None):
        """Positions of the cells asked for, and the target mask when ``salient``, checked on
        ``adata`` (``None``: the training data) before it is registered."""
        if adata is None:
            self._require_adata("use", takes_adata=True)
        idx = self._check_cells(adata, indices, batch_size)
        source = self.adata if adata is None else adata
        return idx, (self._target_mask(source, target_mask) if salient else None)

    def _posterior(self, adata, indices, batch_size):
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        for tensors in loader:
            inf = self.module.inference(**self.module._get_inference_input(tensors))
            yield tensors, inf

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        representation: Literal["shared", "salient"] = "shared",
        *,
        give_mean: bool = True,
        batch_size: int | None = None,
        target_mask: Sequence[bool] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Shared or salient latent representation of each cell.

        Parameters
        ----------
        adata
            AnnData with the model's genes; ``None`` uses the training data.
        indices
            Positions of the cells to return; ``None`` for all.
        representation
            ``"shared"`` (every cell) or ``"salient"`` (zero rows for non-target cells).
            The default is the shared space, the one every cell has (scvi-tools'
            ``ContrastiveVI`` returns the salient one by default).
        give_mean
            Posterior means (deterministic) rather than one sample.
        batch_size
            Cells per minibatch of inference.
        target_mask
            Which cells of ``adata`` are target cells (for ``"salient"``). Default: the
            training split for the training cells, or the trained ``groupby`` rule applied to
            ``adata.obs``.

        Returns
        -------
        Array of shape (cells, ``n_shared_latent`` or ``n_salient_latent``).
        """
        if representation not in ("shared", "salient"):
            raise ValueError(
                f"representation={representation!r} is not one of 'shared', 'salient'."
            )
        self._check_if_trained(warn=False)
        # the arguments first: registering a new AnnData writes into it
        idx, target = self._cells(
            adata, indices, batch_size, representation == "salient", target_mask
        )
        adata = self._validate_anndata(adata)
        q_key = "qz" if representation == "shared" else "qs"
        parts = []
        for _, inf in self._posterior(adata, idx, batch_size):
            q = inf[q_key]
            parts.append((q.loc if give_mean else q.sample()).cpu())
        latent = torch.cat(parts).numpy()
        if target is not None:
            latent[~target[idx]] = 0.0
        return latent


def _check_trained_values(col: pd.Series, split: dict) -> None:
    """Refuse new cells whose group value the model never saw: a control spelt otherwise
    ("control" for "ctrl", "0" for 0) would silently become a target cell, or no cell at all."""
    groupby, seen = split["groupby"], list(split["values"])
    check_category_kind(col.dropna(), seen, groupby, model="ContrastiveVAE")
    known = set(seen)
    unseen = sorted({v for v in col.dropna().unique().tolist() if v not in known}, key=str)
    if unseen:
        groups = f"background {split['background']}" + (
            f", target {split['target']}" if split["target"] is not None else ""
        )
        raise ValueError(
            f"adata.obs[{groupby!r}] holds values the model was not trained on ({unseen[:5]}"
            f"{' ...' if len(unseen) > 5 else ''}); it was trained with {groups} among "
            f"{seen[:10]}{' ...' if len(seen) > 10 else ''}. Rename them to those values, or "
            "pass target_mask= (True for target cells)."
        )
