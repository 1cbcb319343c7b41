"""The recipe shared by the tools that train a model: seed, register, train, check, summarise."""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np

from scdl._rng import SEED_ENV, python_numpy_env_kept

#: where Lightning logs "Seed set to ..." when scvi-tools' seed is set
_SEED_LOGGER = "lightning.fabric.utilities.seed"


def train_model(
    model_cls,
    train_adata,
    *,
    random_state: int,
    setup_kwargs: dict,
    model_kwargs: dict,
    train_kwargs: dict,
):
    """Seed scvi-tools, register ``train_adata``, build the model and train it.

    ``random_state`` seeds this training only (as scanpy's ``random_state``): the user's
    ``scvi.settings.seed`` and the global random states are restored afterwards.
    Returns the trained model and the training time in seconds.
    """
    with _seeded(random_state):
        with warnings.catch_warnings():  # the tool has said it for the genes it chose
            warnings.filterwarnings(
                "ignore", message=".* cells have no counts", category=UserWarning
            )
            # and for all the genes (a normalised total is the whole profile's)
            warnings.filterwarnings("ignore", message=".*rounded CPM/TPM", category=UserWarning)
            model_cls.setup_anndata(train_adata, **setup_kwargs)
        # train_adata is the tool's own copy: its registration (scvi-tools keeps it for the
        # session) goes with the model, or now when the model cannot be built
        try:
            model = model_cls(train_adata, **model_kwargs)
        except BaseException:
            model_cls._release_adata(train_adata)
            raise
        model._owns_adata(train_adata)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # its advice names train_size, which tools take in
            warnings.filterwarnings(  # train_kwargs; a cell or two moved is no news
                "ignore",
                message=".*moved from training set to validation set",
                category=UserWarning,
            )
            try:
                model.train(**train_kwargs)
            except KeyboardInterrupt as e:
                # the model's own advice (call .train() again) names a model the tool never
                # returned: the AnnData is as it was, so the tool is run again
                what = str(e).split(". ")[0] or "Training was interrupted"
                raise KeyboardInterrupt(
                    f"{what}. adata is unchanged and no model was returned: run the tool again."
                ) from e
        return model, time.perf_counter() - t0


@contextlib.contextmanager
def _seeded(seed: int):
    """``scvi.settings.seed = seed`` for the duration, then the session's seed and the
    Python, numpy and torch random states as they were: scvi-tools' setter re-seeds every
    generator (Lightning's ``seed_everything``), which replaced a seed the user had set."""
    import scvi
    import torch

    from scdl.train import quiet_loggers

    cudnn = torch.backends.cudnn
    saved_seed, flags = scvi.settings.seed, (cudnn.deterministic, cudnn.benchmark)
    grad = torch.is_grad_enabled()  # Lightning's fit turns autograd on
    # not is_available(): reading a GPU's generator starts CUDA, which a CPU run on a GPU
    # machine must not do (Lightning's fork-based strategies refuse to start after it)
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    with (
        torch.random.fork_rng(devices=gpus),  # torch's own save/restore of its generators
        python_numpy_env_kept((*SEED_ENV, "XLA_FLAGS")),
    ):
        try:
            with quiet_loggers(_SEED_LOGGER):  # the user set no seed: the tool did
                scvi.settings.seed = seed
            yield
        finally:
            with quiet_loggers(_SEED_LOGGER):  # (re-seeds; the states restored undo that)
                scvi.settings.seed = saved_seed
            cudnn.deterministic, cudnn.benchmark = flags
            torch.set_grad_enabled(grad)


def check_finite(*latents: np.ndarray) -> None:
    """Refuse latent values from a diverged training run (before anything is written)."""
    if not all(np.isfinite(x).all() for x in latents):
        raise RuntimeError(
            "Training diverged (non-finite latent values). Lower the learning rate "
            "(train_kwargs={'lr': 1e-4}) or check the input counts."
        )


def epochs_trained(model) -> int:
    """Epochs the training ran: the length of the ELBO history, or the trainer's count when a
    logger of the user's (``logger=`` in ``train_kwargs``) kept the curves out of
    ``model.history`` (scvi-tools leaves it empty then), or in a process of rank > 0 (a
    multi-task Slurm step), where scvi-tools leaves it ``None``."""
    if "elbo_train" in (model.history or {}):
        return int(model.history["elbo_train"].shape[0])
    return int(getattr(getattr(model, "trainer", None), "current_epoch", 0))


def training_summary(model, train_time: float) -> dict:
    """``history`` (per-epoch ELBO curves as plain arrays; empty when a logger of the user's
    took them) and ``train_time_s`` for ``uns``."""
    history = {}
    for key in ("elbo_train", "elbo_validation", "reconstruction_loss_train", "kl_local_train"):
        if key in (model.history or {}):
            df = model.history[key]
            history[key] = df.iloc[:, 0].to_numpy(dtype=float)
            history[f"{key}_epoch"] = df.index.to_numpy(dtype=float)
    return {"history": history, "train_time_s": float(train_time)}
