"""scvi-tools' ``TrainingPlan`` with per-epoch logging, for the VAE-family models.

scvi-tools logs every training metric at every step through Lightning's ``self.log`` (with
``on_epoch=True``, so only the epoch value is ever kept). On CPU each of those calls costs
about a millisecond of Python, a quarter of a small VAE's step. This plan accumulates the
same quantities during the epoch (:class:`EpochMeansMixin`) and logs them once at its end,
under the same names (``train_loss``, ``elbo_train``, ``reconstruction_loss_train``,
``kl_local_train``, ``kl_global_train``, ``kl_weight`` and the module's extra metrics), so
``model.history`` is unchanged. Validation, optimisers, KL warm-up and learning-rate
schedules are scvi-tools'.
"""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan

from ._epoch_means import EpochMeansMixin


class EpochLoggingTrainingPlan(EpochMeansMixin, TrainingPlan):
    """:class:`scvi.train.TrainingPlan` that logs training metrics once per epoch.

    Parameters are those of :class:`scvi.train.TrainingPlan`. Adam/AdamW use PyTorch's
    fused implementation on CPU and CUDA: the same update in one kernel.
    """

    def _optimizer_creator_fn(self, optimizer_cls):
        def create(params):
            params = list(params)
            # fused: one kernel for the whole update (on CPU ~4x faster than the default)
            fused = all(p.device.type in ("cpu", "cuda") for p in params)
            return optimizer_cls(
                params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=fused
            )

        return create

    def training_step(self, batch, batch_idx):
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs["kl_weight"] = self.kl_weight
        _, _, out = self.forward(batch, loss_kwargs=self.loss_kwargs)
        with torch.no_grad():
            self.elbo_train.update(
                reconstruction_loss=out.reconstruction_loss_sum,
                kl_local=out.kl_local_sum,
                kl_global=out.kl_global_sum,
                n_obs_minibatch=out.n_obs_minibatch,
            )
        extra = {
            f"{key}_train": met
            for key, met in out.extra_metrics.items()
            if isinstance(met, torch.Tensor) and met.dim() == 0
        }
        self._add_means("train", {"train_loss": out.loss, **extra}, out.n_obs_minibatch)
        return out.loss

    def on_train_epoch_end(self) -> None:
        elbo = {name: metric.compute() for name, metric in self.train_metrics.items()}
        for metric in self.train_metrics.values():
            metric.reset()
        self._log_means("train", prog_bar=("train_loss",), kl_weight=float(self.kl_weight), **elbo)
