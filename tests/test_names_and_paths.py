"""Names and paths a user brings: cell types holding '/', saves in '~' or with a timestamped
prefix, a save shared without its AnnData, input keys an .h5ad file cannot hold. An annotator
trained on Kang 2k cells whose T-cell label is "CD4/CD8 T" (an atlas' coarse label)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import read_shared

import scdl
from scdl._cli_files import check_input_names, slashed_keys
from scdl.cli import main

PREFIX = "2024-05-01T10:30_"  # ':' is an ordinary character of a file name off Windows


@pytest.fixture(scope="module")
def slashed():
    import scvi

    scvi.settings.seed = 0
    cells = read_shared("kang_pbmc_2k_celltypes.h5ad")
    cells = cells[:, np.asarray(cells.X.sum(0)).ravel() >= 20].copy()
    types = cells.obs["cell_type"].astype(str)
    cells.obs["cell_type"] = types.replace({"CD4T": "CD4/CD8 T", "CD8T": "CD4/CD8 T"}).values
    ref = cells[cells.obs["condition"] == "control"].copy()
    with pytest.warns(UserWarning, match="contain '/'"):
        scdl.models.CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(ref)
    model.train(max_epochs=5, enable_progress_bar=False)
    query = cells[cells.obs["condition"] != "control"][:300].copy()
    del query.obs["cell_type"]
    return model, query


def test_a_save_with_its_anndata_annotates_without_it(slashed, tmp_path):
    """Annotating never reads the training cells: a save made with `save_anndata=True` and
    shared without its adata.h5ad loads with scdl.pretrained.load, by its prefix."""
    model, query = slashed
    model.save(tmp_path, prefix=PREFIX, save_anndata=True)
    (tmp_path / f"{PREFIX}adata.h5ad").unlink()
    loaded = scdl.pretrained.load(tmp_path, prefix=PREFIX)
    assert loaded.adata is None
    ours, theirs = query.copy(), query.copy()
    for cells, annotator in ((ours, model), (theirs, loaded)):
        with pytest.warns(UserWarning, match="contain '/'"):
            scdl.tl.annotate(cells, model=annotator)
    assert ours.obs["scdl_cell_type"].equals(theirs.obs["scdl_cell_type"])
    with pytest.raises(FileNotFoundError, match=r"prefix=\.\.\.\)` \(`--prefix` of"):
        scdl.pretrained.load(tmp_path)
    with pytest.raises(ValueError, match="not a folder: drop `prefix`"):
        scdl.pretrained.load("pbmc_kang2018", prefix=PREFIX)


def test_the_command_line_annotates_with_a_prefix_and_slashed_types(slashed, tmp_path, capsys):
    """`scdl annotate --prefix` loads a prefixed save; the types' '/' (which .h5ad files cannot
    hold in a column name: anndata >= 0.13 refused the write after all the work) become '|'
    in the probability columns only."""
    model, query = slashed
    model.save(tmp_path / "m", prefix=PREFIX)
    query.write_h5ad(tmp_path / "in.h5ad")
    args = ["annotate", str(tmp_path / "in.h5ad"), "--model", str(tmp_path / "m")]
    assert main([*args, "--prefix", PREFIX, "-o", str(tmp_path / "out.h5ad"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "written with '|' instead" in err and "before `adata.write_h5ad`" not in err
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert "CD4|CD8 T" in out.obsm["scdl_cell_type_probabilities"].columns
    assert "CD4/CD8 T" in set(out.obs["scdl_cell_type"].astype(str))
    assert main([*args, "-o", str(tmp_path / "no.h5ad"), "-q"]) == 2  # the prefix is needed
    assert "`--prefix` of `scdl annotate`" in capsys.readouterr().err


def test_a_save_under_the_home_folder(slashed, tmp_path, monkeypatch):
    """'~' is the home folder, as the shell and scdl.pl read it: a folder named '~' in the
    working folder is what `rm -rf ~` would then remove."""
    model, _ = slashed
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    model.save("~/models/pbmc")
    assert (tmp_path / "home" / "models" / "pbmc" / "config.json").is_file()
    assert not (tmp_path / "work" / "~").exists()
    assert scdl.pretrained.load("~/models/pbmc").labels == model.labels
    loaded = scdl.models.CellTypeTransformer.load("~/models/pbmc", adata=False)
    assert loaded.labels == model.labels


def test_input_keys_an_h5ad_cannot_hold_are_named_before_any_work(tmp_path, capsys):
    """anndata refuses '/' in a key when writing (0.13 by default, 0.12.19 with its setting;
    0.12 otherwise warns and writes): the command line names every such key of its input
    before training, not after it (the output was lost)."""
    cells = read_shared("kang_pbmc_1.5k.h5ad")[:200].copy()
    cells.raw = cells.copy()
    cells.raw.var["gene/id"] = "x"
    cells.obs["batch/lane"] = "a"
    cells.obsm["scores"] = pd.DataFrame({"x/y": 0.0, "z": 1.0}, index=cells.obs_names)
    cells.uns["run"] = {"date/time": "today", "table": pd.DataFrame({"a/b": [1]})}
    assert slashed_keys(cells) == [
        "obs['batch/lane']",
        "raw.var['gene/id']",
        "column 'x/y' of obsm['scores']",
        "uns['run']['date/time']",
        "column 'a/b' of uns['run']['table']",
    ]
    with ad.settings.override(disallow_forward_slash_in_h5ad=False):
        check_input_names(cells, "in.h5ad")  # written with anndata's own warning
    with ad.settings.override(disallow_forward_slash_in_h5ad=True):
        with pytest.raises(ValueError, match=r"in\.h5ad holds '/' in obs\['batch/lane'\]"):
            check_input_names(cells, "in.h5ad")
        clean = read_shared("kang_pbmc_1.5k.h5ad")[:200].copy()
        clean.obs["batch/lane"] = clean.obs["sample"].astype(str).values
        with ad.settings.override(disallow_forward_slash_in_h5ad=False):
            clean.write_h5ad(tmp_path / "in.h5ad")
        args = ["integrate", str(tmp_path / "in.h5ad"), "--batch-key", "batch/lane"]
        assert main([*args, "-o", str(tmp_path / "out.h5ad"), "--max-epochs", "1", "-q"]) == 2
        captured = capsys.readouterr()
        assert "holds '/' in obs['batch/lane']" in captured.err
        assert "training" not in captured.out and not (tmp_path / "out.h5ad").exists()
