"""What every model's ``.train()`` settles before Lightning starts (``plan_training``)."""

from __future__ import annotations

import numpy as np
import pytest

from scdl.models._training import plan_training


def test_plan_training_defaults_and_ddp():
    kwargs = {"strategy": "ddp"}
    epochs, batch = plan_training(
        1_000, None, batch_size=128, train_size=None, trainer_kwargs=kwargs
    )
    assert (epochs, batch) == (400, 128)  # 4,000 steps of 128 on 1,000 cells, capped at 400
    assert kwargs == {
        "strategy": "ddp_find_unused_parameters_true",
        "check_val_every_n_epoch": 20,
        "log_every_n_steps": 7,  # 900 training cells: 7 minibatches of 128 an epoch
    }
    # every DDP launcher by name allows unused parameters (Lightning fails on them otherwise)
    for name in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
        kwargs = {"strategy": name}
        plan = plan_training(10_000, 7, batch_size=64, train_size=1.0, trainer_kwargs=kwargs)
        assert plan == (7, 64)
        # no validation
        assert kwargs == {
            "strategy": f"{name}_find_unused_parameters_true",
            "log_every_n_steps": 10,
        }
    kwargs = {"strategy": "ddp_find_unused_parameters_false"}  # the user's explicit choice
    plan_training(10_000, 7, batch_size=64, train_size=1.0, trainer_kwargs=kwargs, devices=2)
    assert kwargs["strategy"] == "ddp_find_unused_parameters_false"
    # several devices and no strategy: Lightning chose plain DDP, which failed at the first
    # step on the unused parameters (`tl.integrate(devices=2)`); one device: no strategy
    for devices in (2, -1, "0,1", [0, 1], "2", np.int64(3), np.array([0, 1]), (0, 1)):
        for given in ({}, {"strategy": "auto"}):
            kwargs = dict(given)
            plan_training(
                10_000, 7, batch_size=64, train_size=1.0, trainer_kwargs=kwargs, devices=devices
            )
            assert kwargs["strategy"] == "ddp_find_unused_parameters_true", devices
    for devices in (None, "auto", 1, [0], "1", "0,", True):
        kwargs = {}
        plan_training(
            10_000, 7, batch_size=64, train_size=1.0, trainer_kwargs=kwargs, devices=devices
        )
        assert "strategy" not in kwargs, devices
    kwargs = {"num_nodes": 2}  # one device on each of two machines: DDP as well
    plan_training(10_000, 7, batch_size=64, train_size=1.0, trainer_kwargs=kwargs, devices=1)
    assert kwargs["strategy"] == "ddp_find_unused_parameters_true"


@pytest.mark.parametrize(
    ("epochs", "batch", "error"), [(0, 128, ValueError), (5, 1, ValueError), (5, 2.5, TypeError)]
)
def test_plan_training_refuses_impossible_values(epochs, batch, error):
    with pytest.raises(error, match="max_epochs|batch_size"):
        plan_training(1_000, epochs, batch_size=batch, train_size=0.9, trainer_kwargs={})


def test_batch_larger_than_the_data_is_clamped_with_a_warning():
    # scvi-tools trains a dataset smaller than a minibatch; so does scdl, in one minibatch
    with pytest.warns(UserWarning, match="fewer than batch_size=5000"):
        epochs, batch = plan_training(1_000, 5, batch_size=5_000, train_size=0.9, trainer_kwargs={})
    assert (epochs, batch) == (5, 1_000)


def test_train_prints_no_lightning_start_up_lines(kang, capfd):
    """A notebook user sees the progress bar and warnings, not Lightning's accelerator lines."""
    import logging
    import warnings

    from scdl.models import VAE

    adata = kang[:300].copy()
    VAE.setup_anndata(adata)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VAE(adata).train(max_epochs=1, enable_progress_bar=False)
    # Lightning 2.6 under torch >= 2.13 warns about its own use of LeafSpec: not the user's
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    out, err = capfd.readouterr()
    for line in ("GPU available", "TPU available", "Tip:", "`Trainer.fit` stopped"):
        assert line not in out + err
    assert rank_zero.level == level  # the user's own logging settings are put back


@pytest.mark.parametrize("model_cls", ["VAE", "ContrastiveVAE"])
def test_kl_weight_warms_up_over_half_the_epochs(kang, model_cls):
    """Both VAE-family models ramp the KL weight over half of ``max_epochs`` unless told."""
    import scdl.models

    cls = getattr(scdl.models, model_cls)
    adata = kang[::8].copy()  # ~200 cells of every sample
    if model_cls == "VAE":
        cls.setup_anndata(adata, batch_key="sample")
        groups = {}
    else:
        cls.setup_anndata(adata)
        groups = {"groupby": "condition", "background": "ctrl"}
    train = {"max_epochs": 4, "train_size": 1.0, "enable_progress_bar": False, **groups}
    model = cls(adata)
    model.train(**train)
    weights = model.history["kl_weight"].iloc[:, 0].to_numpy()
    assert weights[0] < weights[1] < 1.0 and weights[2] == weights[3] == 1.0  # over 2 epochs
    model = cls(adata)
    model.train(**train, plan_kwargs={"n_epochs_kl_warmup": 8})  # the user's choice wins
    assert model.history["kl_weight"].iloc[-1, 0] < 1.0


@pytest.mark.parametrize("model_cls", ["VAE", "ContrastiveVAE"])
def test_per_step_logging_is_scvi_tools_and_trains_the_same_weights(kang, model_cls):
    """``plan_kwargs={"on_step": True}`` logs every step's loss as scvi-tools names it
    (``train_loss_step``) beside the epoch values under their usual names (which ``tl`` and
    ``pl`` read); the weights are the same."""
    import scvi

    import scdl.models

    cls = getattr(scdl.models, model_cls)
    adata = kang[::8].copy()
    cls.setup_anndata(adata)
    groups = {} if model_cls == "VAE" else {"groupby": "condition", "background": "ctrl"}
    latents, histories = [], []
    for plan in ({}, {"on_step": True}):
        scvi.settings.seed = 0
        model = cls(adata)
        model.train(
            max_epochs=2, batch_size=64, enable_progress_bar=False, plan_kwargs=plan, **groups
        )
        latents.append(model.get_latent_representation())
        histories.append(model.history)
    assert "train_loss_step" not in histories[0] and "elbo_train" in histories[0]
    n_steps = 2 * int(np.ceil(0.9 * adata.n_obs / 64))
    assert len(histories[1]["train_loss_step"]) == n_steps
    assert set(histories[1]) == {*histories[0], "train_loss_step"}
    np.testing.assert_allclose(
        histories[1]["train_loss"].to_numpy(dtype=float).ravel(),
        histories[0]["train_loss"].to_numpy(dtype=float).ravel(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(latents[1], latents[0], atol=1e-5)
    if model_cls == "VAE":  # the tl step and the figure read the epoch names
        import matplotlib

        matplotlib.use("Agg")
        import scdl

        data = kang[::8].copy()
        step = {"plan_kwargs": {"on_step": True}}
        scdl.tl.integrate(data, max_epochs=2, progress_bar=False, train_kwargs=step)
        assert len(data.uns["X_scdl"]["history"]["elbo_train"]) == 2
        scdl.pl.training_history(data, show=False)


def test_watched_validation_runs_every_epoch():
    """Early stopping counts its patience in validation passes and a plateau schedule needs one
    each epoch: as scvi-tools' Trainer, validate every epoch then (the user's choice kept)."""
    for options in (
        {"early_stopping": True},
        {"plan_kwargs": {"reduce_lr_on_plateau": True}},
        {"trainer_kwargs": {"early_stopping": True}},
    ):
        kwargs = dict(options.pop("trainer_kwargs", {}))
        plan_training(1_000, 200, batch_size=128, train_size=0.9, trainer_kwargs=kwargs, **options)
        assert kwargs["check_val_every_n_epoch"] == 1, options
    kwargs = {"check_val_every_n_epoch": 5}
    plan_training(
        1_000, 200, batch_size=128, train_size=0.9, trainer_kwargs=kwargs, early_stopping=True
    )
    assert kwargs["check_val_every_n_epoch"] == 5
    # a user's checkpoint that keeps the best by a monitored value watches each pass too;
    # one that keeps the last does not
    from lightning.pytorch.callbacks import ModelCheckpoint
    from scvi.train import SaveCheckpoint

    for callback, every in ((SaveCheckpoint(), 1), (ModelCheckpoint(), 10)):
        kwargs = {"callbacks": [callback]}
        plan_training(1_000, 200, batch_size=128, train_size=0.9, trainer_kwargs=kwargs)
        assert kwargs["check_val_every_n_epoch"] == every, callback


def test_a_users_logger_keeps_the_curves_and_the_tools_still_write(kang, tmp_path):
    """scvi-tools leaves model.history empty under a user's logger: tl.integrate records the
    epochs from the trainer, and the plot names where the curves went; pretrain() takes a
    logger as train() does."""
    from lightning.pytorch.loggers import CSVLogger

    import scdl

    adata = kang[::8].copy()
    vae = scdl.tl.integrate(
        adata, max_epochs=2, progress_bar=False, train_kwargs={"logger": CSVLogger(tmp_path)}
    )
    with pytest.raises(ValueError, match="history is empty: it was trained with a logger"):
        scdl.pl.training_history(vae, show=False)
    assert adata.uns["X_scdl"]["params"]["max_epochs"] == 2
    assert adata.obsm["X_scdl"].shape == (adata.n_obs, 10)
    with pytest.raises(ValueError, match="logger of your own"):
        scdl.pl.training_history(adata, show=False)

    scdl.models.CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(adata)
    model.pretrain(max_epochs=1, batch_size=64, logger=CSVLogger(tmp_path, name="pretrain"))
    assert model.pretrained_epochs_ == 1


def test_early_stopping_stops_after_its_patience_in_epochs(kang):
    from scdl.models import VAE

    adata = kang[::5].copy()
    VAE.setup_anndata(adata, batch_key="sample")
    model = VAE(adata)
    # nothing counts as an improvement: stops after the first epoch and 3 more
    model.train(
        max_epochs=60,
        early_stopping=True,
        early_stopping_patience=3,
        early_stopping_min_delta=1e9,
        enable_progress_bar=False,
    )
    assert len(model.history["elbo_validation"]) == 4
    model = VAE(adata)
    model.train(
        max_epochs=6,
        plan_kwargs={"reduce_lr_on_plateau": True, "lr_patience": 1},
        enable_progress_bar=False,
    )
    assert len(model.history["elbo_validation"]) == 6


def test_annotator_early_stopping_watches_its_validation_loss(kang):
    from scdl.models import CellTypeTransformer

    adata = kang[::4].copy()
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTypeTransformer(adata)
    model.train(
        max_epochs=40,
        early_stopping=True,
        early_stopping_patience=2,
        early_stopping_min_delta=1e9,
        train_size=None,
        enable_progress_bar=False,
    )
    assert len(model.history["validation_loss"]) == 3  # the first epoch and 2 more
    assert model.predict(adata).shape == (adata.n_obs,)


@pytest.mark.parametrize("model_cls", ["VAE", "CellTypeTransformer"])
def test_model_loaded_without_data_names_the_fix(kang, tmp_path, model_cls):
    import scdl.models

    cls = getattr(scdl.models, model_cls)
    adata = kang[::8].copy()
    cls.setup_anndata(adata, **({"labels_key": "cell_type"} if model_cls != "VAE" else {}))
    model = cls(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m")
    with pytest.raises(ValueError, match=r"loaded without data.*load\(dir_path, adata="):
        loaded.train(max_epochs=1)
    with pytest.raises(ValueError, match="no cells to show the setup of"):
        loaded.view_anndata_setup()  # scvi-tools: 'NoneType' object has no attribute ...
    if model_cls == "VAE":
        with pytest.raises(ValueError, match="pass them as `adata=`"):
            loaded.get_latent_representation()
        assert loaded.get_latent_representation(adata).shape == (adata.n_obs, 10)


def test_train_options_as_scvi_tools_takes_them(kang):
    """Early stopping without validation cells is refused before training (scvi-tools' rule);
    a typo in datasplitter_kwargs is refused as scvi-tools' loader refuses it; the user's
    datasplitter_kwargs reach the contrastive splitter; the annotator takes
    shuffle_set_split; stopping at max_steps is not reported as a callback's stop."""
    import warnings

    import numpy as np

    from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE

    adata = kang[::8].copy()
    VAE.setup_anndata(adata, batch_key="sample")
    model = VAE(adata)
    with pytest.raises(ValueError, match="train_size=1.0 leave none to validate"):
        model.train(max_epochs=2, early_stopping=True, train_size=1.0)
    assert not model.is_trained
    # fewer than 10 cells at the default 0.9 leave none either: refused before training, not
    # after Lightning's first epoch
    few = kang[:8].copy()
    VAE.setup_anndata(few)
    tiny = VAE(few)
    for kwargs in ({"early_stopping": True}, {"plan_kwargs": {"reduce_lr_on_plateau": True}}):
        with pytest.raises(ValueError, match="8 cells at train_size=0.9 leave none"):
            tiny.train(max_epochs=2, **kwargs)
    assert not tiny.is_trained
    with pytest.raises(TypeError, match=r"\['dropp_last'\]"):
        model.train(max_epochs=1, datasplitter_kwargs={"dropp_last": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=5, max_steps=2, enable_progress_bar=False)
    assert not [w for w in caught if "a callback asked it to stop" in str(w.message)]
    assert model.trainer.global_step == 2

    ContrastiveVAE.setup_anndata(adata)
    cvae = ContrastiveVAE(adata)
    with pytest.raises(TypeError, match=r"\['dropp_last'\]"):  # it reaches the loader
        cvae.train(groupby="condition", background="ctrl", datasplitter_kwargs={"dropp_last": True})
    cvae.train(
        groupby="condition",
        background="ctrl",
        max_epochs=1,
        datasplitter_kwargs={"pin_memory": False},
        enable_progress_bar=False,
    )
    assert cvae.is_trained

    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    ann = CellTypeTransformer(adata)
    ann.train(max_epochs=1, shuffle_set_split=False, enable_progress_bar=False)
    n_val = len(ann.validation_indices)  # scvi-tools' unshuffled split: validation first
    np.testing.assert_array_equal(ann.validation_indices, np.arange(n_val))
    np.testing.assert_array_equal(ann.train_indices, np.arange(n_val, adata.n_obs))


def test_no_validation_cell_is_refused_before_training_however_the_split_is_given(kang):
    """scvi-tools refuses early stopping without validation cells up front; so does scdl when
    they are missing by ``validation_size=0`` or by contrastiveVI's split of each group on its
    own (9 + 9 cells leave none, though 18 at 0.9 would leave one). A learning rate of 0 or
    below is refused naming ``lr``, before training (torch's refusal names no argument)."""
    from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE

    adata = kang[::8].copy()
    VAE.setup_anndata(adata)
    model = VAE(adata)
    with pytest.raises(ValueError, match="validation_size=0.0 leave none to validate"):
        model.train(max_epochs=1, early_stopping=True, validation_size=0.0)
    for lr in (-1e-3, 0.0):
        with pytest.raises(ValueError, match="lr must be a positive number"):
            model.train(max_epochs=1, lr=lr)
    assert not model.is_trained

    small = kang[
        np.r_[
            np.flatnonzero(kang.obs["condition"] == "ctrl")[:9],
            np.flatnonzero(kang.obs["condition"] == "stim")[:9],
        ]
    ].copy()
    ContrastiveVAE.setup_anndata(small)
    cvae = ContrastiveVAE(small)
    with pytest.raises(ValueError, match=r"split by group.*groups of 9, 9 cells"):
        cvae.train(groupby="condition", background="ctrl", max_epochs=1, early_stopping=True)
    assert not cvae.is_trained

    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    ann = CellTypeTransformer(adata)
    # the linear head's strength, by its own name (scikit-learn's error named `C`), and the
    # saved value left as it was by a refused call
    for bad in ({"linear_C": 0.0}, {"linear_C": -1.0}, {"lr": 0.0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive number"):
            ann.train(max_epochs=1, **bad)
        assert ann.linear_C_ is None and not ann.is_trained
    with pytest.warns(UserWarning, match="leave `validation_size` unset"):
        ann.train(max_epochs=1, validation_size=0.0, enable_progress_bar=False)


def test_logging_interval_follows_the_batches_lightning_runs():
    """``log_every_n_steps`` no longer than the epoch Lightning runs: with
    ``limit_train_batches`` that is fewer minibatches than the data holds."""
    for limit, expected in ((1, 1), (0.25, 1), (3, 3)):
        kwargs = {"limit_train_batches": limit}
        plan_training(1_000, 5, batch_size=128, train_size=1.0, trainer_kwargs=kwargs)
        assert kwargs["log_every_n_steps"] == expected, limit
    with pytest.warns(UserWarning, match="Only 300 of the 300 lines train"):
        plan_training(300, 5, batch_size=1_000, train_size=1.0, trainer_kwargs={}, unit="lines")


def test_vae_trains_across_two_cpu_processes_with_validation(kang, forked_processes_on_one_thread):
    """CPU multi-process training (gloo) failed at the first validation with the default VAE:
    its extra metric (batch_mmd), logged with sync_dist in inference mode, was updated in
    place by the epoch-end sync ("Inplace update to inference tensor"). The processes are
    forked, as Lightning's ``ddp_notebook`` does in Jupyter (spawned ones import torch and
    scvi-tools again, ~20 s): the failure was in the metrics' sync, which both launch alike."""
    import scvi

    import scdl

    adata = kang[np.random.default_rng(0).choice(kang.n_obs, 300, replace=False)].copy()
    scdl.models.VAE.setup_anndata(adata, batch_key="sample")
    model = scdl.models.VAE(adata)
    scvi.settings.seed = 0
    model.train(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", enable_progress_bar=False
    )
    assert {"batch_mmd_validation", "elbo_validation"} <= set(model.history)
    validation = model.history["elbo_validation"].to_numpy(dtype=float).ravel()
    assert np.isfinite(validation).any()


def test_worker_options_in_training_are_said_to_do_nothing(kang):
    """scvi-tools' splitter starts loader workers for num_workers; scdl's in-memory loader
    has none to start: accepted, as before, and said (it was silent)."""
    import scdl

    adata = kang[:200].copy()
    scdl.models.VAE.setup_anndata(adata)
    model = scdl.models.VAE(adata)
    with pytest.warns(UserWarning, match=r"'num_workers': 2.*have no effect in training"):
        model.train(max_epochs=1, enable_progress_bar=False, datasplitter_kwargs={"num_workers": 2})
    assert "elbo_train" in model.history
