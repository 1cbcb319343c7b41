"""``scdl.models.VAE``: the scVI-like model for batch integration and clustering."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model.base import (
    ArchesMixin,
    BaseModelClass,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)

from scdl._warnings import registering_quietly, warn_user
from scdl.data import (
    check_continuous_covariates,
    check_count_setup,
    check_covariate_keys,
    check_fraction,
    check_non_negative,
    check_positive_int,
    counts_place_fix,
    covariate_scaling,
    key_list,
)
from scdl.dataloaders import CSRDataSplitter
from scdl.module import VAEModule
from scdl.train import EpochLoggingTrainingPlan, guarded_training

from ._base import SafeSaveLoadMixin
from ._checked_query import CheckedQueryMixin
from ._devices import lightning_devices
from ._docs import counts_dsp
from ._training import plan_training, vae_plan_kwargs
from ._vae_query import VAEQueryMixin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)


class VAE(
    VAEQueryMixin,
    SafeSaveLoadMixin,
    CheckedQueryMixin,
    RNASeqMixin,
    VAEMixin,
    ArchesMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """A variational autoencoder of raw counts for batch integration and clustering.

    scVI's generative model (:cite:`Lopez18`; negative binomial counts decoded from a
    low-dimensional latent space, batch as a covariate) with defaults chosen for the data
    sizes of a typical study, and a batch-alignment (MMD) penalty on the latent space.
    Registration, data splitting, the training plan and query mapping (scArches) are
    scvi-tools' own, as are the methods on the trained model (``get_normalized_expression``,
    ``differential_expression``, ``get_elbo``, ...). Unlike scvi-tools' ``SCVI`` it defaults to
    negative binomial counts (``SCVI``: zero-inflated) and adds the MMD term to the training
    loss (``train_loss`` in ``history``); ``get_elbo`` and the ``elbo_*`` curves are the ELBO
    alone, without it. Its encoder also reads each cell's batch, with layer norm in place of
    batch norm (scArches' settings, so reference mapping trains only a query batch's own
    weights): a cell's latent depends on the batch it is given, as ``SCVI``'s with
    ``encode_covariates=True`` does; so does it on the covariates beside the batch. Continuous
    covariates enter the network standardised by the training cells' mean and standard
    deviation (kept with the model and applied to a query as to the reference), so their
    units do not matter: a raw total count in the thousands would outweigh the genes under
    the layer norm. Every method refuses an AnnData whose genes differ from
    the model's (in name or order), whose counts are not counts, or whose batch column is
    missing or holds unseen batches, where scvi-tools may embed it without a word; a query of
    new batches is mapped with :meth:`load_query_data`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Saved registry, to build the model without data (used by :meth:`load`).
    n_latent
        Dimensionality of the latent space.
    n_hidden
        Units per hidden layer.
    n_layers
        Hidden layers in encoder and decoder.
    gene_likelihood
        ``"nb"`` (negative binomial), ``"zinb"`` (zero-inflated NB) or ``"poisson"``.
    dropout_rate
        Dropout in the encoder.
    batch_mmd_weight
        Weight of the MMD penalty that aligns batches in the latent space; ``0`` turns it
        off (plain scVI loss). Ignored without a ``batch_key``.
    **kwargs
        Passed to :class:`scvi.module.VAE` (e.g. ``dispersion``, ``latent_distribution``);
        not ``batch_representation="embedding"``, which needs scvi-tools' ``EmbeddingMixin``
        methods this model does not have.

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> scdl.models.VAE.setup_anndata(adata, batch_key="sample")
    >>> model = scdl.models.VAE(adata)
    >>> model.train()
    >>> adata.obsm["X_scdl"] = model.get_latent_representation()
    """

    _module_cls = VAEModule
    _data_splitter_cls = CSRDataSplitter
    _unseen_categories_fix = (
        "map them onto the model first: `VAE.load_query_data(adata, model)`, then `.train()` "
        "the returned model"
    )
    _training_plan_cls = EpochLoggingTrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        dropout_rate: float = 0.1,
        batch_mmd_weight: float = 3.0,
        **kwargs,
    ):
        super().__init__(adata, registry)
        if gene_likelihood not in ("nb", "zinb", "poisson"):
            raise ValueError(
                f"gene_likelihood={gene_likelihood!r} is not one of 'nb', 'zinb', 'poisson'."
            )
        # numpy integers are accepted (as scvi-tools does) and kept as plain ints for the save
        n_latent = check_positive_int(n_latent, "n_latent")
        n_hidden = check_positive_int(n_hidden, "n_hidden")
        n_layers = check_positive_int(n_layers, "n_layers")
        if "use_observed_lib_size" in kwargs:
            raise ValueError(
                "use_observed_lib_size is fixed to True in scdl's VAE (each cell's library "
                "size is its observed total); drop the argument, or use scvi-tools' SCVI for "
                "a learned library size."
            )
        check_fraction(dropout_rate, "dropout_rate", below_one=True)
        check_non_negative(batch_mmd_weight, "batch_mmd_weight", meaning="a loss weight")
        if kwargs.get("batch_representation", "one-hot") != "one-hot":
            raise ValueError(
                f"batch_representation={kwargs['batch_representation']!r} is not supported: "
                "scdl's VAE encodes batches one-hot (the scArches query mapping trains their "
                "weights). Use scvi-tools' SCVI for batch embeddings."
            )
        cat_state = self.registry_["field_registries"][REGISTRY_KEYS.CAT_COVS_KEY]
        n_cats_per_cov = cat_state["state_registry"].get("n_cats_per_key") or None
        module_kwargs = {
            # layer norm and batch-conditioned encoder: the scArches settings, so a query
            # batch can be mapped by training only its own covariate weights
            "encode_covariates": True,
            "use_layer_norm": "both",
            "use_batch_norm": "none",
            "deeply_inject_covariates": False,
            **kwargs,
        }
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=self.summary_stats.n_batch,
            n_labels=self.summary_stats.n_labels,
            n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
            n_cats_per_cov=n_cats_per_cov,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            gene_likelihood=gene_likelihood,
            use_observed_lib_size=True,
            batch_mmd_weight=batch_mmd_weight,
            **module_kwargs,
        )
        if adata is not None and self.module.has_covariate_scaling:
            # continuous covariates enter the network standardised by the training cells' mean
            # and sd (buffers: saved with the weights and kept for a query); raw, a covariate in
            # the thousands (total counts) outweighs the genes under the layer norm
            # another class's setup since this one rewrites the shared covariate copy
            self._replay_if_registered_elsewhere(adata)
            values = self.adata_manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY)
            self.module.set_covariate_scaling(*covariate_scaling(np.asarray(values)))
        self._model_summary_string = (
            f"scdl VAE: n_latent={n_latent}, n_hidden={n_hidden}, n_layers={n_layers}, "
            f"gene_likelihood={gene_likelihood}, batch_mmd_weight={batch_mmd_weight}, "
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
        labels_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | pd.Index | None = None,
        continuous_covariate_keys: list[str] | None = None,
        **kwargs,
    ) -> None:
        """Check ``adata`` and register it for the model.

        As in scvi-tools, registering writes into ``adata``: an ``obs`` column per registered
        categorical field (e.g. ``_scvi_batch``, ``_scvi_labels``), ``uns["_scvi_uuid"]``,
        ``uns["_scvi_manager_uuid"]``, and with covariates
        ``obsm["_scvi_extra_categorical_covs"]`` / ``obsm["_scvi_extra_continuous_covs"]``.
        The ``scdl.tl`` steps train on a copy and leave them out.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        batch_key
            obs column of the batch (sample, donor, technology) to correct for.
        labels_key
            obs column of cell labels (kept in the registry; not used in training).
        categorical_covariate_keys, continuous_covariate_keys
            Further obs columns to condition on.

        Raises
        ------
        %(raises_counts)s
        """
        cls._refuse_setup_options(kwargs)
        # before the registry records them: an array of names is saved as a list
        categorical_covariate_keys = key_list(
            categorical_covariate_keys, "categorical_covariate_keys"
        )
        continuous_covariate_keys = key_list(continuous_covariate_keys, "continuous_covariate_keys")
        setup_method_args = cls._get_setup_method_args(**locals())
        from_registry = kwargs.get("source_registry") is not None
        check_covariate_keys(categorical_covariate_keys, continuous_covariate_keys)
        # a query or a reloaded dataset may lack some of the reference genes (padded zeros)
        check_count_setup(
            adata,
            layer,
            report_zero_genes=not from_registry,
            categorical={
                "batch_key": batch_key,
                "labels_key": labels_key,
                "categorical_covariate_keys": categorical_covariate_keys,
            },
            warn_one_category=not from_registry,
            # without a batch key a reference has no batch weights for a query to train
            one_batch_hint="; keep it on a reference that query batches will be mapped onto "
            "(`VAE.load_query_data` trains their weights)",
            unique_genes=False,  # as in scvi-tools: genes are matched by name only for a query
            # a query is read where the reference was (`layer=` is not an option there)
            fix=counts_place_fix(cls.__name__, layer, adata) if from_registry else None,
            numeric_hint=" (numeric covariates go in `continuous_covariate_keys`)",
        )
        check_continuous_covariates(adata, continuous_covariate_keys)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        with registering_quietly():  # small categories: said by check_count_setup
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @counts_dsp.dedent
    def train(
        self,
        max_epochs: int | None = None,
        *,
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
        """Train the model with Lightning (progress bar, history in ``history``).

        %(train_seed)s

        Parameters
        ----------
        max_epochs
            Passes through the data. ``None`` chooses from the number of cells: about
            512,000 cells seen in training (4,000 minibatches of 128), within 30-400 epochs,
            so more epochs for small datasets and fewer for large ones.
        batch_size
            Cells per minibatch.
        early_stopping
            Stop when the validation ELBO stops improving.
        accelerator, devices
            Passed to Lightning (``"cpu"``, ``"gpu"``, ``"auto"``; device count or ids).
            Further Lightning ``Trainer`` arguments go in ``**kwargs``: for several GPUs,
            ``devices=4, strategy="ddp"`` (run from a script, not a notebook; each process
            takes an equal share of every epoch, so the effective batch is
            ``batch_size x devices``; see ``benchmarks/ddp.py``).
        train_size
            Fraction of cells for training (the rest for validation); default 0.9.
        n_epochs_kl_warmup
            Epochs over which the KL weight rises from 0 to 1; default half of
            ``max_epochs``.
        lr
            Adam learning rate.
        plan_kwargs
            Further arguments for :class:`scvi.train.TrainingPlan`.
        """
        max_epochs, batch_size = plan_training(
            self._require_adata().n_obs,
            max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            trainer_kwargs=kwargs,
            devices=devices,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
        )
        plan = vae_plan_kwargs(
            max_epochs, lr=lr, n_epochs_kl_warmup=n_epochs_kl_warmup, plan_kwargs=plan_kwargs
        )
        with guarded_training(self, kwargs, lr=plan["lr"]):
            return super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                early_stopping=early_stopping,
                accelerator=accelerator,
                devices=lightning_devices(devices),
                train_size=train_size,
                plan_kwargs=plan,
                **kwargs,
            )

    def get_latent_representation(
        self, adata: AnnData | None = None, indices=None, *args, **kwargs
    ) -> np.ndarray:
        """scvi-tools' :meth:`~scvi.model.SCVI.get_latent_representation` (every option as
        there); ``indices`` and ``batch_size`` are checked before a new AnnData is registered,
        so a bad one leaves it unchanged.

        Parameters
        ----------
        adata, indices
            The cells to embed: an AnnData with the model's genes (default: the model's own)
            and the indices of its cells to use (default: all).
        *args, **kwargs
            scvi-tools' further options (``give_mean``, ``mc_samples``, ``batch_size``, ...).
        """
        idx = self._check_cells(adata, indices, kwargs.get("batch_size"))
        # positions, which scvi-tools reads a Python list of booleans as
        indices = indices if indices is None or idx is None else idx
        return super().get_latent_representation(adata, indices, *args, **kwargs)

    def get_normalized_expression(self, adata: AnnData | None = None, *args, **kwargs):
        """scvi-tools' :meth:`~scvi.model.SCVI.get_normalized_expression` (every option as
        there); a ``gene_list`` naming genes the model lacks is refused (scvi-tools drops them
        silently, down to an empty table), and ``indices`` and ``batch_size`` are checked before
        a new AnnData is registered.

        Parameters
        ----------
        adata
            An AnnData with the model's genes (default: the model's own).
        *args, **kwargs
            scvi-tools' options, by name or in its order (``indices``, ``transform_batch``,
            ``gene_list``, ``library_size``, ``n_samples``, ``batch_size``, ...).
        """
        import inspect

        # bound to scvi-tools' signature: positional arguments are checked like keywords
        parent = super().get_normalized_expression
        call = inspect.signature(parent).bind(adata, *args, **kwargs)
        given = call.arguments
        idx = self._check_cells(adata, given.get("indices"), given.get("batch_size"))
        if given.get("indices") is not None and idx is not None:
            given["indices"] = idx  # positions: a Python list of booleans would read as them
        gene_list = given.get("gene_list")
        if gene_list is not None:
            genes = pd.Index(self.get_var_names())
            requested = pd.Index([gene_list] if isinstance(gene_list, str) else gene_list)
            missing = requested[~requested.isin(genes)]
            if len(missing):
                raise KeyError(
                    f"gene_list holds {len(missing)} genes the model was not trained on (e.g. "
                    f"{missing[:5].tolist()}); its genes are model.get_var_names()."
                )
            given["gene_list"] = requested.tolist()  # one name: scvi-tools needs a list
        return parent(*call.args, **call.kwargs)

    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        **kwargs,
    ) -> pd.DataFrame:
        """scvi-tools' :meth:`~scvi.model.SCVI.differential_expression` (every option as
        there), with ``groupby`` and the groups checked first: scvi-tools reports a missing
        column as a bare ``KeyError`` and a group without cells as a ``ZeroDivisionError``.

        Parameters
        ----------
        adata, groupby, group1, group2, **kwargs
            As in scvi-tools; ``adata=None`` uses the model's AnnData (from
            :func:`scdl.tl.integrate`, it holds the obs columns of the data it was run on).
        """
        if groupby is not None and not isinstance(groupby, str):  # pandas: "unhashable type"
            raise TypeError(f"groupby must be one obs column name (str), got {groupby!r}.")
        if group2 is not None and not np.isscalar(group2):  # compared with the whole column
            raise TypeError(
                f"group2 must be one value of obs[groupby], got {group2!r}: the cells of group1 "
                "are compared with those of group2, or with all the others (group2=None); to "
                "compare with several groups, put them in one column value first."
            )
        if groupby is not None:
            obs = (adata if adata is not None else self._require_adata("compare")).obs
            if groupby not in obs.columns:
                close = difflib.get_close_matches(groupby, [str(c) for c in obs.columns], n=1)
                # a close name may be a typo, or another column than one written since
                typo = f" Did you mean {close[0]!r}?" if close else ""
                own = typo + (
                    ""
                    if adata is not None
                    else (" Otherwise:" if typo else "")
                    + " `model.adata.obs` is a copy of obs made when the model was set up "
                    "(by `scdl.tl.integrate`: when it ran), so columns written since, such as "
                    "`scdl.tl.cluster`'s, are not in it. Copy the column across (cells are "
                    f"matched by name): `model.adata.obs[{groupby!r}] = adata.obs[{groupby!r}]`, "
                    "or pass `adata=adata[:, model.get_var_names()].copy()`."
                )
                raise KeyError(
                    f"groupby={groupby!r} is not a column of the "
                    f"{'AnnData' if adata is not None else 'model'}'s obs (columns: "
                    f"{list(obs.columns)[:20]}).{own}"
                )
            col = obs[groupby]
            # compared by value, as scvi-tools selects the cells (a "0" is no group of 0s)
            missing = [g for g in [*_as_list(group1), *_as_list(group2)] if not (col == g).any()]
            if missing:
                # as Python values, so a 0 given for the text "0" (scanpy's Leiden ids) shows
                values = sorted(np.asarray(col.dropna().unique()).tolist(), key=str)
                by_text = {str(v): v for v in values}
                retyped = [f"{by_text[str(g)]!r} for {g!r}" for g in missing if str(g) in by_text]
                fix = ""
                if retyped:
                    kind = type(next(by_text[str(g)] for g in missing if str(g) in by_text))
                    kind = kind.__name__
                    fix = f" Pass {', '.join(retyped)}: the column holds {kind} values."
                raise ValueError(
                    f"{[_python(g) for g in missing]} not among the values of obs[{groupby!r}] "
                    f"({values[:20]}): no cells to compare.{fix}"
                )
            n_na = int(col.isna().sum())
            if group2 is None and n_na:
                # scvi-tools counts them in "Rest": e.g. a column copied across from a
                # subset (clusters of the T cells) puts every other cell type there
                warn_user(
                    f"{n_na} of {len(col)} cells have no obs[{groupby!r}] value (e.g. a column "
                    "copied across from a subset of the cells) and are counted in each "
                    "group's 'Rest'. Compare only the cells that have one: pass "
                    f"`adata=cells[:, model.get_var_names()].copy()` for them, or group2=.",
                    UserWarning,
                )
            if group1 is None:  # one vs rest over the categories that have cells: scvi-tools
                # takes every category, and an unused one failed with no cells to sample
                cats = col.astype("category").cat.categories
                group1 = [c for c in cats if (col == c).any()]
        if kwargs.get("batch_size") is not None:
            from scdl.data import check_positive_int

            check_positive_int(kwargs["batch_size"], "batch_size")
        return super().differential_expression(
            adata=adata, groupby=groupby, group1=group1, group2=group2, **kwargs
        )


def _python(value):
    """A numpy scalar as the Python value it holds (``0``, not ``np.int64(0)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _as_list(group) -> list:
    """A group or groups as a list, as scvi-tools reads ``group1``: one value (a string, a
    number) is one group."""
    if group is None:
        return []
    if isinstance(group, str) or not isinstance(group, Iterable):
        return [group]
    return list(group)
