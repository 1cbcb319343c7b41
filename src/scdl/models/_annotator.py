"""``scdl.models.CellTypeTransformer``: a transformer cell-type annotator over gene tokens."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from scdl._warnings import registering_quietly
from scdl.data import (
    check_bool,
    check_count_setup,
    check_fraction,
    check_positive_int,
    check_positive_number,
    log_normalize_counts,
)
from scdl.dataloaders import LabelledSplitter
from scdl.module import CellTypeTransformerModule
from scdl.train import AnnotatorTrainingPlan, guarded_training

from ._annotator_attribution import AnnotatorAttributionMixin
from ._annotator_calibration import AnnotatorCalibrationMixin
from ._annotator_labels import check_reference_labels
from ._annotator_predict import AnnotatorPredictionMixin
from ._annotator_pretrain import AnnotatorPretrainingMixin
from ._arguments import check_annotator_plan
from ._base import SafeSaveLoadMixin
from ._devices import lightning_devices
from ._training import plan_training

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


class CellTypeTransformer(
    AnnotatorPredictionMixin,
    AnnotatorAttributionMixin,
    AnnotatorCalibrationMixin,
    AnnotatorPretrainingMixin,
    SafeSaveLoadMixin,
    BaseModelClass,
):
    """Cell-type annotator: a small transformer over each cell's most over-expressed genes.

    A cell becomes a sequence of gene tokens (gene identity embedding + an encoding of its
    expression, for the cell's ``n_tokens`` genes most expressed relative to the reference)
    and a CLS token that starts from a summary of the whole profile; a transformer encoder
    (scaled-dot-product attention) and a linear head give cell-type probabilities
    (``scdl.module._annotator``). Registration, data splitting and the training loop are
    scvi-tools' (``AnnDataManager``, ``DataSplitter``, ``ClassifierTrainingPlan``,
    ``TrainRunner``).

    **Unknown calls.** A new cell type and a known type under a shift (chemistry, donor,
    stimulation) both move cells away from the reference, so the call is made on clusters of the
    query in a shift-corrected space (``scdl.models._novelty``): the query is over-clustered on
    its own, each cluster's mean profile is standardised by the query's own per-gene mean and sd
    (which removes a shift the whole query shares) and compared with the mixture of the
    reference profiles of the types its cells are predicted as (weighted by their shares, over
    the types holding at least a quarter of its cells: a cluster that merges known types matches
    their mixture, while a few stray calls do not make one); a cluster's *novelty* is 1 - their
    cosine similarity. A type's profile there is the nearest of its mean and its prototypes
    (``scdl.models._prototypes``): the mean profiles of its cells within each cluster of the
    reference that holds at least 15% of them (and 20 cells) and is a distinct state (cosine
    with the type's mean below 0.9), because a type whose cells hold two states (a
    coarse label such as "Monocytes", two conditions, labels that put cells of a neighbouring
    type under it) has a mean like neither, and a query cluster of one state looked new. The
    novelty threshold (``cluster_threshold_``) is set on the reference
    alone after training: with a ``batch_key`` of two or more batches, each batch plays a query
    against the others' profiles (``novelty_calibration_ = "leave-one-batch-out"``); otherwise
    four random halvings do, each half both ways (``"split-half"``; one halving's percentile
    depends on the draw). It is their clusters' 95th percentile of novelty plus a fixed margin
    (0.15, chosen on the benchmark's splits together) for the shift a new dataset brings beyond
    the reference's own. A second check asks whether the reference holds cells like the
    cluster's at all (``scdl.models._mixing``): a sketch of the reference (at most 2,000 cells
    in a PCA fitted on other reference cells) is stored in the model after training; the query,
    standardised by its own statistics, is projected there, and a cluster whose cells have fewer
    than ``min_reference_share_`` (15%) reference cells among their 30 nearest neighbours (about
    50% where the reference has such cells; sides balanced) is far from it. Each check's
    evidence is counted in units of its own threshold: the novelty over ``cluster_threshold_``,
    and the mixing deficit ``(0.5 - share) / (0.5 - min_reference_share_)`` (0 for a cluster
    that mixes fully, 1 at 15%, at most 1.43 for one without reference neighbours, negative for
    one with more reference neighbours than query ones). A cluster's cells are called
    ``"Unknown"`` when one check passes its threshold and the two sum above
    ``unknown_evidence_`` (1.6, a fixed level, not fitted on the reference: see
    benchmarks/README.md): a call by one
    check stands unless the other says the cluster is like the reference (a known type under a shift
    mostly moves on one check; where the mixing check is not made, the novelty alone past its
    threshold). A new type that only one check sees, the other neutral, is called as its nearest
    type. The sketch cells are stored at five depths (the reference's counts thinned to 1, 1/2, ...
    1/16), and the query is compared with the depth nearest its own (judged type by type against its
    predicted types' reference depths; a deeper query is thinned to the reference's), because a
    shallower query's known types otherwise lose their reference neighbours. What to rely on: cells
    of a known type form clusters that match their type once the shared shift is removed and mix
    with its reference cells, and are rarely called Unknown; a type absent from the reference and
    unlike every reference type (e.g. B cells for a T/NK/monocyte reference) often is (when the
    reference's batches show a mild shift; where they differ a lot, a high threshold lets it pass
    as its nearest type); a type close
    to a reference type (CD4 vs CD8 T cells, NK vs CD8 T cells, CD14 vs FCGR3A monocytes) is caught
    when its cells sit apart from that type's reference cells, and otherwise called as that type. A
    known type in a state the reference lacks (e.g. stimulated monocytes for an unstimulated
    reference) can mix poorly too. Under a shift larger than the reference's own batches show
    (another lab or chemistry, few genes in common), known clusters mix poorly too. When the query's
    cells mix poorly as a whole (the median of their own reference shares below 0.3; a large
    population the reference lacks can lower it too), the share that counts as fully mixed moves
    from 0.5 halfway towards the median share of the query's clusters that the novelty check finds
    known (``calls.attrs["mixing_level"]``; deficits and the floor are read against it), so that the
    shift alone does not call known types Unknown; a population the reference lacks is then caught
    mostly by its novelty, and one whose cells find reference neighbours about as often as the
    shifted known types' do is called as its nearest type. The Unknown calls that remain there are
    often cells whose most probable type is wrong: read Unknown as "not reliably typed". Such a
    query is adapted to by default (``adapt_to_query="auto"`` in :meth:`annotate_cells`; also when
    the query lacks the sketch's genes, so that its mixing cannot be measured), which makes fewer
    forced calls wrong: its own gene statistics are blended halfway into its cells' standardisation,
    then the reference's per-gene mean is moved by the query's shift at the query's own composition
    (its mean minus the reference's type means weighted by its calls), and the calls are made again
    until they settle (not for calls far from the reference's composition, or that do not settle:
    the blend's calls stay). A query whose forced calls leave out reference types (one sorted
    population) is first filled to the reference's composition (``scdl.models._composition``:
    pseudo-cells of the missing types under the shift its present types show), as its own mean would
    be its own profile (unless its types are unlike their reference types before any shift is
    removed); it then cannot show a new type close to a known one, which is read as that type under
    a shift (on cell lines too: a removed line forced onto a similar one). A query holding every
    type but dominated by one (at least half of its calls, and further from the reference's
    composition than the reference's largest type's share) is weighted to the reference's
    composition instead, which reads a new population called as the dominant type as part of it. A
    query shifted as a whole (its cells' median reference share, on the unadapted calls, below 0.3:
    another lab or chemistry) has its gene statistics, not the mixing check's pool, read at the
    reference's composition too, unless one type holds half of the reference. A
    ``UserWarning`` says how the query was read when its predicted composition is more than half
    away from the reference's (total-variation distance above 0.5) or when it was weighted. A query
    pooling samples of different chemistries shares only part of its shift: a state more common in
    one of them than in the reference can be called Unknown, which annotating each sample on its own
    avoids. Models saved before the cluster call keep their per-cell thresholds
    (``cluster_threshold_`` is ``None``), and those calibrated before the mixture compare a cluster
    with its majority type's profile (``novelty_rule_`` is ``None``), those before the prototypes
    with its types' means (``novelty_rule_`` is ``"mixture"``); models saved before the sketch make
    the first check only (``min_reference_share_`` is ``None``), those saved before the sum call a
    cluster past either threshold (``unknown_evidence_`` is ``None``), and those before the fill
    read a sorted population against its own mean (its known types mostly Unknown).

    **What the Unknown call is not.** It is made per query cluster: a handful of unlike cells
    among many (ten cells of an unseen type in a query of 1,500) join a known cluster and take its
    type. It is not a doublet or empty-droplet detector: doublets mostly take the type of their
    larger part, and their confidence is only a little lower than singlets'. Filter barcodes
    and doublets first, as a scanpy workflow does (``sc.pp.filter_cells``,
    ``sc.pp.scrublet``), and remove strong ambient RNA (SoupX, CellBender, DecontX): a profile
    every cell shares pulls calls towards the sample's most abundant types, and neither check
    nor ``adapt_to_query="auto"`` (whose mixing measure it moves little) says so. Only cells
    with no count in the model's genes, or with fewer than 1/16 of the query's median count
    there (at most 10 counts, and at most 1/16 of the shallowest reference type's median:
    segmentation slivers, near-empty droplets among cells), are called Unknown on their own,
    with a warning; they are left out of the clusters the call checks, where they turned real
    cells Unknown. A query whose cells hold less than 1/16 of the reference's depth (imaging
    panels of a few dozen counts) is warned about: the calls lose accuracy fast there.

    **Genes.** The vocabulary is the registered AnnData's genes (select e.g. 2,000 highly
    variable genes first). A query is aligned by gene name; missing genes are treated as
    unmeasured (hidden, not zero), and a query holding fewer than ``min_gene_overlap`` (50%) of
    the vocabulary is refused. After training the model keeps a sample of 2,000 reference cells
    (all of a smaller reference; at least 20 of every type, the rest at random, so more with
    over 100 types; their counts and labels, in the saved file): for a query lacking genes that
    carry more than 10% of the reference sketch, the linear path is fitted again on that sample
    over the genes the query holds (``scdl.models._refit``; the transformer path never reads a
    missing gene), as a logistic regression trained on those genes would be.

    Parameters
    ----------
    adata
        Reference AnnData registered with :meth:`setup_anndata`.
    registry
        Saved registry, to build the model without data (used by :meth:`load`).
    n_tokens
        Gene tokens per cell.
    d_model, n_heads, n_layers, dim_feedforward
        Transformer size; the defaults train on 2 CPU cores in minutes for 10k cells.
    dropout
        Dropout in the transformer and before the head.
    gene_dropout
        Fraction of genes hidden per cell during training (robustness to missing or shifted
        genes).
    linear_head
        Add a linear classifier on every gene's centred log-normalised expression to the
        transformer's logits ("wide and deep"). It is an L2 logistic regression (inverse
        strength ``linear_C`` in :meth:`train`) fitted with scikit-learn on the training
        cells before the transformer and then frozen, so the transformer learns what the
        linear classifier (CellTypist's approach) misses; after calibration it is refitted
        on every reference cell.
    transformer_weight
        With ``linear_head``, the weight of the transformer's logits at prediction (1 in
        training): 0.5 averages the linear model and the linear + transformer model, which
        shrinks the transformer's fit to the reference; 1 uses the trained sum, 0 the
        linear classifier alone.

    Examples
    --------
    >>> import scdl
    >>> cells = scdl.datasets.kang_pbmc()
    >>> ref = cells[cells.obs["condition"] == "ctrl"].copy()
    >>> query = cells[cells.obs["condition"] == "stim"].copy()
    >>> scdl.models.CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    >>> model = scdl.models.CellTypeTransformer(ref)
    >>> model.train()
    >>> query.obs["cell_type_pred"] = model.predict(query)
    """

    _module_cls = CellTypeTransformerModule
    _data_splitter_cls = LabelledSplitter
    _training_plan_cls = AnnotatorTrainingPlan
    # the Unknown thresholds are set on the weights after training (see guarded_training)
    _calibrated_after_training = True
    _unseen_categories_fix = (
        "load the model without `adata` and annotate these cells with "
        "`scdl.tl.annotate(adata, model=model)` or `model.predict(adata)`, which take cells "
        "of any batch or label"
    )

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_tokens: int = 32,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 64,
        dropout: float = 0.1,
        gene_dropout: float = 0.3,
        linear_head: bool = True,
        transformer_weight: float = 0.5,
    ):
        super().__init__(adata, registry)
        for name, value in (
            ("n_tokens", n_tokens),
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
            ("dim_feedforward", dim_feedforward),
        ):
            check_positive_int(value, name)
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} must be a multiple of n_heads={n_heads} (each attention head "
                "takes d_model / n_heads dimensions); pass an n_heads that divides d_model."
            )
        check_fraction(dropout, "dropout", below_one=True)
        check_fraction(
            gene_dropout, "gene_dropout", below_one=True, meaning="genes hidden per cell"
        )
        check_fraction(transformer_weight, "transformer_weight")
        check_bool(linear_head, "linear_head")  # None turned the linear path off
        self.module = self._module_cls(
            n_genes=self.summary_stats.n_vars,
            n_labels=self.summary_stats.n_labels,
            n_tokens=n_tokens,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=n_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            gene_dropout=gene_dropout,
            linear_head=linear_head,
            transformer_weight=transformer_weight,
        )
        if adata is not None:
            mean, std = self._gene_statistics(adata)
            self.module.gene_mean.copy_(torch.from_numpy(mean))
            self.module.gene_std.copy_(torch.from_numpy(std))
        self.unknown_rate_ = None
        self.cluster_threshold_ = None  # set by train(); None: the per-cell call (old models)
        self.novelty_calibration_ = None
        self.novelty_genes_ = None
        # "prototypes": a cluster is compared with the mixture of its cells' predicted types,
        # each by the nearest of its mean and prototypes; "mixture" (models calibrated before
        # the prototypes): by their means; None (before the mixture): its majority type's mean
        self.novelty_rule_ = None
        self.min_reference_share_ = None  # set by train(); None: no mixing check (old models)
        # set by train(); None: either check alone calls a cluster (models saved before the sum)
        self.unknown_evidence_ = None
        self.linear_C_ = None  # set by train(); the refit for a query lacking genes reuses it
        self._model_summary_string = (
            f"scdl CellTypeTransformer: {self.summary_stats.n_labels} cell types, "
            f"{self.summary_stats.n_vars} genes, n_tokens={n_tokens}, d_model={d_model}, "
            f"n_layers={n_layers}"
        )
        self.init_params_ = self._get_init_params(locals())

    # --- registration ------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Check a reference AnnData and register it for the annotator.

        As in scvi-tools, registering writes into ``adata``: an ``obs`` column per registered
        categorical field (e.g. ``_scvi_batch``, ``_scvi_labels``) and ``uns["_scvi_uuid"]``,
        ``uns["_scvi_manager_uuid"]``. The ``scdl.tl`` steps train on a copy and leave them out.

        Parameters
        ----------
        adata
            Reference with raw counts (cells x genes); its genes become the vocabulary.
        labels_key
            obs column of cell-type labels (at least two types).
        layer
            Layer holding raw counts; ``None`` uses ``adata.X``.
        batch_key
            obs column of the reference's batches (samples, donors, conditions; registered
            and kept with the model). The Unknown call is calibrated one batch against the
            others, which shows the shift a new sample brings; without it, random halves of a
            reference that mixes samples set a higher threshold and miss more new types (see
            the class notes). A biological condition as the batch (stimulated vs control)
            counts the condition's change as a shift to tolerate: it can raise the threshold
            so far that a new type passes as known; prefer samples or donors.

        Raises
        ------
        KeyError
            A layer or obs column does not exist.
        ValueError, TypeError
            Counts are not raw counts, labels have missing values, a single type or the label
            ``"Unknown"`` (the call's name), or gene names repeat. ``adata`` is left
            unchanged. Cells without counts are kept, with a warning.
        """
        cls._refuse_setup_options(kwargs)
        setup_method_args = cls._get_setup_method_args(**locals())
        from_registry = kwargs.get("source_registry") is not None
        check_count_setup(adata, layer, categorical={"batch_key": batch_key})
        if labels_key is None and not from_registry:
            raise ValueError("`labels_key` is required: the obs column with cell-type labels.")
        if labels_key is not None:
            check_reference_labels(adata, labels_key, from_registry=from_registry)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        # small batches: said by check_count_setup; small types: by check_reference_labels
        with registering_quietly(labels_said=labels_key is not None and not from_registry):
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @property
    def labels(self) -> list[str]:
        """Cell types the model predicts, in the order of its probability columns."""
        state = self.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]
        return [str(c) for c in state["categorical_mapping"]]

    def _extra_config(self) -> dict:
        # the vocabulary is "var_names"; the label list readable without torch or scvi-tools
        return {
            "labels": self.labels,
            "unknown_rate": self.unknown_rate_,
            "cluster_threshold": self.cluster_threshold_,
            "min_reference_share": self.min_reference_share_,
            "unknown_evidence": self.unknown_evidence_,
        }

    def _gene_statistics(self, adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
        """Mean and s.d. of log1p(CP10k) per gene over the reference (sparse, chunked)."""
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        total = np.zeros(adata.n_vars)
        total_sq = np.zeros(adata.n_vars)
        for start in range(0, adata.n_obs, 10_000):
            chunk = log_normalize_counts(x[start : start + 10_000])
            total += np.asarray(chunk.sum(0)).ravel()
            total_sq += np.asarray(chunk.multiply(chunk).sum(0)).ravel()
        mean = total / adata.n_obs
        std = np.sqrt(np.maximum(total_sq / adata.n_obs - mean**2, 0.0))
        # genes that barely vary get a floor, so their z-scores do not explode
        return mean.astype(np.float32), np.maximum(std, 0.1).astype(np.float32)

    # --- training ----------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        lr: float = 2e-3,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        unknown_rate: float = 0.05,
        linear_C: float = 0.01,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train the classifier, then calibrate the "Unknown" call on the reference.

        As in scvi-tools, the weights' initialisation, the data split and the minibatch order
        draw from ``scvi.settings.seed``: set it before building the model
        (``scvi.settings.seed = 0``) and the same seed gives the same model and calls on CPU.

        Parameters
        ----------
        max_epochs
            Passes through the data; default about 1,500 minibatches (10 to 300 epochs).
        batch_size
            Cells per minibatch.
        lr
            AdamW learning rate (cosine schedule).
        train_size
            Fraction of the reference the transformer trains on; the rest calibrates the
            per-cell thresholds. The linear path, a convex fit that needs no held-out
            cells, is then refitted on every reference cell. ``None`` is 0.9, as in
            scvi-tools; ``1.0`` holds no cell out (early stopping then has no validation
            loss, and a warning says the per-cell thresholds are set on training cells).
        validation_size
            Fraction of the reference held out for validation and calibration; default every
            cell not trained on (scvi-tools' ``DataSplitter`` rule).
        shuffle_set_split
            Draw the held-out cells at random (``False``: the first cells in the AnnData's
            order are held out, the rest train), as scvi-tools' splitter does.
        load_sparse_tensor
            Accepted for scvi-tools' signature; minibatches are always dense here (the
            transformer reads each cell's top genes).
        unknown_rate
            Fraction of held-out reference cells that the per-cell thresholds flag (used only
            by models without a cluster threshold; the Unknown call is made per query cluster,
            see the class notes, and calibrated by :meth:`calibrate_clusters`).
        linear_C
            Inverse L2 strength of the linear path's logistic regression (scikit-learn's
            ``C``; with ``linear_head``). Strong by default: a shift between reference and
            query (condition, sample) favours small weights spread over many genes.
        accelerator, devices
            Passed to Lightning (``"cpu"``, ``"gpu"``, ``"auto"``; device count or ids);
            further ``Trainer`` arguments (e.g. ``strategy="ddp"``) go in ``**kwargs``.
            ``early_stopping=True`` there watches ``validation_loss`` (validated every epoch)
            unless ``early_stopping_monitor`` names another logged metric.
        plan_kwargs
            Further arguments for :class:`scdl.train.AnnotatorTrainingPlan`
            (``label_smoothing``, ``weight_decay``, ``class_weights``).
        datasplitter_kwargs
            Further arguments for the data splitter (scvi-tools' ``DataSplitter``).
        """
        train_size = 0.9 if train_size is None else train_size  # scvi-tools' None
        number = isinstance(unknown_rate, int | float | np.number)
        if isinstance(unknown_rate, bool) or not number or not 0 <= unknown_rate < 0.5:
            raise (ValueError if number else TypeError)(
                f"unknown_rate must be a number in [0, 0.5), got {unknown_rate!r}."
            )
        plan_kwargs = check_annotator_plan(plan_kwargs, list(self.labels))
        # refused by its own name (scikit-learn's error names `C`), before anything is set
        linear_C = check_positive_number(
            linear_C, "linear_C", meaning="inverse L2 strength of the linear head"
        )
        # a budget of ~1,500 minibatches: small references need many passes
        max_epochs, batch_size = plan_training(
            self._require_adata().n_obs,
            max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            trainer_kwargs=kwargs,
            devices=devices,
            plan_kwargs=plan_kwargs,
            validation_size=validation_size,
            n_cells_seen=1_500 * batch_size,
            cap=300,
            floor=10,
        )
        if kwargs.get("early_stopping"):
            # scvi-tools' Trainer watches the VAE's ELBO by default; this plan logs its loss
            kwargs.setdefault("early_stopping_monitor", "validation_loss")
        labels = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        weights = _class_weights(labels, self.summary_stats.n_labels)
        plan = {"lr": lr, "max_epochs": max_epochs, "class_weights": weights, **(plan_kwargs or {})}
        splitter = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            drop_last=False,
            shuffle_set_split=shuffle_set_split,
            **(datasplitter_kwargs or {}),
        )
        training_plan = self._training_plan_cls(self.module, **plan)
        with guarded_training(self, kwargs, lr=plan["lr"]):
            if self.module.linear is not None:
                splitter.setup()  # the same seeded split Lightning will use
                self._fit_linear_head(splitter.train_idx, C=linear_C)
            runner = TrainRunner(
                self,
                training_plan=training_plan,
                data_splitter=splitter,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=lightning_devices(devices),
                **kwargs,
            )
            out = runner()
            # inside the guard: an interrupt while calibrating leaves the model as one during
            # the epochs does (the weights before the call back, with their calibration)
            self._calibrate_after_training(splitter, unknown_rate=unknown_rate, linear_C=linear_C)
        # a pretrained annotator trained further is no longer the weights it was loaded with
        # (a refused or interrupted call leaves them, and so the provenance, as they were)
        self.source_sha256_ = None
        self.linear_C_ = linear_C  # kept only once training went through
        return out


def _class_weights(labels: np.ndarray, n_labels: int) -> torch.Tensor:
    """Loss weight per class, proportional to 1 / sqrt(its cells), averaging 1 over cells."""
    counts = np.bincount(labels.astype(int), minlength=n_labels)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    weights = weights / (weights * counts).sum() * counts.sum()
    return torch.tensor(weights, dtype=torch.float32)
