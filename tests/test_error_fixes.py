"""A refusal's fix, followed as written, works: the argument it names exists, the example it
gives does not repeat the missing name, the step it says to run writes what was missing."""

from __future__ import annotations

import warnings

import pytest
from conftest import assert_unchanged, snapshot

import scdl
from scdl.models import VAE


def test_a_missing_embedding_names_the_step_that_writes_it(kang):
    import scanpy as sc

    adata = kang[:300].copy()
    with pytest.raises(KeyError, match=r"Run `sc.pp.pca\(adata\)`") as info:
        scdl.tl.cluster(adata, use_rep="X_pca")
    assert "\\" not in repr(info.value)  # KeyError's repr of a message quoting both ways
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10)  # the fix named
    scdl.tl.cluster(adata, use_rep="X_pca", resolution=0.5, pca_key=None)
    assert adata.obs["scdl_cluster"].nunique() > 1
    with pytest.raises(KeyError, match=r"scdl.tl.contrastive\(adata, ...\)"):
        scdl.tl.cluster(adata, use_rep="X_scdl_salient")
    with pytest.raises(KeyError, match=r"key_added='X_mine'"):
        scdl.tl.cluster(adata, use_rep="X_mine")
    with pytest.raises(KeyError) as info:
        scdl.pl.cluster_resolution(adata, key="scdl_cluster")
    assert "resolution='auto'" in str(info.value) and "\\" not in repr(info.value)


def test_a_mask_passed_as_background_is_told_how_to_choose_cells_by_mask(kang):
    """background= / target= take the groupby column's values: a mask, the cells' names or
    positions were refused with every entry listed (16,000 characters) and no way to choose
    cells yourself. The code the message gives, run as written, picks those cells and keeps
    the other group as given (a target mask beside background='ctrl' leaves the other
    stimulated cells out, not in the background)."""
    import re

    import numpy as np

    adata = kang[::8].copy()  # both conditions
    ctrl = (adata.obs["condition"] == "ctrl").to_numpy()
    b_stim = ~ctrl & (adata.obs["cell_type"] == "B cells").to_numpy()
    snap = snapshot(adata)
    for arg, mask in (("background", ctrl), ("target", b_stim)):
        for given, said in (
            (mask, "boolean mask"),
            (adata.obs_names[mask], "cell names"),
            (np.flatnonzero(mask), "cell positions"),
        ):
            kwargs = {"background": "ctrl", arg: given}
            with pytest.raises(ValueError, match=said) as info:
                scdl.tl.contrastive(adata, groupby="condition", **kwargs)
            assert len(str(info.value)) < 900 and "np.True_" not in str(info.value)
    assert_unchanged(adata, snap)
    with pytest.raises(ValueError, match=r"\['x0', 'x1'.*\] and 2 more are not values"):
        scdl.tl.contrastive(adata, groupby="condition", background=[f"x{i}" for i in range(12)])
    # the fix for the target mask, run as the message writes it
    code = re.search(r"`(adata\.obs\['group'\] = .*?)`", str(info.value)).group(1)
    assert "then groupby='group', background='control', target='treated'" in str(info.value)
    mask = b_stim
    exec(code, {"np": np, "adata": adata, "mask": mask})
    scdl.tl.contrastive(
        adata,
        groupby="group",
        background="control",
        target="treated",
        max_epochs=2,
        progress_bar=False,
    )
    info = adata.uns["X_scdl_salient"]["params"]
    assert (adata.obs["group"] == "control").sum() == ctrl.sum()  # the background as given
    assert (adata.obs["group"] == "treated").sum() == b_stim.sum()
    assert np.all(np.any(adata.obsm["X_scdl_salient"][b_stim] != 0, axis=1)), info


def test_contrastive_without_groupby_names_its_own_arguments(kang):
    adata = kang[:200].copy()
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="pass groupby=") as info:
        scdl.tl.contrastive(adata, groupby=None, background=None)
    assert "background_indices" not in str(info.value)  # ContrastiveVAE.train's, not this
    assert_unchanged(adata, snap)


def test_a_querys_missing_batch_column_is_copied_from_one_of_its_own(kang, tmp_path):
    adata = kang[:400].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        VAE.setup_anndata(adata, batch_key="sample")
        model = VAE(adata)
        model.train(max_epochs=1, enable_progress_bar=False)
    query = kang[400:600].copy()
    query.obs = query.obs.rename(columns={"sample": "donor"})
    with pytest.raises(KeyError, match=r"query.obs\['<batch column of the query>'\]") as info:
        VAE.load_query_data(query, model)
    assert "query.obs['sample'] = query.obs['sample']" not in str(info.value)
    assert "\\" not in repr(info.value)
    query.obs = query.obs.rename(columns={"donor": "Sample"})  # a near name: offered
    with pytest.raises(KeyError, match=r"query.obs\['sample'\] = query.obs\['Sample'\]"):
        VAE.load_query_data(query, model)
    query.obs["sample"] = query.obs["Sample"]  # the fix given
    assert VAE.load_query_data(query, model).adata.n_obs == 200
    # a folder of another model where an annotator is wanted: not "load it with VAE.load"
    model.save(tmp_path / "vae")
    with pytest.raises(ValueError, match="VAE model, not an annotator.*available") as info:
        scdl.tl.annotate(kang[:100].copy(), model=str(tmp_path / "vae"))
    assert "VAE.load" not in str(info.value)


def test_misspelt_names_and_wrong_types_are_told_apart():
    with pytest.raises(ValueError, match="Did you mean 'pbmc_kang2018'"):
        scdl.pretrained.load("pbmc-kang2018")
    from scdl.models._drug_args import check_sizes

    for bad, error in ((1.5, TypeError), ("15", TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="smooth_neighbors must be an integer >= 0"):
            check_sizes(100, bad, 0, None)


def test_gene_fixes_say_what_genes_is_and_list_no_empty_example():
    model = scdl.pretrained.load("pbmc_kang2018")
    cells = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    cells.var_names = [g.lower() if i % 3 else g for i, g in enumerate(cells.var_names)]
    with pytest.raises(ValueError, match=r"`model.get_var_names\(\)` of a trained model") as info:
        model.predict(cells)
    # the fix, with `genes` as the message defines it
    genes = model.get_var_names()
    spelling = {g.upper(): g for g in genes}
    cells.var_names = [spelling.get(g.upper(), g) for g in cells.var_names]
    assert len(model.predict(cells, unknown=False)) == 100
    assert "e.g. []" not in str(info.value)
    few = scdl.datasets.kang_pbmc_heldout()[:, list(genes[:100])].copy()  # model genes only
    with pytest.raises(ValueError, match=r"occur in adata.var_names \(the model's missing") as e:
        model.predict(few)
    assert "e.g. []" not in str(e.value)
