"""scvi-tools' :class:`~scvi.train.SaveCheckpoint` for scdl models.

The callback saves each best epoch with the model's own ``save`` (scdl: ``config.json`` +
``model.safetensors``), but reads the best one back (``load_best_on_end``, and after a failed
run with ``check_nan_gradients``) from scvi-tools' pickled ``model.pt``, which an scdl save does
not hold: training ran to the end and then failed. :func:`safe_checkpoints` switches such
callbacks to :class:`SafeSaveCheckpoint`, which reads the save with the model class's own
``load`` (no pickle), and never reads a ``model.pt``.
"""

from __future__ import annotations

from pathlib import Path

from scvi.train import SaveCheckpoint

from scdl._warnings import warn_user


class SafeSaveCheckpoint(SaveCheckpoint):
    """:class:`~scvi.train.SaveCheckpoint` that reads an scdl model's best save safely."""

    def _best_state(self, trainer) -> dict | None:
        """The best save's weights, read from its ``config.json``; ``None`` when there is none.

        A ``model.pt`` in the same folder (left by an earlier scvi-tools run with the same
        ``dirpath`` and ``filename``) is never read: scvi-tools reads it with pickle, which can
        run code, and its weights are not this run's.
        """
        path = Path(self.best_model_path) if self.best_model_path else None
        if path is None or not (path / "config.json").is_file():
            return None
        model = trainer._model  # where scvi-tools' SaveCheckpoint itself finds the model
        # read on the CPU: load_state_dict copies it to wherever the trained module is, and
        # a load on the default device would put a second model on the GPU (or start CUDA in
        # a run on the CPU)
        return type(model).load(path, adata=False, accelerator="cpu").module.state_dict()

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.load_best_on_end:
            return
        state = self._best_state(trainer)
        if state is None:
            warn_user(
                "SaveCheckpoint(load_best_on_end=True) found no best save "
                f"({self.best_model_path or 'none was written'}); the last epoch's weights are "
                "kept.",
                UserWarning,
            )
            return
        pl_module.module.load_state_dict(state)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt) or not self.check_nan_gradients:
            return
        state = self._best_state(trainer)
        if state is None:  # nothing to restore: the exception goes on to the user
            return
        trainer.should_stop = True
        pl_module.module.load_state_dict(state)
        warn_user(
            f"Training failed ({type(exception).__name__}); the weights of the best checkpoint, "
            f"{self.best_model_path}, were loaded.",
            UserWarning,
        )


def safe_checkpoints(callbacks) -> None:
    """Switch scvi-tools' ``SaveCheckpoint`` callbacks among ``callbacks`` (in place) to
    :class:`SafeSaveCheckpoint`: same settings and state, a safe read of the best save."""
    for callback in callbacks or []:
        if type(callback) is SaveCheckpoint:
            callback.__class__ = SafeSaveCheckpoint  # a subclass adding no state
