"""Architecture options reach the network, and a saved model is rebuilt with them.

A model built with other than the default sizes must train with those sizes, and ``load``
must rebuild the same shapes from the saved config (a load that fell back to the defaults
would fail on the weights' shapes, or, for a dropout rate, silently predict otherwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scdl
from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE


def _small(kang, n: int = 300):
    rng = np.random.default_rng(0)
    return kang[np.sort(rng.choice(kang.n_obs, n, replace=False))].copy()


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _dropout_rates(module) -> set[float]:
    return {m.p for m in module.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}


def _n_linear(module) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in module.modules())


def _round_trip(model, cls, adata, tmp_path, get):
    """Save, load from the config, and compare the shapes, dropout rates and an output."""
    model.save(tmp_path / "m")
    again = cls.load(tmp_path / "m", adata.copy())
    assert _shapes(again.module) == _shapes(model.module)
    assert _dropout_rates(again.module) == _dropout_rates(model.module)
    np.testing.assert_array_equal(get(again), get(model))
    return again


def test_vae_sizes_and_likelihood_are_built_trained_and_reloaded(kang, tmp_path):
    adata = _small(kang)
    VAE.setup_anndata(adata, batch_key="sample")
    default = VAE(adata)
    model = VAE(
        adata, n_latent=4, n_hidden=32, n_layers=2, gene_likelihood="zinb", dropout_rate=0.25
    )
    assert _dropout_rates(default.module) == {0.1}
    assert _dropout_rates(model.module) == {0.25}
    # a second hidden layer in the encoder and in the decoder: two more linear layers
    assert _n_linear(model.module) == _n_linear(default.module) + 2
    shapes = _shapes(model.module)
    assert shapes["z_encoder.mean_encoder.weight"] == (4, 32)
    assert shapes["decoder.px_dropout_decoder.weight"] == (adata.n_vars, 32)
    model.train(max_epochs=2, batch_size=128, enable_progress_bar=False)
    assert model.get_latent_representation().shape == (adata.n_obs, 4)
    again = _round_trip(model, VAE, adata, tmp_path, lambda m: m.get_latent_representation())
    assert again.module.gene_likelihood == "zinb"


def test_contrastive_sizes_are_built_trained_and_reloaded(kang, tmp_path):
    adata = _small(kang)
    ContrastiveVAE.setup_anndata(adata)
    default = ContrastiveVAE(adata)
    model = ContrastiveVAE(
        adata, n_shared_latent=3, n_salient_latent=2, n_hidden=24, n_layers=2, dropout_rate=0.3
    )
    assert _dropout_rates(default.module) == {0.1}
    assert _dropout_rates(model.module) == {0.3}
    # a second hidden layer in both encoders and the decoder
    assert _n_linear(model.module) == _n_linear(default.module) + 3
    model.train(groupby="condition", background="ctrl", max_epochs=2, enable_progress_bar=False)
    assert model.get_latent_representation(representation="shared").shape == (adata.n_obs, 3)
    assert model.get_latent_representation(representation="salient").shape == (adata.n_obs, 2)
    _round_trip(
        model,
        ContrastiveVAE,
        adata,
        tmp_path,
        lambda m: m.get_latent_representation(representation="salient"),
    )


def test_annotator_sizes_are_built_trained_and_reloaded(kang, tmp_path):
    adata = _small(kang, 400)
    CellTypeTransformer.setup_anndata(adata, labels_key="cell_type")
    default = CellTypeTransformer(adata)
    model = CellTypeTransformer(
        adata, n_tokens=16, d_model=16, n_heads=2, n_layers=1, dim_feedforward=24, dropout=0.2
    )
    assert _dropout_rates(default.module) == {0.1}
    assert _dropout_rates(model.module) == {0.2}
    shapes = _shapes(model.module)
    assert shapes["gene_embedding.weight"] == (adata.n_vars, 16)
    # the last of n_layers is the CLS token's own block
    assert len(model.module.layers) == 0 and len(default.module.layers) == 1
    assert model.module.n_tokens == 16
    assert {s for k, s in shapes.items() if k.endswith("ff.0.weight")} == {(24, 16)}
    model.train(max_epochs=3, enable_progress_bar=False)
    query = adata.copy()
    _round_trip(
        model,
        CellTypeTransformer,
        adata,
        tmp_path,
        lambda m: m.predict(query, soft=True).to_numpy(),
    )


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (VAE, {"n_layers": 0}),
        (VAE, {"n_hidden": 0}),
        (ContrastiveVAE, {"n_salient_latent": 0}),
        (CellTypeTransformer, {"n_heads": 3}),  # d_model 32 is not a multiple of 3
    ],
)
def test_impossible_sizes_are_refused_by_name(kang, cls, options):
    adata = _small(kang, 200)
    if cls is CellTypeTransformer:
        cls.setup_anndata(adata, labels_key="cell_type")
    else:
        cls.setup_anndata(adata)
    with pytest.raises((ValueError, TypeError), match=next(iter(options))):
        cls(adata, **options)


def test_tl_integrate_passes_sizes_to_the_model(kang):
    adata = _small(kang)
    model = scdl.tl.integrate(
        adata,
        batch_key="sample",
        n_latent=6,
        model_kwargs={"n_layers": 2, "n_hidden": 48},
        max_epochs=1,
        progress_bar=False,
    )
    assert adata.obsm["X_scdl"].shape == (adata.n_obs, 6)
    assert len(model.module.z_encoder.encoder.fc_layers) == 2
    assert _shapes(model.module)["z_encoder.mean_encoder.weight"] == (6, 48)
