"""scvi-tools' ``TrainingPlan`` with per-epoch logging, for the VAE-family models.

scvi-tools logs every training metric at every step through Lightning's ``self.log`` (with
``on_epoch=True``, so only the epoch value is ever kept). On CPU each of those calls costs
about a millisecond of Python, a quarter of a small VAE's step. This plan accumulates the
same quantities in tensors during the epoch and logs them once at its end, under the same
names (``train_loss``, ``elbo_train``, ``reconstruction_loss_train``, ``kl_local_train``,
``kl_global_train``, ``kl_weight`` and the module's extra metrics), so ``model.history`` is
unchanged. Validation, optimisers, KL warm-up and learning-rate schedules are scvi-tools'.
"""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan


class EpochLoggingTrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` that logs training metrics once per epoch.

    Parameters are those of :class:`scvi.train.TrainingPlan`. Adam/AdamW use PyTorch's
    fused implementation on CPU and CUDA: the same update in one kernel.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sums: dict[str, torch.Tensor] = {}
        self._n_cells = 0

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
        self._accumulate(out)
        return out.loss

    @torch.no_grad()
    def _accumulate(self, out) -> None:
        n = out.n_obs_minibatch
        self.elbo_train.update(
            reconstruction_loss=out.reconstruction_loss_sum,
            kl_local=out.kl_local_sum,
            kl_global=out.kl_global_sum,
            n_obs_minibatch=n,
        )
        values = {"train_loss": out.loss}
        for key in out.extra_metrics_keys:
            met = out.extra_metrics[key]
            if isinstance(met, torch.Tensor) and met.dim() == 0:
                values[f"{key}_train"] = met
        for key, value in values.items():
            value = value.detach().float() * n
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._n_cells += n

    def on_train_epoch_end(self) -> None:
        if self._n_cells:
            logs = {key: total / self._n_cells for key, total in self._sums.items()}
            sync = self.use_sync_dist
            self.log("train_loss", logs.pop("train_loss"), prog_bar=True, sync_dist=sync)
            logs.update({name: metric.compute() for name, metric in self.train_metrics.items()})
            logs["kl_weight"] = float(self.kl_weight)
            self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=sync)
        for metric in self.train_metrics.values():
            metric.reset()
        self._sums, self._n_cells = {}, 0
