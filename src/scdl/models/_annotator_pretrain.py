"""Self-supervised pretraining of :class:`~scdl.models.CellTypeTransformer` on unlabelled
cells (masked gene-value prediction), before :meth:`~scdl.models.CellTypeTransformer.train`
fine-tunes on the labels.

A mixin of the model class; the training plan is :class:`scdl.train.MaskedExpressionPlan`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from scvi import REGISTRY_KEYS

from scdl._warnings import warn_user
from scdl.data import align_to_genes, check_counts, in_memory
from scdl.dataloaders import CSRBatches
from scdl.train import MaskedExpressionPlan, guarded_training

from ._devices import resolve_device
from ._training import plan_training

if TYPE_CHECKING:
    from anndata import AnnData

    from ._annotator import CellTypeTransformer


# train()'s data-splitting and schedule options, which pretraining has no use for
_TRAIN_ONLY = frozenset(
    {
        "early_stopping",
        "train_size",
        "validation_size",
        "shuffle_set_split",
        "plan_kwargs",
        "datasplitter_kwargs",
    }
)


class AnnotatorPretrainingMixin:
    """Masked-expression pretraining of :class:`~scdl.models.CellTypeTransformer`."""

    def pretrain(
        self,
        adata: AnnData | None = None,
        *,
        max_epochs: int | None = None,
        batch_size: int = 256,
        lr: float = 2e-3,
        layer: str | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        **trainer_kwargs,
    ) -> CellTypeTransformer:
        """Self-supervised pretraining on (unlabelled) cells: masked gene-value prediction.

        15% of each cell's gene tokens have their value hidden and predicted from the rest of
        the cell (through the attention blocks before the last: ``n_layers >= 2``, warned
        otherwise). :meth:`train` then fine-tunes from these weights: pretrain first. Called
        on a trained model, it moves the encoder beneath the trained classifier and Unknown
        thresholds, so the model is marked untrained (with a warning) until trained again.

        Parameters
        ----------
        adata
            Cells to pretrain on (raw counts; aligned to the vocabulary by gene name);
            ``None`` uses the reference.
        max_epochs
            Passes through the cells; default from the number of cells.
        batch_size, lr
            Minibatch size and AdamW learning rate.
        layer
            Layer of ``adata`` holding raw counts; only with ``adata`` (the reference is read
            from the layer it was registered with).
        accelerator, devices, **trainer_kwargs
            Passed to the Lightning trainer. :meth:`train`'s options that split off validation
            cells or schedule on them (``early_stopping``, ``train_size``, ``validation_size``,
            ``shuffle_set_split``, ``plan_kwargs``, ``datasplitter_kwargs``) are refused:
            pretraining holds out no cells.
        """
        from scvi.train import Trainer

        # train()'s options would reach Lightning's Trainer (a TypeError naming train_size) or
        # watch validation cells that pretraining never holds out: name them here instead
        misplaced = sorted(_TRAIN_ONLY.intersection(trainer_kwargs))
        if misplaced:
            raise ValueError(
                f"pretrain() takes no {', '.join(misplaced)}: it holds out no validation cells "
                "and runs max_epochs passes over all the cells. Set max_epochs=, lr= or "
                "batch_size= here; these options belong to train()."
            )
        registered = self.registry_["setup_args"].get("layer") if adata is None else None
        if adata is None and layer is not None and layer != registered:
            raise ValueError(
                f"layer={layer!r} names a layer of the `adata` passed to pretrain(), but none was "
                "passed: without it the reference is read from the layer it was registered with "
                f"(setup_anndata: {registered!r}). Pass pretrain(adata, layer=...), or drop "
                "layer=."
            )
        if len(self.module.layers) == 0:
            # the last block reads only the CLS token: no block lets a gene see the others
            warn_user(
                "With n_layers=1 no attention block reads the gene tokens, so a masked value is "
                "predicted from its gene's identity alone and pretraining learns little. Build "
                "the model with n_layers >= 2 (the default) to pretrain it.",
                UserWarning,
            )
        retrained = self.is_trained_
        # as .train() resolves them: "auto" is one device
        accelerator, devices, device = resolve_device(accelerator, devices)
        if adata is None:
            self._require_adata("pretrain on", takes_adata=True)
            x = in_memory(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        else:
            check_counts(adata, layer)
            x, _ = align_to_genes(
                adata,
                self.get_var_names(),
                layer=layer,
                what="model",
                lower_hint=" Pretrain on cells that measure at least half of the model's genes.",
            )
        max_epochs, batch_size = plan_training(
            x.shape[0],
            max_epochs,
            batch_size=batch_size,
            train_size=1.0,
            trainer_kwargs=trainer_kwargs,
            devices=devices,
            n_cells_seen=2_000 * 128,
            cap=50,
            floor=5,
        )
        loader = CSRBatches(x, batch_size=batch_size, shuffle=True, drop_last=True)
        plan = MaskedExpressionPlan(self.module, lr=lr)
        trainer_kwargs.setdefault("enable_progress_bar", True)
        # a user's logger or checkpoints are Lightning's to take (train() takes them too)
        trainer_kwargs.setdefault("enable_checkpointing", False)
        trainer_kwargs.setdefault("logger", False)
        with (
            guarded_training(self, trainer_kwargs, lr=lr, again=".pretrain()"),
            warnings.catch_warnings(),
        ):
            # no validation cells here by design: Lightning would say so on every call
            warnings.filterwarnings("ignore", message=".*validation_step.* no .val_dataloader")
            trainer = Trainer(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                **trainer_kwargs,
            )
            trainer.fit(plan, train_dataloaders=loader)
        self.module.to(device)  # Lightning's teardown leaves it on the CPU
        self.module.eval()
        self.source_sha256_ = None  # no longer the weights a pretrained annotator loaded
        self.pretrained_epochs_ = int(max_epochs)
        if retrained:
            # the encoder moved beneath the trained head and the Unknown thresholds: a call
            # now would read a model that is neither, so it must be trained again
            self.is_trained_ = False
            warn_user(
                "pretrain() after train() changed the encoder beneath the trained classifier "
                "and its Unknown thresholds: the model is marked untrained. Call train() again "
                "before annotating (pretrain first, then train).",
                UserWarning,
            )
        return self
