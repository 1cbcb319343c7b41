"""Training defaults shared by scdl's models."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from scdl._warnings import warn_user

from ._devices import lightning_devices, several_devices, started_interactively


def default_max_epochs(
    n_obs: int, *, n_cells_seen: int = 512_000, cap: int = 400, floor: int = 30
) -> int:
    """Epochs for ``n_obs`` cells: about ``n_cells_seen`` cells passed in training (512,000:
    4,000 minibatches of 128), within [floor, cap].

    A fixed budget of cells seen, rather than of epochs, keeps small datasets from being
    under-trained and large ones from running for hours.
    """
    epochs = round(n_cells_seen / max(n_obs, 1))
    return int(min(cap, max(floor, epochs)))


def _n_train(n_obs: int, train_size: float | None) -> int:
    # as scvi-tools' splitter counts them: rounded up, 0.9 when not given
    return math.ceil(n_obs * (train_size if train_size is not None else 0.9))


def _n_validation(n_obs: int, train_size: float | None, validation_size: float | None) -> int:
    # as scvi-tools' ``validate_data_split``: the rest, or validation_size's share rounded down
    if validation_size is None:
        return n_obs - _n_train(n_obs, train_size)
    return math.floor(n_obs * validation_size)


def fit_batch_size(
    n_obs: int, batch_size: int, train_size: float | None = None, unit: str = "cells"
) -> int:
    """``batch_size``, clamped to the training cells when there are fewer (with a warning).

    A dataset smaller than one minibatch is valid (scvi-tools trains on it): it is trained
    with one minibatch of every training cell. Only impossible values are refused.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batch_size must be an integer >= 2, got {batch_size!r}.")
    if batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}.")
    n_train = _n_train(n_obs, train_size)
    if n_train < batch_size:
        # every cell in one minibatch: whichever way a splitter rounds, no split is left with a
        # remainder minibatch of one cell (which BatchNorm cannot train on)
        warn_user(
            f"Only {n_train} of the {n_obs} {unit} train"
            f"{' (the others validate)' if n_train < n_obs else ''}, fewer than "
            f"batch_size={batch_size}: batch_size is set to {n_obs}, all of them, so training "
            f"runs one minibatch per epoch{' (and validation one)' if n_train < n_obs else ''}.",
            UserWarning,
        )
        return int(n_obs)
    return int(batch_size)


def check_max_epochs(max_epochs) -> int:
    """``max_epochs`` must be a positive integer (Lightning reads -1 as "train forever")."""
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int | np.integer):
        raise TypeError(f"max_epochs must be a positive integer or None, got {max_epochs!r}.")
    if max_epochs < 1:
        raise ValueError(
            f"max_epochs must be >= 1, got {max_epochs}; pass None to choose from the number "
            "of cells."
        )
    return int(max_epochs)


class TrainingSchedule(NamedTuple):
    """What :func:`plan_training` settled: epochs and the (possibly clamped) batch size."""

    max_epochs: int
    batch_size: int


def plan_training(
    n_obs: int,
    max_epochs: int | None,
    *,
    batch_size: int,
    train_size: float | None,
    trainer_kwargs: dict,
    early_stopping: bool = False,
    plan_kwargs: dict | None = None,
    validation_size: float | None = None,
    groups: tuple[int, ...] | None = None,
    unit: str = "cells",
    n_cells_seen: int = 512_000,
    cap: int = 400,
    floor: int = 30,
    devices=None,
) -> TrainingSchedule:
    """What every scdl ``.train()`` settles before Lightning starts.

    Chooses ``max_epochs`` from a budget of cells seen when it is ``None``
    (:func:`default_max_epochs`)
    and checks it; clamps ``batch_size`` to the training cells (:func:`fit_batch_size`).
    Edits ``trainer_kwargs`` in place: ~20 validation passes over training when cells are
    held out (``train_size`` ``None`` means scvi-tools' 0.9), or one every epoch when
    something watches the validation metrics (early stopping, a plateau schedule,
    checkpointing, as scvi-tools' ``Trainer`` does: Lightning counts early stopping's patience
    in validation passes, and a plateau schedule fails on an epoch without one); the user's
    ``check_val_every_n_epoch`` is kept either way; an ``EarlyStopping`` or monitoring
    ``ModelCheckpoint`` among ``callbacks`` counts as watching. Lightning's logging interval
    no longer than an epoch (else it warns on small data); and ``strategy="ddp"`` becomes
    ``"ddp_find_unused_parameters_true"`` (``"ddp_spawn"``, ``"ddp_fork"`` and
    ``"ddp_notebook"`` likewise), because every scdl network holds parameters that a
    given loss does not use (scVI's library encoder with observed library sizes, the
    annotator's pretraining head) and plain DDP refuses them. Several ``devices`` (the
    training's Lightning ``devices``) without a ``strategy`` get that DDP form too (forked in a
    notebook, as Lightning's own choice would be).

    Validation cells are counted as scvi-tools' splitter counts them: ``validation_size``
    (given here or among ``trainer_kwargs``) or the rest after ``train_size``, in each of
    ``groups`` (sizes of groups split separately, e.g. contrastiveVI's background and target
    cells) or in all ``n_obs``. ``unit`` names what is trained on in messages ("lines").
    """
    if train_size is not None and (
        isinstance(train_size, bool)
        or not isinstance(train_size, int | float | np.number)
        or not 0 < train_size <= 1
    ):  # scvi-tools takes 0 as its default 0.9
        raise ValueError(
            f"train_size must be a fraction in (0, 1] (the share of cells trained on, the rest "
            f"validate), got {train_size!r}."
        )
    if validation_size is None:
        validation_size = trainer_kwargs.get("validation_size")
    n_val = sum(_n_validation(n, train_size, validation_size) for n in groups or (n_obs,))
    stops = early_stopping or trainer_kwargs.get("early_stopping")
    plateau = (plan_kwargs or {}).get("reduce_lr_on_plateau")
    if (stops or plateau) and n_val == 0:
        # as scvi-tools refuses train_size=1, before training (Lightning fails after the first
        # epoch); fewer than 10 cells at 0.9 leave none either
        what = "early_stopping" if stops else "reduce_lr_on_plateau"
        off = "early_stopping=False" if stops else "plan_kwargs={'reduce_lr_on_plateau': False}"
        if validation_size is not None:
            at, fix = f"validation_size={validation_size}", "pass a larger validation_size"
        elif groups:
            at = f"train_size={0.9 if train_size is None else train_size}, split by group"
            fix = f"pass a smaller train_size (groups of {', '.join(map(str, groups))} {unit})"
        else:
            at = f"train_size={0.9 if train_size is None else train_size}"
            fix = (
                "pass train_size < 1 (e.g. 0.9)"
                if train_size == 1
                else f"train on at least 10 {unit}, or pass a smaller train_size"
            )
        raise ValueError(
            f"{what} watches the validation loss, but {n_obs} {unit} at {at} leave none to "
            f"validate on: {fix}, or {off}."
        )
    if max_epochs is None:
        max_epochs = default_max_epochs(n_obs, n_cells_seen=n_cells_seen, cap=cap, floor=floor)
    max_epochs = check_max_epochs(max_epochs)
    batch_size = fit_batch_size(n_obs, batch_size, train_size, unit)
    if n_val > 0:
        watched = (
            early_stopping
            or trainer_kwargs.get("early_stopping")
            or trainer_kwargs.get("enable_checkpointing")
            or (plan_kwargs or {}).get("reduce_lr_on_plateau")
            or _watching_callback(trainer_kwargs.get("callbacks"))
        )
        every = 1 if watched else max(1, max_epochs // 20)
        trainer_kwargs.setdefault("check_val_every_n_epoch", every)
    n_batches = _n_train(n_obs, train_size) // batch_size
    limit = trainer_kwargs.get("limit_train_batches")
    if isinstance(limit, int | np.integer) and not isinstance(limit, bool):
        n_batches = min(n_batches, int(limit))  # Lightning's count of batches per epoch
    elif isinstance(limit, float):
        n_batches = int(n_batches * limit)
    trainer_kwargs.setdefault("log_every_n_steps", max(1, min(10, n_batches)))
    # several devices without a strategy: Lightning's own choice, DDP (forked in a notebook),
    # refused the unused parameters below with a RuntimeError at the first step
    several = several_devices(lightning_devices(devices)) or trainer_kwargs.get("num_nodes", 1) > 1
    if trainer_kwargs.get("strategy", "auto") == "auto" and several:
        trainer_kwargs["strategy"] = "ddp_fork" if started_interactively() else "ddp"
    # Lightning's DDP strategies by name: their forms that allow parameters a step leaves
    # unused (scvi-tools' modules have some, e.g. the library encoder)
    if trainer_kwargs.get("strategy") in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        trainer_kwargs["strategy"] = f"{trainer_kwargs['strategy']}_find_unused_parameters_true"
    return TrainingSchedule(max_epochs, batch_size)


def _watching_callback(callbacks) -> bool:
    """Whether a user's callback reads a metric each validation pass (early stopping, or a
    checkpoint that keeps the best by a monitored value, scvi-tools' ``SaveCheckpoint`` too):
    with validation every few epochs it would choose among those epochs only."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    if callbacks is None:
        return False
    callbacks = callbacks if isinstance(callbacks, list | tuple) else [callbacks]
    return any(
        isinstance(c, EarlyStopping)
        or (isinstance(c, ModelCheckpoint) and getattr(c, "monitor", None) is not None)
        for c in callbacks
    )


def vae_plan_kwargs(
    max_epochs: int, *, lr: float, n_epochs_kl_warmup: int | None, plan_kwargs: dict | None
) -> dict:
    """The VAE-family training plan's arguments: ``lr``, the KL warm-up (half of
    ``max_epochs``, at least one epoch, when not given) and the user's ``plan_kwargs``, which
    take precedence."""
    warmup = n_epochs_kl_warmup if n_epochs_kl_warmup is not None else max(1, max_epochs // 2)
    return {"lr": lr, "n_epochs_kl_warmup": warmup, **(plan_kwargs or {})}
