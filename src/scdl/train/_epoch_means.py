"""Epoch means of per-step values, logged once per epoch.

Lightning's ``self.log(..., on_epoch=True)`` costs about a millisecond of Python per call on
CPU, at every step, although only the epoch mean is kept. scdl's training plans add each
step's values (weighted by the minibatch's cells) to tensors on the device instead, and log
the means once at the end of the epoch under the same names, so ``history`` is unchanged.
"""

from __future__ import annotations

import torch


class EpochMeansMixin:
    """For a ``LightningModule``: accumulate weighted step values, log their epoch means."""

    def _add_means(self, stage: str, values: dict[str, torch.Tensor], n: int) -> None:
        sums, count = self.__dict__.setdefault("_epoch_sums", {}).setdefault(stage, ({}, [0]))
        with torch.no_grad():
            for key, value in values.items():
                value = value.detach().float() * n
                sums[key] = sums[key] + value if key in sums else value
        count[0] += n

    def _pop_means(self, stage: str) -> dict[str, torch.Tensor]:
        sums, count = self.__dict__.setdefault("_epoch_sums", {}).pop(stage, ({}, [0]))
        return {key: total / count[0] for key, total in sums.items()} if count[0] else {}

    def _log_means(self, stage: str, prog_bar: tuple[str, ...] = (), **extra) -> None:
        """Log the epoch means of ``stage`` (and ``extra`` values); progress bar for some."""
        logs = {**self._pop_means(stage), **extra}
        sync = bool(getattr(self, "use_sync_dist", False))
        for key, value in logs.items():
            self.log(
                key, value, on_step=False, on_epoch=True, prog_bar=key in prog_bar, sync_dist=sync
            )


class StepsLoggedPerEpochMixin(EpochMeansMixin):
    """Training and validation steps that both run ``self._step(batch, stage)`` and log their
    epoch means once, with ``_progress_bar[stage]`` shown on the progress bar."""

    _progress_bar: dict[str, str] = {}

    def training_step(self, batch, batch_idx):
        """The minibatch's loss, its metrics added to the epoch's running means."""
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        """As :meth:`training_step`, for the validation cells."""
        return self._step(batch, "validation")

    def on_train_epoch_end(self) -> None:
        self._log_means("train", prog_bar=(self._progress_bar.get("train", ""),))

    def on_validation_epoch_end(self) -> None:
        self._log_means("validation", prog_bar=(self._progress_bar.get("validation", ""),))
