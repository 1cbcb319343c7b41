"""Training options at their edges: refused by name before any fitting, or said."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scdl.models import CellTypeTransformer, ContrastiveVAE


@pytest.fixture()
def annotator(kang):
    adata = kang[::3].copy()
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    return CellTypeTransformer(adata, d_model=32, n_heads=2, n_layers=1)


@pytest.mark.parametrize(
    ("plan", "error", "match"),
    [
        ({"label_smoothing": 1.0}, ValueError, r"label_smoothing must be a fraction in \[0, 1\)"),
        ({"label_smoothing": -0.5}, ValueError, "label_smoothing"),
        ({"weight_decay": -1}, ValueError, "weight_decay must be a finite number >= 0"),
        ({"class_weights": [0.0] * 5}, ValueError, "class_weights must hold 5 finite numbers"),
        ({"class_weights": [1.0, 2.0]}, ValueError, "one per cell type in the model's order"),
    ],
)
def test_annotator_plan_options_are_refused_before_fitting(annotator, plan, error, match):
    """They failed in torch after the linear head was fitted, or (smoothing 1, negative
    smoothing) trained silently; all-zero weights were called a divergence to cure by lr."""
    with pytest.raises(error, match=match):
        annotator.train(max_epochs=1, plan_kwargs=plan, enable_progress_bar=False)
    assert not annotator.is_trained_ and getattr(annotator, "linear_C_", None) is None


@pytest.mark.parametrize("weights", [[1.0] * 5, "tensor"])
def test_annotator_class_weights_as_a_list_or_tensor_train(annotator, weights):
    import torch

    if weights == "tensor":  # one tracking gradients (a GPU one is moved the same way)
        weights = torch.ones(5, requires_grad=True)
    annotator.train(max_epochs=1, plan_kwargs={"class_weights": weights}, enable_progress_bar=False)
    assert annotator.is_trained_


def test_annotator_switches_and_rates_are_checked(kang):
    adata = kang[::3].copy()
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(TypeError, match="linear_head must be True or False"):
        CellTypeTransformer(adata, linear_head=None)  # turned the linear path off silently
    model = CellTypeTransformer(adata, d_model=32, n_heads=2, n_layers=1)
    with pytest.raises(TypeError, match=r"unknown_rate must be a number in \[0, 0.5\)"):
        model.train(max_epochs=1, unknown_rate="0.1", enable_progress_bar=False)


def test_contrastive_training_says_nothing_about_cells_it_does_not_move(kang):
    """scvi-tools' remainder rule warned that cells moved to validation; scdl's split
    replaces it and moves none."""
    adata = kang[np.random.default_rng(0).choice(kang.n_obs, 401, replace=False)].copy()
    ContrastiveVAE.setup_anndata(adata)
    model = ContrastiveVAE(adata)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*moved from training set")
        model.train(groupby="condition", background="ctrl", max_epochs=1, enable_progress_bar=False)
    assert model.is_trained_
