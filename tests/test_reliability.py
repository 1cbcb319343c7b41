"""Training that diverges or is interrupted leaves the model in a known, reported state."""

from __future__ import annotations

import signal
import warnings

import numpy as np
import pytest
import torch
from conftest import session_part
from lightning.pytorch.callbacks import Callback

import scdl
from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE
from scdl.train import TrainingDivergedError

FAST = {"batch_size": 64, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def cells():
    kang = scdl.datasets.kang_pbmc()
    adata = kang[np.sort(np.random.default_rng(0).choice(kang.n_obs, 300, replace=False))].copy()
    return adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()


@pytest.fixture
def seeded():
    """scvi-tools' seed 0 for one test (its default, None, draws the weights afresh)."""
    import scvi

    before = scvi.settings.seed
    scvi.settings.seed = 0
    yield
    scvi.settings.seed = before


def _model(name, cells):
    adata = cells.copy()
    if name == "VAE":
        VAE.setup_anndata(adata, batch_key="sample")
        return VAE(adata), {}
    if name == "ContrastiveVAE":
        ContrastiveVAE.setup_anndata(adata)
        return ContrastiveVAE(adata), {"groupby": "condition", "background": "ctrl"}
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    return CellTypeTransformer(adata), {}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["VAE", "ContrastiveVAE", "CellTypeTransformer"])
def test_divergence_stops_with_clear_error_and_restores_weights(cells, name):
    model, kw = _model(name, cells)
    before = _weights(model)
    with pytest.raises(TrainingDivergedError, match=r"diverged at epoch 1 of 3.*lr=10000"):
        model.train(max_epochs=3, lr=1e4, **kw, **FAST)
    assert not model.is_trained_
    assert _same(_weights(model), before)  # no NaN weights left behind


def test_divergence_of_a_trained_model_keeps_its_trained_weights(cells):
    model, _ = _model("VAE", cells)
    model.train(max_epochs=2, **FAST)
    trained = _weights(model)
    z = model.get_latent_representation()
    with pytest.raises(FloatingPointError, match="Lower lr=10000"):
        model.train(max_epochs=2, lr=1e4, **FAST)
    assert model.is_trained_ and _same(_weights(model), trained)
    np.testing.assert_array_equal(model.get_latent_representation(), z)


def test_tl_integrate_reports_divergence_and_writes_nothing(cells):
    adata = cells.copy()
    with pytest.raises(TrainingDivergedError, match="lr="):
        scdl.tl.integrate(adata, max_epochs=2, progress_bar=False, train_kwargs={"lr": 1e4})
    assert "X_scdl" not in adata.obsm and "X_scdl" not in adata.uns


class _CtrlC(Callback):
    """What pressing Ctrl+C during the second epoch does."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", ["VAE", "CellTypeTransformer"])
def test_interrupted_training_is_reported_and_can_resume(cells, name):
    model, kw = _model(name, cells)
    before = _weights(model)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted during epoch 2 of 5.*\.train\(\)"):
        model.train(max_epochs=5, callbacks=[_CtrlC()], **kw, **FAST)
    assert not model.is_trained_  # not silently half-trained
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl+C works again afterwards
    reached = _weights(model)
    assert not _same(reached, before)  # it keeps what it learnt so far
    model.train(max_epochs=2, **kw, **FAST)  # ... and continues from there
    assert model.is_trained_


@pytest.mark.parametrize("name", ["VAE", "CellTypeTransformer"])
def test_an_interrupted_further_training_leaves_a_trained_model_consistent(cells, name):
    """A trained model trained further and interrupted was marked untrained: it refused
    inference, and the next ``train()`` replaced its history (scvi-tools replaces it for an
    untrained model). A VAE keeps the weights reached and stays trained; an annotator, whose
    Unknown thresholds belong to its weights, gets its weights before the call back."""
    model, kw = _model(name, cells)
    model.train(max_epochs=3, **kw, **FAST)
    before = _weights(model)
    epochs = len(model.history["train_loss"])
    expect = "stays trained" if name == "VAE" else "put back to what they were"
    with pytest.raises(KeyboardInterrupt, match=expect):
        model.train(max_epochs=5, callbacks=[_CtrlC()], **kw, **FAST)
    assert model.is_trained_
    assert _same(_weights(model), before) == (name != "VAE")
    if name != "VAE":  # the history describes the weights put back
        assert len(model.history["train_loss"]) == epochs
    model.predict() if name != "VAE" else model.get_latent_representation()
    model.train(max_epochs=2, **kw, **FAST)
    assert len(model.history["train_loss"]) > epochs  # added to, not replaced


def test_an_interrupt_while_calibrating_puts_the_annotator_back(cells, monkeypatch):
    """The Unknown thresholds are set after the epochs; an interrupt there left new weights
    beside old and new thresholds, marked trained, with an empty message."""
    model, kw = _model("CellTypeTransformer", cells)
    model.train(max_epochs=2, **FAST)
    before, threshold = _weights(model), model.cluster_threshold_

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "_calibrate_after_training", interrupted)
    with pytest.raises(KeyboardInterrupt, match="outside its epochs.*put back"):
        model.train(max_epochs=2, **FAST)
    assert model.is_trained_ and _same(_weights(model), before)
    assert model.cluster_threshold_ == threshold


def test_an_interrupted_tool_says_to_run_it_again(cells):
    """tl.integrate returns no model when interrupted: the model's advice (call .train()
    again) named a model the user never received."""
    adata = cells.copy()
    with pytest.raises(KeyboardInterrupt, match="adata is unchanged.*run the tool again"):
        scdl.tl.integrate(
            adata, max_epochs=5, progress_bar=False, train_kwargs={"callbacks": [_CtrlC()]}
        )
    assert "X_scdl" not in adata.obsm and "X_scdl" not in adata.uns


def test_the_users_own_time_limit_is_not_called_a_callbacks_stop(cells):
    model, _ = _model("VAE", cells)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=400, max_time={"seconds": 1}, **FAST)
    assert len(model.history["elbo_train"]) < 400
    assert not [w for w in caught if "a callback asked it to stop" in str(w.message)]


def test_a_refused_training_call_keeps_a_pretrained_annotators_provenance():
    import torch

    # loading builds the network (its initial weights are replaced by the saved ones): a
    # user's seeded torch stream continues as if nothing was drawn (a model built after
    # loading the shipped annotator had other initial weights)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    model = scdl.pretrained.load("pbmc_kang2018")
    assert torch.equal(torch.rand(4), expected)
    sha = model.source_sha256_
    assert sha
    with pytest.raises(ValueError, match="unknown_rate"):
        model.train(unknown_rate=0.7)
    assert model.source_sha256_ == sha


class _Halt(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            trainer.should_stop = True


def test_stopped_training_warns_and_history_shows_it(cells):
    model, _ = _model("VAE", cells)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=6, callbacks=[_Halt()], **FAST)
    assert any("stopped after 2 of 6 epochs" in str(w.message) for w in caught)
    assert len(model.history["elbo_train"]) == 2


def test_tl_seed_is_local_as_scanpys_random_state(cells):
    """``random_state`` seeds the tool's work only: the user's ``scvi.settings.seed`` and the
    global Python / numpy / torch streams continue as before the call (scvi-tools' seed setter
    re-seeds every generator; inference after training and a model's weight initialisation
    draw from torch's)."""
    import random

    import scvi

    before = scvi.settings.seed
    try:
        scvi.settings.seed = 7
        np.random.random(3)  # streams partly consumed by the user's own work
        torch.rand(3)
        random.random()
        expected = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
        adata = cells.copy()
        scdl.tl.integrate(adata, max_epochs=1, progress_bar=False, batch_size=64)
        scdl.tl.cluster(adata, use_rep="X_scdl", resolution="auto")
        assert scvi.settings.seed == 7
        assert random.getstate() == expected[0]
        np.testing.assert_array_equal(np.random.get_state()[1], expected[1])
        assert torch.equal(torch.get_rng_state(), expected[2])
    finally:
        scvi.settings.seed = before


@pytest.mark.parametrize("name", ["VAE", "ContrastiveVAE", "CellTypeTransformer"])
def test_save_checkpoint_loads_the_best_epoch_from_an_scdl_save(cells, name, tmp_path, seeded):
    """scvi-tools' SaveCheckpoint saves with the model's own save; load_best_on_end read a
    pickled model.pt back and failed after the last epoch. The best save (here the worst loss:
    mode="max", not the last epoch at this seed) is read with the class's own safe load."""
    from scvi.train import SaveCheckpoint

    model, kwargs = _model(name, cells)
    checkpoint = SaveCheckpoint(
        dirpath=str(tmp_path), monitor="validation_loss", mode="max", load_best_on_end=True
    )
    model.train(
        max_epochs=4,
        callbacks=[checkpoint],
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
        **kwargs,
    )
    assert "epoch=3" not in checkpoint.best_model_path  # an earlier epoch was the "best"
    best = dict(type(model).load(checkpoint.best_model_path, adata=False).module.named_parameters())
    # the trained weights (after training the annotator computes its calibration buffers and
    # refits its linear head, on these weights)
    for key, value in model.module.named_parameters():
        if not key.startswith("linear."):
            assert torch.equal(value.detach().cpu(), best[key].detach()), key


class _Planted:
    """A pickle that creates a file when it is read: stands for a crafted ``model.pt``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def test_save_checkpoint_never_reads_a_model_pt_left_in_its_folder(cells, tmp_path):
    """A checkpoint folder reused from an scvi-tools run (same dirpath and filename) holds a
    pickled model.pt beside scdl's save: the best weights come from scdl's own files, and the
    pickle (which can run code) is never read."""
    from safetensors.torch import load_file
    from scvi.train import SaveCheckpoint

    marker = tmp_path / "pickle_was_read"
    (tmp_path / "ckpt" / "best").mkdir(parents=True)
    torch.save({"attr_dict": _Planted(marker)}, tmp_path / "ckpt" / "best" / "model.pt")
    model, _ = _model("VAE", cells)
    checkpoint = SaveCheckpoint(
        dirpath=str(tmp_path / "ckpt"), filename="best", mode="max", load_best_on_end=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's "directory exists and is not empty"
        model.train(max_epochs=3, callbacks=[checkpoint], **FAST)
    assert not marker.exists()
    best = load_file(str(tmp_path / "ckpt" / "best" / "model.safetensors"))
    assert _same({k: v.cpu() for k, v in model.module.state_dict().items()}, best)


def test_steps_keep_the_users_grad_mode_and_run_under_a_float64_default(cells):
    """A notebook that turned autograd off keeps it off after a training step (Lightning's fit
    turns it on); one whose torch default dtype is float64 (set for other work) annotates with
    a float32 model, loaded before or after (scdl's own tensors took the default dtype)."""
    adata = cells.copy()
    with torch.no_grad():
        scdl.tl.integrate(adata, max_epochs=1, progress_bar=False, batch_size=64)
        assert not torch.is_grad_enabled()
    reference = cells.copy()
    CellTypeTransformer.setup_anndata(reference, labels_key="cell_type")
    model = CellTypeTransformer(reference)
    model.train(max_epochs=2, **FAST)
    expected, _ = model.annotate_cells(cells)
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        calls, _ = model.annotate_cells(cells)
        assert (calls["label"] == expected["label"]).all()
        pretrained = scdl.pretrained.load("pbmc_kang2018")  # built under float64, saved in 32
        assert next(pretrained.module.parameters()).dtype == torch.float32
        calls, _ = pretrained.annotate_cells(scdl.datasets.kang_pbmc_heldout()[:200])
        assert len(calls) == 200
    finally:
        torch.set_default_dtype(before)


def test_pandas_future_string_inference_raises_no_warning_of_ours():
    """pandas 2's migration option to pandas 3 (``future.infer_string``): scdl's own lookups
    inferred a dtype from object pandas objects, a FutureWarning that a strict notebook turns
    into an error after the whole training."""
    import pandas as pd

    if not hasattr(pd.options, "future") or not hasattr(pd.options.future, "infer_string"):
        pytest.skip("this pandas has no future.infer_string")
    with pd.option_context("future.infer_string", True):
        adata = scdl.datasets.kang_pbmc()[:300].copy()  # read with the option on
        adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
        model = scdl.tl.integrate(
            adata, batch_key="sample", max_epochs=1, progress_bar=False, batch_size=64
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Dtype inference on a pandas object")
            model.get_latent_representation()
            scdl.pretrained.load("pbmc_kang2018").annotate_cells(scdl.datasets.kang_pbmc_heldout())


def test_steps_keep_the_users_torch_thread_count(fresh_session):
    """scanpy's neighbours (numba) set the OpenMP thread count torch shares to every core: the
    steps put the user's count back, or the next training of the session would sum in another
    order than the first (a fresh process: numba's first parallel call is the one that sets it).
    """
    part = session_part(fresh_session, "threads")
    assert part == {"tl": 1, "annotator": 1}, part


def test_first_use_of_scvi_tools_keeps_the_users_seed(fresh_session):
    """Importing scvi-tools sets its seed (every global generator restarts from 0): scdl
    imports it lazily, at the first model or training step, so that import must not
    replace a seed the user set before (a fresh process: scvi-tools not yet imported)."""
    part = session_part(fresh_session, "models")
    assert not part["scvi_before"] and part["scvi_after"]
    assert part["seed_kept"] is True
