"""Guards around every scdl training run: divergence (NaN/inf loss) and interruption.

:func:`guarded_training` wraps a model's ``.train()``. It adds a :class:`TrainingGuard`
callback to the Lightning trainer and, when training fails, leaves the model in a known state:

- the loss or the weights become NaN/inf: training stops with :class:`TrainingDivergedError`
  naming the epoch and the learning rate, and the weights go back to what they were before
  this ``.train()`` call (a fresh model stays untrained, ``is_trained_`` is ``False``);
- Ctrl+C (``KeyboardInterrupt``): Lightning shuts down and exits; the guard turns that back
  into a ``KeyboardInterrupt`` naming the epoch reached, keeps the weights reached so far and
  sets ``is_trained_ = False``. Calling ``.train()`` again continues from those weights;
- another callback stops training early (not early stopping): a warning says how many of
  the epochs ran.

The loss is checked without a host-device sync per step: a flag is accumulated on the
device and read every ``check_every_n_steps`` steps and at each epoch end.
"""

from __future__ import annotations

import copy
import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer

from scdl._warnings import warn_user

from ._checkpoint import safe_checkpoints
from ._quiet import quiet_lightning

if TYPE_CHECKING:
    from collections.abc import Iterator


class TrainingDivergedError(FloatingPointError):
    """Training produced a NaN or infinite loss or weights; the weights were restored."""


def _all_finite(module: torch.nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _step_loss(outputs) -> torch.Tensor | None:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, torch.Tensor) else None


class TrainingGuard(Callback):
    """Stop training with a clear error when the loss or the weights stop being finite.

    Parameters
    ----------
    lr
        Learning rate of the run, named in the error message.
    check_every_n_steps
        Steps between reads of the on-device "loss was non-finite" flag (each read is a
        host-device sync on GPU); it is also read at every epoch end.
    """

    def __init__(self, lr: float | None = None, check_every_n_steps: int = 50):
        super().__init__()
        self.lr = lr
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self._bad: torch.Tensor | None = None
        self.epoch = 0
        self.interrupted_epoch: int | None = None
        self.max_epochs: int | None = None
        self.diverged = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.max_epochs = trainer.max_epochs
        self._bad = None
        # a loaded, pretrained or already trained model's module is in eval mode (set for
        # inference) and Lightning >= 2.2 no longer sets train mode itself: dropout and batch
        # norm would train as at inference (scArches' freezing sets rates, not modes)
        pl_module.train()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch = int(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = _step_loss(outputs)
        if loss is not None:
            bad = ~torch.isfinite(loss.detach()).all()
            self._bad = bad if self._bad is None else self._bad | bad
        if (trainer.global_step + 1) % self.check_every_n_steps == 0:
            self._check(trainer, pl_module, weights=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, weights=True)

    def _check(self, trainer, pl_module, *, weights: bool) -> None:
        bad_loss = self._bad is not None and bool(self._bad)
        if bad_loss or (weights and not _all_finite(pl_module)):
            self.diverged = True
            what = "the training loss" if bad_loss else "its weights"
            raise TrainingDivergedError(self.message(self.epoch, what))

    def message(self, epoch: int, what: str = "the training loss") -> str:
        """The divergence error's text."""
        of = f" of {self.max_epochs}" if self.max_epochs else ""
        lr = f"lr={self.lr:g}" if isinstance(self.lr, int | float) else "the learning rate"
        return (
            f"Training diverged at epoch {epoch + 1}{of}: {what} became NaN or "
            f"infinite. The model's weights were restored to what they were before this "
            f".train() call. Lower {lr} (e.g. 10x smaller) and train again; if it persists, "
            "check the input for extreme values."
        )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted_epoch = self.epoch

    def on_train_end(self, trainer, pl_module) -> None:
        done, total = int(trainer.current_epoch), trainer.max_epochs
        early = any(
            isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0 for cb in trainer.callbacks
        )
        # the user's own max_steps or max_time stopped it, not a callback
        steps = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
        steps |= any(
            isinstance(cb, Timer) and cb.time_remaining() is not None and cb.time_remaining() <= 0
            for cb in trainer.callbacks
        )
        if total is not None and 0 < total and done < total and not early and not steps:
            warn_user(
                f"Training stopped after {done} of {total} epochs (a callback asked it to "
                "stop); model.history shows the epochs that ran. Call .train() again to "
                "continue from the current weights.",
                UserWarning,
            )


@contextmanager
def guarded_training(
    model, trainer_kwargs: dict, *, lr: float | None = None, again: str = ".train()"
) -> Iterator[TrainingGuard]:
    """Run a model's training inside the guards described in this module.

    Parameters
    ----------
    model
        The scdl model (its ``module`` holds the weights; ``is_trained_`` is updated).
    trainer_kwargs
        The ``Trainer`` keyword arguments of the run; a :class:`TrainingGuard` is added to
        its ``callbacks`` (in place).
    lr
        The learning rate, named in the divergence message; refused unless a positive
        number (before anything runs).
    again
        The call that continues this training, named when it is interrupted.

    Yields
    ------
    The :class:`TrainingGuard` in use.
    """
    if lr is not None:  # torch's own refusal comes from inside Lightning, naming no argument
        from scdl.data import check_positive_number

        check_positive_number(lr, "lr", meaning="the optimizer's learning rate")
    guard = TrainingGuard(lr=lr)
    safe_checkpoints(trainer_kwargs.get("callbacks"))  # the best save read without pickle
    trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), guard]
    module = model.module
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    # Lightning's teardown moves the module to the CPU; scvi-tools moves it back only after a
    # successful fit, so a failed run on a GPU is put back where it was here
    device = next(module.parameters(), torch.empty(0)).device
    # training sets train mode (TrainingGuard.on_fit_start); scvi-tools' inference methods
    # rely on the eval mode a finished run leaves, so a failed run restores the mode too
    was_training = module.training
    was_trained = bool(getattr(model, "is_trained_", False))
    # what an interrupt puts back with the weights on a model calibrated on them: its fitted
    # attributes (thresholds, statistics) and history, which scvi-tools extends on an interrupt
    kept = None
    if was_trained and getattr(model, "_calibrated_after_training", False):
        kept = {k: copy.deepcopy(v) for k, v in vars(model).items() if _fitted(k)}
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    with quiet_lightning():
        try:
            yield guard
        except (KeyboardInterrupt, SystemExit) as e:
            # Lightning turns Ctrl+C during the epochs into SystemExit; a KeyboardInterrupt
            # outside them (preparing, calibrating) is the user's too
            if guard.interrupted_epoch is None and not isinstance(e, KeyboardInterrupt):
                raise
            module.to(device)
            message = _interrupted(model, guard, before, was_trained, again)
            for key, value in (kept or {}).items():
                setattr(model, key, value)
            raise KeyboardInterrupt(message) from e
        except Exception as e:
            # a model's own check after the epochs (the drug model's calibration) says so too
            if guard.diverged or isinstance(e, TrainingDivergedError) or not _all_finite(module):
                module.load_state_dict(before)
                module.to(device)
                module.train(was_training)
                # a check after the epochs fails once scvi-tools has marked the model trained
                model.is_trained_ = was_trained
                if isinstance(e, TrainingDivergedError):
                    raise
                raise TrainingDivergedError(guard.message(guard.epoch, "its weights")) from e
            module.to(device)  # e.g. out of GPU memory: later calls run where they did
            module.train(was_training)
            raise
        finally:
            if main_thread and sigint is not None:
                # Lightning ignores Ctrl+C for the rest of the process after an interrupt
                signal.signal(signal.SIGINT, sigint)


def _interrupted(model, guard: TrainingGuard, before: dict, was_trained: bool, again: str) -> str:
    """Leave an interrupted model in a state that its flags describe; the message says which.

    A trained model that calibrates on its weights after training (the annotator's Unknown
    thresholds, the drug model's per-drug statistics) gets the weights it had before the call
    back: the calibration belongs to them. Any other trained model keeps the weights reached
    and stays trained (as scvi-tools leaves it), so a further ``train()`` adds to its history.
    A model trained for the first time keeps the weights reached, marked untrained.
    """
    module = model.module  # already back on the device it trained from
    calibrated = bool(getattr(model, "_calibrated_after_training", False))
    of = f" of {guard.max_epochs}" if guard.max_epochs else ""
    if guard.interrupted_epoch is None:
        head = "Training was interrupted outside its epochs (preparing or calibrating). "
    else:
        head = f"Training was interrupted during epoch {guard.interrupted_epoch + 1}{of}. "
    if was_trained and calibrated:
        module.load_state_dict(before)
        module.eval()
        model.is_trained_ = True
        return (
            head + "The model's weights were put back to what they were before this call (its "
            f"calibration belongs to them); call {again} again to train it."
        )
    module.eval()  # the weights reached so far, ready for inference
    model.is_trained_ = was_trained
    if was_trained:
        return (
            head + "The model keeps the weights reached so far and stays trained; call "
            f"{again} again to continue from them."
        )
    use = "" if calibrated else ", or set model.is_trained_ = True to use them as they are"
    return (
        head + "The model keeps the weights reached so far but is marked untrained "
        f"(model.is_trained_ = False). Call {again} again to continue from these weights{use}."
    )


def _fitted(name: str) -> bool:
    """A model attribute set by fitting (scikit-learn's trailing underscore), not data."""
    return name.endswith("_") and not name.startswith("_") and name != "is_trained_"
