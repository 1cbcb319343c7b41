"""A long session: what scdl registers with scvi-tools for one model is freed with it.

scvi-tools keeps every registered AnnData in class-level stores for the session; each
``tl.integrate`` / ``tl.contrastive`` call registered its own training copy there, so ten
reruns held ten copies of the data that nothing could free.
"""

from __future__ import annotations

import gc

import pytest

import scdl
from scdl.models import VAE, ContrastiveVAE


def _held(cls) -> tuple[int, int]:
    gc.collect()
    return len(cls._setup_adata_manager_store), len(cls._per_instance_manager_store)


def _small(kang):
    return kang[::4].copy()


def test_tool_reruns_hold_no_training_copies(kang):
    adata = _small(kang)
    before = _held(VAE)
    for _ in range(3):
        model = scdl.tl.integrate(adata, batch_key="sample", max_epochs=1, progress_bar=False)
        assert _held(VAE)[0] == before[0] + 1  # alive: its copy is registered
        del model
    assert _held(VAE) == before
    before = _held(ContrastiveVAE)
    for _ in range(2):
        model = scdl.tl.contrastive(
            adata, groupby="condition", background="ctrl", max_epochs=1, progress_bar=False
        )
        del model
    assert _held(ContrastiveVAE) == before


def test_a_failing_tool_call_holds_no_copy(kang):
    adata = _small(kang)
    before = _held(VAE)
    with pytest.raises(TypeError):
        scdl.tl.integrate(adata, max_epochs=1, progress_bar=False, train_kwargs={"nope": 1})
    with pytest.raises(TypeError):  # the model cannot be built
        scdl.tl.integrate(adata, max_epochs=1, progress_bar=False, model_kwargs={"nope": 1})
    assert _held(VAE) == before


def test_the_users_own_registration_stays(kang, tmp_path):
    """Only what scdl made is released: the user's AnnData can be given to a model again."""
    adata = _small(kang)
    VAE.setup_anndata(adata, batch_key="sample")
    model = VAE(adata)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "m", save_anndata=True)
    del model
    again = VAE(adata)  # scvi-tools finds the registration in its class store
    again.train(max_epochs=1, enable_progress_bar=False)
    assert again.get_latent_representation().shape[0] == adata.n_obs
    before = _held(VAE)
    loaded = VAE.load(tmp_path / "m")  # reads the save's own AnnData: released with it
    assert _held(VAE)[0] == before[0] + 1
    del loaded
    assert _held(VAE) == before


def test_a_query_subset_is_released_with_its_model(kang):
    """load_query_data makes its own copy of a query's reference genes; the query the user
    holds keeps its registration."""
    adata = _small(kang)
    reference = adata[:, :1000].copy()
    VAE.setup_anndata(reference, batch_key="sample")
    model = VAE(reference)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = adata.copy()  # every gene: the query model trains on a subset scdl makes
    query.obs["sample"] = "new"
    before = _held(VAE)
    mapped = VAE.load_query_data(query, model)
    assert mapped.adata is not query and _held(VAE)[0] == before[0] + 1
    del mapped
    assert _held(VAE) == before


def test_what_the_user_set_up_again_is_kept(kang, tmp_path):
    """A copy of a model's AnnData carries its registration id: once the user set the copy up,
    the model going must not drop it. And the model's own AnnData, kept by the user after
    the model went, can be set up again."""
    adata = _small(kang)
    model = scdl.tl.integrate(adata, max_epochs=1, progress_bar=False)
    kept = model.adata
    copy = model.adata.copy()
    VAE.setup_anndata(copy)
    del model
    gc.collect()
    VAE(copy)  # the user's registration of the copy is still there
    VAE.setup_anndata(kept)  # the model's own AnnData: set up again, not "another model's"
    VAE(kept)
