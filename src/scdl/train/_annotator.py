"""Training plans of the cell-type annotator: supervised fine-tuning and masked pretraining."""

from __future__ import annotations

import torch
from lightning import pytorch as pl
from scvi import REGISTRY_KEYS
from scvi.train import ClassifierTrainingPlan

from ._epoch_means import StepsLoggedPerEpochMixin


class AnnotatorTrainingPlan(StepsLoggedPerEpochMixin, ClassifierTrainingPlan):
    """scvi-tools' classifier plan with class weights, label smoothing, accuracy and a schedule.

    Class weights (inverse square root of frequency) keep rare cell types from being ignored,
    which is what macro-F1 measures; label smoothing keeps probabilities from saturating, so
    the confidence stays informative for "Unknown" calls.
    """

    _progress_bar = {"train": "train_loss", "validation": "validation_accuracy"}

    def __init__(
        self,
        classifier,
        *,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.1,
        max_epochs: int = 20,
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
        **kwargs,
    ):
        # scvi-tools' plan takes these, but this plan's optimiser and loss are its own: refused
        # rather than ignored (an optimizer= failed with "multiple values for keyword")
        unused = sorted(set(kwargs) & {"eps", "optimizer", "loss"})
        if unused:
            raise ValueError(
                f"plan_kwargs {unused} are not used by the annotator's plan, which trains with "
                "AdamW (cosine learning-rate decay) on a class-weighted, label-smoothed cross-"
                "entropy: set `lr`, `weight_decay`, `label_smoothing` or `class_weights` instead."
            )
        super().__init__(classifier, lr=lr, weight_decay=weight_decay, optimizer="AdamW", **kwargs)
        self.loss_fn = torch.nn.CrossEntropyLoss(
            weight=class_weights, label_smoothing=label_smoothing
        )
        self.max_epochs = max_epochs

    def _step(self, batch, prefix: str):
        logits = self.forward(batch[self.data_key])
        labels = batch[self.labels_key].view(-1).long()
        loss = self.loss_fn(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        self._add_means(prefix, {f"{prefix}_loss": loss, f"{prefix}_accuracy": acc}, len(labels))
        return loss

    def configure_optimizers(self):
        """AdamW on the trainable parameters, with a cosine learning-rate decay over the
        epochs."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
        return {"optimizer": opt, "lr_scheduler": sched}


class MaskedExpressionPlan(StepsLoggedPerEpochMixin, pl.LightningModule):
    """Self-supervised pretraining: predict the hidden values of 15% of a cell's gene tokens."""

    _progress_bar = {"train": "train_masked_loss", "validation": "validation_masked_loss"}

    def __init__(
        self, module, *, lr: float = 2e-3, weight_decay: float = 1e-2, mask_fraction: float = 0.15
    ):
        super().__init__()
        self.module = module
        self.lr, self.weight_decay, self.mask_fraction = lr, weight_decay, mask_fraction

    def _step(self, batch, prefix: str):
        x = batch[REGISTRY_KEYS.X_KEY]
        loss = self.module.masked_value_loss(x, self.mask_fraction)
        self._add_means(prefix, {f"{prefix}_masked_loss": loss}, x.shape[0])
        return loss

    def configure_optimizers(self):
        """AdamW on every parameter."""
        return torch.optim.AdamW(
            self.module.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
