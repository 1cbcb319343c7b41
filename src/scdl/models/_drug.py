"""``scdl.models.DrugResponseModel``: single-cell drug response by transfer from cell lines."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField, ObsmField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from scdl._warnings import warn_user
from scdl.data import (
    CountProfiles,
    check_fraction,
    check_is_anndata,
    check_positive_int,
    check_profiles,
    check_response,
    check_unique_var_names,
    get_matrix,
    select_model_genes,
)
from scdl.dataloaders import DomainSplitter
from scdl.module import RESPONSE_KEY, DrugResponseModule
from scdl.train import EpochLoggingTrainingPlan, quiet_loggers

from ._base import SafeSaveLoadMixin
from ._devices import lightning_devices
from ._drug_args import (
    check_model_args,
    check_network,
    check_sizes,
    resolve_prediction,
    warn_unused_training_options,
)
from ._drug_fit import DEFAULT_TARGET_BATCH_SIZE, DrugFittingMixin, check_not_diverged, line_folds
from ._drug_predict import DrugPredictionMixin

#: response metrics where a higher value means a more sensitive line (CCLE's activity area:
#: the area above the dose-response curve); every other key is read as lower = sensitive
HIGHER_IS_SENSITIVE = ("activity_area",)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: penalties for ``ridge_alpha=RIDGE_ALPHAS``: one per drug by leave-one-out error (RidgeCV)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


# --- the model -----------------------------------------------------------------------------


class DrugResponseModel(
    DrugFittingMixin,
    DrugPredictionMixin,
    SafeSaveLoadMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Predict many drugs' responses of single cells from cancer cell lines' bulk profiles.

    Each ensemble member has a *wide* path, a ridge regression per drug (e.g. GDSC ln IC50)
    from the standardised genes of the cell lines' bulk profiles, fitted in closed form on
    the member's lines with each drug's penalty chosen by leave-one-out error (as
    scikit-learn's ``RidgeCV``), and optionally a *deep* path: a network whose encoder sees
    the single cells of interest (``target``) in training and maps both domains to one latent
    space (MMD alignment, as in scDEAL, Chen et al. 2022, Nat Commun 13:6494), with one
    multi-task head trained with a mean squared error masked to the measured (non-NaN)
    entries. ``prediction`` chooses what a member predicts: ``"wide"`` (default; no network
    is trained), ``"wide_deep"`` (the mean of both) or ``"deep"``. The wide path is the
    default because the network, with or without alignment, transferred worse to unseen
    lines' cells (benchmarks/README.md, "Drug response": one query of five lung lines, the
    only transfer measured, on which this and the other defaults were chosen).

    **Comparable inputs.** Bulk profiles and cells are matched by gene symbol; the model
    uses every gene present in both (or the ``n_top_genes`` that vary most across the lines,
    among genes detected in at least ``min_detected`` of the target cells). Counts become
    log1p(counts per 10k), averaged over each cell's ``smooth_neighbors`` nearest neighbours
    (PCA space of the cells passed together), since a single cell's counts are too sparse to
    look like a bulk profile; bulk values are used as they are (already log-scale). Every
    profile is then put on one scale across those genes: by default (``input_scale="rank"``)
    each gene's value is replaced by the normal quantile of its rank within the profile, so
    only the order of genes within a sample counts and monotone differences between
    platforms (microarray saturation, log1p of sparse counts) vanish; ``"zscore"`` z-scores
    each profile instead, mirroring GDSC's within-line z-scores. Each gene is then
    standardised with the lines' mean and sd.

    **Outputs.** A continuous response per drug (the table's units; for ln IC50 lower is
    more sensitive), the mean over ``n_ensemble`` members. Each member leaves out one fold of
    the lines, so every line has a held-out prediction; from those the model keeps, per drug,
    the held-out residual sd and Spearman correlation (``drug_stats_``; the lines fitted on
    are ``training_lines_``, saved with the model). The *sensitive
    probability* is P(response < the drug's median over the bulk lines) for a Gaussian
    centred on the prediction with the held-out residual sd:
    ``Phi((median - prediction) / residual_sd)``; 0.5 means "as sensitive as the median
    line". For a response where higher means more sensitive (CCLE's activity area;
    ``sensitive="high"`` in :meth:`setup_anndata`, :attr:`sensitive`) it is P(response >
    the median), and the labels follow. (With ``n_ensemble=1`` the residuals come from the
    validation lines, or, with ``train_size=1``, from the training lines, which understates
    the uncertainty.) The residual sd is measured on bulk lines, so the probability is
    calibrated for bulk profiles; on cells it is a score to compare cells and lines within a
    drug, not a chance to read against 0.5: cells' profiles differ from their own line's bulk
    profile by more than bulk lines differ from each other's predictions, and a query's cells
    can sit on one side of the median together (benchmarks/README.md). The ensemble's sd
    (``kind="sd"``) is the members' disagreement, much smaller than the error
    (``drug_stats_["residual_sd"]``).

    **The cells' library size** is their total over every gene of the query (as
    :func:`scanpy.pp.normalize_total` takes it): it weighs the neighbour averaging, so pass
    the counts of every gene, not a subset to the model's genes or to highly variable genes
    (without averaging, ``smooth_neighbors=0``, the library cancels).

    Parameters
    ----------
    adata
        Bulk AnnData registered with :meth:`setup_anndata`.
    registry
        Saved registry, to build the model without data (used by :meth:`load`).
    target
        Single cells to adapt to, raw counts (cells x genes, gene symbols). ``None``: no
        domain alignment (a bulk-only predictor). Unless ``genes`` is given, they choose the
        model's genes (those they share with the bulk data, see ``min_detected``); the
        network (``prediction`` other than ``"wide"``) also trains on their profiles (made
        as minibatches draw them: the model keeps their counts of its genes, not saved).
    target_layer
        Layer of ``target`` holding the counts; ``None`` uses ``target.X``.
    genes
        Genes to use, overriding the selection (must be in the bulk data).
    n_top_genes
        Genes kept: most variable across the bulk lines among the shared genes; ``None``
        keeps all shared genes.
    min_detected
        Keep genes detected (count > 0) in at least this fraction of target cells.
    smooth_neighbors
        Neighbours each cell's profile is averaged over (itself included); ``0`` or ``1``
        turns smoothing off.
    n_hidden, n_latent
        Units of the encoder's hidden layer and latent code.
    dropout_rate
        Dropout in the encoder.
    input_noise
        Sd of Gaussian noise added to the standardised genes in training.
    n_ensemble
        Ensemble members (each leaves out a different fold of the lines). Folds are drawn per
        cell line (``obs["cell_line_key"]`` when present, else ``obs_names``), so replicate
        rows of a line are left out together, from ``scvi.settings.seed`` (seed 0 when it is
        unset, so that the default wide path gives the same model on every run).
    mmd_weight
        Weight of the bulk-target MMD alignment; ``0`` turns it off.
    match_neighbors
        The MMD aligns the target cells to bulk lines drawn in proportion to how often they
        are among a cell's ``match_neighbors`` most correlated lines (input space), so cells
        from a few lines are aligned to comparable lines, not to the whole panel; ``0``
        aligns to all lines alike.
    input_scale
        ``"rank"`` (normal quantiles of within-profile ranks) or ``"zscore"``; see above.
    ridge_alpha
        Penalty of the wide path's ridge regressions (scikit-learn's units: squared errors
        summed over a drug's lines + ``ridge_alpha`` x squared weights, on standardised genes
        and responses), or several (e.g. ``np.logspace(-1, 5, 13)``), each drug taking the one
        with the smallest leave-one-out error on the member's lines (``drug_stats_``
        column ``ridge_alpha``); ``None`` drops the wide path. A fixed penalty is the
        default: it transferred to five unseen lines' cells better than each drug's own
        leave-one-out choice, at the same bulk cross-validation score (benchmarks/README).
    prediction
        ``"wide"``: the ridge alone, no network (``n_hidden``, ``n_latent``,
        ``dropout_rate``, ``input_noise``, ``mmd_weight`` and ``match_neighbors`` then do
        nothing); ``"wide_deep"``: the mean of the network and the ridge; ``"deep"``: the
        network alone. ``None`` (default): ``"wide"``, or ``"deep"`` with
        ``ridge_alpha=None``. ``"wide"`` and ``"wide_deep"`` need a ``ridge_alpha``.

    Examples
    --------
    >>> import scdl
    >>> bulk = scdl.datasets.gdsc(path="data/")  # the folder holding the two GDSC files
    >>> scdl.models.DrugResponseModel.setup_anndata(bulk, response_key="ln_ic50")
    >>> model = scdl.models.DrugResponseModel(bulk, target=cells)  # cells: raw counts
    >>> model.train()
    >>> model.predict(cells, drugs=["Gefitinib"], kind="probability")
    """

    _module_cls = DrugResponseModule
    _data_splitter_cls = DomainSplitter
    _training_plan_cls = EpochLoggingTrainingPlan
    # the per-drug statistics are set on the weights after training (see guarded_training)
    _calibrated_after_training = True
    _second_adata = "target"  # where DrugResponseModel(bulk, cells)'s cells belong
    _reads_counts = False  # bulk expression (log or z-scored), checked by setup_anndata
    _load_adata_what = "the bulk cell lines it was trained on, with their response table"
    _load_adata_hint = (
        "DrugResponseModel.load(adata=) takes the bulk cell lines the model was trained on; "
        "to predict cells, load without adata and pass them to predict() or "
        "scdl.tl.drug_response."
    )

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        target: AnnData | None = None,
        *,
        target_layer: str | None = None,
        genes: Sequence[str] | pd.Index | np.ndarray | None = None,
        n_top_genes: int | None = None,
        min_detected: float = 0.0,
        smooth_neighbors: int = 15,
        n_hidden: int = 1024,
        n_latent: int = 256,
        dropout_rate: float = 0.5,
        input_noise: float = 1.0,
        n_ensemble: int = 5,
        mmd_weight: float = 1.0,
        match_neighbors: int = 10,
        input_scale: Literal["zscore", "rank"] = "rank",
        ridge_alpha: float | Sequence[float] | np.ndarray | None = 3162.0,
        prediction: Literal["wide", "wide_deep", "deep"] | None = None,
    ):
        n_ensemble = check_positive_int(n_ensemble, "n_ensemble")  # stored as a plain int
        prediction = resolve_prediction(prediction, ridge_alpha)
        check_model_args(adata, target, target_layer, input_scale, prediction)
        check_sizes(n_top_genes, smooth_neighbors, match_neighbors, ridge_alpha)
        check_network(n_hidden, n_latent, dropout_rate, input_noise, mmd_weight)
        check_fraction(min_detected, "min_detected", meaning="of the target cells")
        super().__init__(adata, registry)
        self.drugs = [str(d) for d in self._drug_names()]
        self.genes = select_model_genes(
            adata,
            target,
            target_layer,
            bulk_layer=None if adata is None else self.registry_["setup_args"].get("layer"),
            genes=genes,
            n_top_genes=n_top_genes,
            min_detected=min_detected,
            # only the network aligns to the target's values of `genes`
            genes_in_target=prediction != "wide",
        )
        self.smooth_neighbors = int(smooth_neighbors)
        self.match_neighbors = int(match_neighbors)
        self.input_scale = input_scale
        self.module = self._module_cls(
            n_input=len(self.genes),
            n_drugs=len(self.drugs),
            n_hidden=n_hidden,
            n_latent=n_latent,
            dropout_rate=dropout_rate,
            input_noise=input_noise,
            n_ensemble=n_ensemble,
            mmd_weight=mmd_weight,
            ridge_alpha=ridge_alpha,
            prediction=prediction,
        )
        self._target_profiles = None
        # only the network aligns to the cells: the ridges alone (prediction="wide") would
        # hold a dense cells x genes matrix they never read
        if target is not None and self.module.prediction != "wide":
            # made by rows as training samples them: the counts of the model's genes and the
            # neighbour graph are held, not the dense cells x genes profiles
            self._target_profiles = self._count_profile_rows(
                get_matrix(target, target_layer), target.var_names, self.smooth_neighbors
            )
        if adata is not None:
            self._set_scaling()
        # set by train(); saved with the model
        self.drug_stats_: pd.DataFrame | None = None
        self.calibration_source_: str | None = None
        # the lines fitted on (cell_line_key, else obs_names): tl.drug_response warns of
        # cells of these lines whatever AnnData a loaded model is given, or none
        self.training_lines_: list[str] | None = None
        self.n_target_cells_ = 0 if target is None else int(target.n_obs)  # saved: repr
        self._summary = (
            f"scdl DrugResponseModel: {len(self.drugs)} drugs, {len(self.genes)} genes, "
            f"n_hidden={n_hidden}, n_latent={n_latent}, n_ensemble={n_ensemble}, "
            f"mmd_weight={mmd_weight}, ridge_alpha={ridge_alpha}, "
            f"prediction={self.module.prediction!r}"
        )
        self._on_load()
        self.init_params_ = self._get_init_params(locals())
        # load() rebuilds the module from the genes chosen here, without the target cells
        self.init_params_["non_kwargs"]["genes"] = [str(g) for g in self.genes]

    @staticmethod
    def _saved_init_params(init: dict) -> dict:
        """Saved options as this version reads them: a model saved with ``ridge_alpha=None``
        and ``prediction`` "wide" or "wide_deep" was built as the network alone (such a pair
        is refused now)."""
        given = init["non_kwargs"]
        if "ridge_alpha" in given and given["ridge_alpha"] is None:
            if given.get("prediction") in ("wide", "wide_deep"):
                given = {**given, "prediction": "deep"}
        return {**init, "non_kwargs": given}

    def _on_load(self) -> None:
        # the target cells are not saved, their number is (a loaded model has no `target`)
        self._model_summary_string = f"{self._summary}, target cells={self.n_target_cells_}"

    # --- registration ---

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        response_key: str = "ln_ic50",
        layer: str | None = None,
        sensitive: Literal["low", "high"] | None = None,
        **kwargs,
    ) -> None:
        """Check the bulk ``adata`` and register it with its response table.

        As in scvi-tools, registering writes ``uns["_scvi_uuid"]`` and
        ``uns["_scvi_manager_uuid"]`` into ``adata``.

        Parameters
        ----------
        adata
            Bulk cell lines x genes: log-scale expression (e.g. GDSC's within-line z-scores,
            or log1p TPM), gene symbols as var_names.
        response_key
            obsm key of the response: a DataFrame of lines x drugs, drug names as columns,
            NaN where unmeasured (as :func:`scdl.datasets.gdsc` writes).
        layer
            Layer holding the expression; ``None`` uses ``adata.X``.
        sensitive
            Which responses mean a more sensitive line: ``"low"`` (ln IC50, IC50, AUC of
            viability) or ``"high"`` (CCLE's ``activity_area``). ``None`` takes ``"high"`` for
            a ``response_key`` of ``"activity_area"`` and ``"low"`` otherwise. It sets the
            direction of the sensitive probability and label.

        Raises
        ------
        KeyError
            ``response_key`` is not in ``adata.obsm``, or ``layer`` does not exist.
        TypeError
            The response is not a numeric DataFrame, or the expression not numeric.
        ValueError
            NaN/inf expression; constant profiles; raw counts (non-negative integers above
            50; log-transform them first; integers of at most 50 are read as binned log-scale
            values, with a warning);
            a drug measured on fewer than 3 lines (e.g. all NaN); repeated gene names;
            ``sensitive`` not ``"low"``, ``"high"`` or ``None``. ``adata`` is left unchanged.
        """
        if sensitive is None:
            sensitive = "high" if response_key in HIGHER_IS_SENSITIVE else "low"
        elif sensitive not in ("low", "high"):
            raise ValueError(
                f"sensitive={sensitive!r} is not one of 'low' (a lower response means more "
                "sensitive, as ln IC50) or 'high' (as activity area)."
            )
        cls._refuse_setup_options(kwargs)
        setup_method_args = cls._get_setup_method_args(**locals())
        check_is_anndata(adata, registering=True)
        check_unique_var_names(adata)
        check_profiles(adata, layer)
        check_response(adata, response_key)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            ObsmField(RESPONSE_KEY, response_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        # without scvi-tools' INFO line "Using column names from columns of adata.obsm[...]":
        # the response table is always a DataFrame here, its columns the drugs
        with quiet_loggers("scvi.data.fields._arraylike_field"):
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _drug_names(self) -> list:
        return list(
            self.registry_["field_registries"][RESPONSE_KEY]["state_registry"]["column_names"]
        )

    def _count_profile_rows(self, x, var_names: pd.Index, n_neighbors: int) -> CountProfiles:
        """Counts to the model's input, made on demand by rows (the same code path)."""
        return CountProfiles(
            x, var_names, self.genes, n_neighbors=n_neighbors, scale=self.input_scale
        )

    def _count_profile_blocks(
        self, x, var_names: pd.Index, n_neighbors: int, *, chunk_rows: int = 256
    ):
        """:meth:`_count_profile_rows` a block of rows at a time, in order."""
        return self._count_profile_rows(x, var_names, n_neighbors).blocks(chunk_rows)

    # --- training ---

    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 64,
        target_batch_size: int = DEFAULT_TARGET_BATCH_SIZE,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        train_size: float | None = 1.0,
        early_stopping: bool = False,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train on the bulk lines (and align the target cells); Lightning, scvi-tools' plan.

        With ``prediction="wide"`` (default) no network is trained: the ridges are fitted in
        closed form on every line, and the options below except the seed's folds do nothing.
        A loaded model holds no target cells (they are not saved): training it again fits the
        bulk lines only, with a warning.

        The folds draw from ``scvi.settings.seed`` (seed 0 when it is unset); with
        ``prediction="deep"`` or ``"wide_deep"`` the network's initialisation and minibatch
        order draw from it too, as in scvi-tools: set it before building the model for the
        same model on CPU (unset, every deep run differs).

        Parameters
        ----------
        max_epochs
            Passes over the lines; ``None``: about 76,800 lines seen (about 1,200 minibatches
            at the default ``batch_size``; 80 epochs for ~950 lines), within [30, 400].
        batch_size
            Lines per minibatch.
        target_batch_size
            Target cells (and as many reference lines) drawn per minibatch for the MMD.
        lr, weight_decay
            AdamW learning rate and decoupled weight decay.
        train_size
            Fraction of lines to train on; the rest are validation lines (in
            ``history``). Default 1.0: the ensemble's left-out folds already give
            held-out predictions.
        early_stopping
            Stop when the validation loss stops improving (needs ``train_size < 1``).
        accelerator, devices
            Passed to Lightning; further ``Trainer`` arguments go in ``**kwargs``.
        plan_kwargs
            Further arguments for :class:`scvi.train.TrainingPlan` (e.g.
            ``n_epochs_kl_warmup``, over which the MMD weight ramps up; default half of
            ``max_epochs``).
        """
        # first: the arguments as given, for the wide path's report of those it does not use
        given = {k: v for k, v in locals().items() if k not in ("self", "kwargs")} | kwargs
        import scvi

        adata = self._require_adata()
        profiles, responses = self._bulk()
        # scvi-tools leaves its seed unset (None); the folds are the wide path's only draw,
        # so an unset seed gives seed 0's folds rather than new ones on every run
        seed = 0 if scvi.settings.seed is None else int(scvi.settings.seed)
        folds, lines = line_folds(adata, self.module.n_ensemble, seed)
        if self.module.prediction == "wide":  # no network: closed-form ridges on all lines
            warn_unused_training_options(self.train, **given)
            self.module.eval()
            self.train_indices = np.arange(adata.n_obs)
            alphas = self._fit_ridge(profiles, responses, folds)
            self.drug_stats_ = self._calibrate(folds, alphas, (profiles, responses))
            self.training_lines_ = [str(x) for x in lines]
            self.is_trained_ = True
            return None
        if self._target_profiles is None and self.n_target_cells_ > 0:
            warn_user(
                f"This model was built with {self.n_target_cells_} target cells, which a saved "
                "model does not hold: training it again fits the bulk lines only, with no "
                "alignment to cells (mmd_weight and match_neighbors do nothing). To align "
                "again, build a new model with `target=` the cells.",
                UserWarning,
            )

        def calibrate() -> None:
            self.module.eval()
            alphas = None
            if self.module.ridge_alpha is not None:
                # after the network, so a diverged run leaves every weight as it was
                alphas = self._fit_ridge(profiles, responses, folds)
            stats = self._calibrate(folds, alphas, (profiles, responses))
            check_not_diverged(stats, responses, lr=lr, weight_decay=weight_decay)
            self.drug_stats_ = stats
            self.training_lines_ = [str(x) for x in lines]

        out = self._train_network(
            profiles,
            folds,
            max_epochs=max_epochs,
            batch_size=batch_size,
            target_batch_size=target_batch_size,
            plan={
                "optimizer": "AdamW",
                "lr": lr,
                "weight_decay": weight_decay,
                "eps": 1e-8,
                **(plan_kwargs or {}),
            },
            train_size=train_size,
            early_stopping=early_stopping,
            accelerator=accelerator,
            devices=lightning_devices(devices),
            after=calibrate,
            **kwargs,
        )
        return out
