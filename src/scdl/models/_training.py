"""Training defaults shared by scdl's models."""

from __future__ import annotations

import numpy as np


def default_max_epochs(n_obs: int, *, n_steps: int = 4_000, cap: int = 400, floor: int = 30) -> int:
    """Epochs for ``n_obs`` cells: about ``n_steps`` minibatches of 128, within [floor, cap].

    A fixed budget of gradient steps, rather than of epochs, keeps small datasets from being
    under-trained and large ones from running for hours.
    """
    epochs = round(n_steps * 128 / max(n_obs, 1))
    return int(min(cap, max(floor, epochs)))


def check_batch_size(n_obs: int, batch_size: int, train_size: float | None = None) -> None:
    """Refuse a minibatch larger than the training set, with the fix."""
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}.")
    n_train = int(n_obs * (train_size if train_size is not None else 0.9))
    if n_train < batch_size:
        raise ValueError(
            f"Only {n_train} training cells ({n_obs} cells x train_size) but batch_size="
            f"{batch_size}. Pass a smaller batch_size (<= {max(2, n_train)}) or more cells."
        )


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


def plan_training(
    n_obs: int,
    max_epochs: int | None,
    *,
    batch_size: int,
    train_size: float | None,
    trainer_kwargs: dict,
    n_steps: int = 4_000,
    cap: int = 400,
    floor: int = 30,
) -> int:
    """What every scdl ``.train()`` settles before Lightning starts; returns ``max_epochs``.

    Chooses ``max_epochs`` from a step budget when it is ``None`` (:func:`default_max_epochs`)
    and checks it and ``batch_size``. Edits ``trainer_kwargs`` in place: ~20 validation
    passes over training when cells are held out (``train_size`` ``None`` means scvi-tools'
    0.9), and ``strategy="ddp"`` becomes ``"ddp_find_unused_parameters_true"``, because every
    scdl network holds parameters that a given loss does not use (scVI's library encoder
    with observed library sizes, the annotator's pretraining head) and plain DDP refuses them.
    """
    if max_epochs is None:
        max_epochs = default_max_epochs(n_obs, n_steps=n_steps, cap=cap, floor=floor)
    max_epochs = check_max_epochs(max_epochs)
    check_batch_size(n_obs, batch_size, train_size)
    if train_size is None or train_size < 1:
        trainer_kwargs.setdefault("check_val_every_n_epoch", max(1, max_epochs // 20))
    if trainer_kwargs.get("strategy") == "ddp":
        trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
    return max_epochs
