from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from scdl.cli import main


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "scdl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "demo" in out.stdout and "integrate" in out.stdout


def test_integrate_command(kang, tmp_path, capsys):
    from scdl.models import VAE

    small = kang[::4].copy()
    small.write_h5ad(tmp_path / "in.h5ad")
    args = ["integrate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out.h5ad")]
    args += ["--batch-key", "sample", "--max-epochs", "2", "--key-added", "X_cli"]
    args += ["--n-latent", "6", "--n-top-genes", "500", "--cluster"]
    args += ["--save-model", str(tmp_path / "m"), "-q"]
    assert main(args) == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    # each option reached tl.integrate / tl.cluster / save
    assert out.obsm["X_cli"].shape == (small.n_obs, 6) and "X_scdl" not in out.obsm
    info = out.uns["X_cli"]
    assert info["params"]["batch_key"] == "sample"
    assert len(info["history"]["elbo_train"]) == 2
    assert out.obs["scdl_cluster"].nunique() > 1
    genes = list(info["var_names"])
    assert len(genes) == 500
    again = VAE.load(tmp_path / "m", out[:, genes].copy())
    np.testing.assert_allclose(again.get_latent_representation(), out.obsm["X_cli"], atol=1e-6)
    assert "Leiden clusters in obs['scdl_cluster']" in capsys.readouterr().out


def test_warnings_name_the_command_lines_flags():
    """A warning about cells empty in the genes trained on names `n_top_genes`: the command
    line has it as ``--n-top-genes`` (0: every expressed gene)."""
    from scdl.cli import _as_flags, _n_top_genes

    said = _as_flags("3 cells have no counts in the 2000 genes (`n_top_genes` sets how many)")
    assert "`--n-top-genes`" in said
    said = _as_flags("Raise `n_top_genes`, or pass `n_top_genes=None` to train on every gene")
    assert said == "Raise `--n-top-genes`, or pass `--n-top-genes 0` to train on every gene"
    assert _n_top_genes("0") is None and _n_top_genes("300") == 300
    with pytest.raises(Exception, match="integer >= 1"):
        _n_top_genes("-5")


def test_integrate_command_reports_bad_key(kang, tmp_path, capsys):
    kang[:100].copy().write_h5ad(tmp_path / "in.h5ad")
    rc = main(
        [
            "integrate",
            str(tmp_path / "in.h5ad"),
            "--batch-key",
            "donor",
            "-o",
            str(tmp_path / "o.h5ad"),
        ]
    )
    assert rc == 2
    assert "not a column of adata.obs" in capsys.readouterr().err


def test_help_explains_each_command():
    for cmd in ("demo", "integrate", "annotate"):
        out = subprocess.run(
            [sys.executable, "-m", "scdl", cmd, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0 and "usage: scdl " + cmd in out.stdout


def test_missing_input_is_one_line_error_without_traceback(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scdl",
            "integrate",
            str(tmp_path / "nope.h5ad"),
            "--batch-key",
            "sample",
            "-o",
            str(tmp_path / "out.h5ad"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out.h5ad").exists()
    # said before the import of torch and scvi-tools (~10 s): a typo was said after it
    code = (
        "import sys, scdl.cli; "
        f"rc = scdl.cli.main(['annotate', {str(tmp_path / 'nope.h5ad')!r}, "
        f"'-o', {str(tmp_path / 'out.h5ad')!r}]); "
        "print(rc, [m for m in ('torch', 'scvi', 'lightning') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["2", "[]"], out.stdout + out.stderr[-500:]
    assert "input file" in out.stderr and "does not exist" in out.stderr


def test_unreadable_input_and_missing_output_folder(tmp_path, capsys):
    import logging
    import warnings

    bad = tmp_path / "table.h5ad"
    bad.write_text("cell,gene\n")
    filters, level = list(warnings.filters), logging.getLogger("lightning.pytorch").level
    assert main(["annotate", str(bad), "-o", str(tmp_path / "o.h5ad")]) == 2
    # called from Python, the command leaves the session's warnings and loggers as they were
    assert warnings.filters == filters
    assert logging.getLogger("lightning.pytorch").level == level
    assert "could not read" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path), "-o", str(tmp_path / "o.h5ad")]) == 2
    assert "is a folder; give an .h5ad file" in capsys.readouterr().err
    # the output folder is checked before any work is done
    assert main(["annotate", str(bad), "-o", str(tmp_path / "no" / "o.h5ad")]) == 2
    assert "output folder" in capsys.readouterr().err


def test_a_mudata_file_is_named_with_the_modality_to_give(kang, tmp_path, capsys):
    """A .h5mu file failed in anndata's reader with a 35-line traceback."""
    mudata = pytest.importorskip("mudata")
    path = tmp_path / "cite.h5mu"
    mudata.MuData({"rna": kang[:50].copy()}).write(path)
    assert main(["annotate", str(path), "-o", str(tmp_path / "o.h5ad")]) == 2
    assert "is a MuData (.h5mu) file" in capsys.readouterr().err


def test_annotate_command(tmp_path, capsys):
    import scdl

    cells = scdl.datasets.kang_pbmc_heldout()[:200].copy()  # enough for the Unknown call
    cells.write_h5ad(tmp_path / "in.h5ad")
    args = ["annotate", str(tmp_path / "in.h5ad"), "--model", "pbmc_kang2018"]
    assert main([*args, "-o", str(tmp_path / "out.h5ad")]) == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    # the command's calls are tl.annotate's on the same cells
    scdl.tl.annotate(cells, model="pbmc_kang2018")
    assert out.obs["scdl_cell_type"].astype(str).equals(cells.obs["scdl_cell_type"].astype(str))
    assert out.obsm["scdl_cell_type_probabilities"].shape[0] == 200
    assert "wrote obs['scdl_cell_type']" in capsys.readouterr().out
    forced = [*args, "-o", str(tmp_path / "f.h5ad"), "--no-unknown", "--key-added", "ct", "-q"]
    assert main(forced) == 0
    calls = ad.read_h5ad(tmp_path / "f.h5ad").obs["ct"]
    assert "Unknown" not in set(calls.astype(str))
    best = cells.obsm["scdl_cell_type_probabilities"]
    assert (calls.astype(str).to_numpy() == best.columns[best.to_numpy().argmax(1)]).all()
    # --batch-key: the calls tl.annotate makes by sample
    by_sample = [*args, "-o", str(tmp_path / "b.h5ad"), "--batch-key", "condition", "-q"]
    assert main(by_sample) == 0
    written = ad.read_h5ad(tmp_path / "b.h5ad")
    scdl.tl.annotate(cells, model="pbmc_kang2018", batch_key="condition")
    assert written.obs["scdl_cell_type"].astype(str).equals(cells.obs["scdl_cell_type"].astype(str))
    assert written.uns["scdl_cell_type"]["params"]["batch_key"] == "condition"
    assert main([*args, "-o", str(tmp_path / "x.h5ad"), "--batch-key", "donor", "-q"]) == 2


def test_annotate_unknown_model_is_clear_error(tmp_path, capsys):
    import scdl

    scdl.datasets.kang_pbmc_heldout()[:20].copy().write_h5ad(tmp_path / "in.h5ad")
    rc = main(
        [
            "annotate",
            str(tmp_path / "in.h5ad"),
            "--model",
            "no_such_annotator",
            "-o",
            str(tmp_path / "out.h5ad"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_such_annotator" in err and "Traceback" not in err
    assert not (tmp_path / "out.h5ad").exists()


def test_outputs_are_not_replaced_without_overwrite(kang, tmp_path, capsys):
    """An existing OUT or model folder is refused before any work, unless --overwrite; a
    folder given as OUT (a trailing slash) is refused."""
    import scdl

    scdl.datasets.kang_pbmc_heldout()[:30].copy().write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"precious")
    args = ["annotate", str(tmp_path / "in.h5ad"), "-o", str(out)]
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main([*args, "--overwrite"]) == 0
    assert ad.read_h5ad(out).n_obs == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    assert main(["annotate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "new") + "/"]) == 2
    assert "is a folder" in capsys.readouterr().err and not (tmp_path / "new").exists()

    kang[:100].copy().write_h5ad(tmp_path / "k.h5ad")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"another tool's")
    integrate = ["integrate", str(tmp_path / "k.h5ad"), "-o", str(tmp_path / "k_out.h5ad"),
                 "--max-epochs", "1", "-q"]  # fmt: skip
    for folder, message in (
        (tmp_path / "model", "already holds config.json; pass --overwrite"),
        (tmp_path / "weights", "already holds model.safetensors; pass --overwrite"),
        (tmp_path / "k_out.h5ad", "is the output file"),
    ):
        assert main([*integrate, "--save-model", str(folder)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "k_out.h5ad").exists()  # refused before training


def test_annotate_from_a_url_names_the_command_line_option(tmp_path, capsys):
    import scdl

    scdl.datasets.kang_pbmc_heldout()[:20].copy().write_h5ad(tmp_path / "in.h5ad")
    rc = main(["annotate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "o.h5ad"),
               "--model", "https://example.org/annotator.zip"])  # fmt: skip
    assert rc == 2 and "--sha256" in capsys.readouterr().err
    # the bundled weights' checksum, as a user computes it for a file they were sent
    folder = Path(scdl.__file__).parent / "pretrained" / "annotators" / "pbmc_kang2018"
    sha = scdl.datasets.sha256sum(folder / "model.safetensors")
    rc = main(["annotate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "o.h5ad"),
               "--model", "pbmc_kang2018", "--sha256", sha])  # fmt: skip
    assert rc == 0  # the output names the model, not "(in memory)"
    assert ad.read_h5ad(tmp_path / "o.h5ad").uns["scdl_cell_type"]["model"] == "pbmc_kang2018"
    empty = scdl.datasets.kang_pbmc_heldout()[:0].copy()
    empty.write_h5ad(tmp_path / "empty.h5ad")
    assert main(["annotate", str(tmp_path / "empty.h5ad"), "-o", str(tmp_path / "e.h5ad")]) == 2
    assert "no cells to annotate" in capsys.readouterr().err


def test_errors_name_the_command_line_flags(kang, tmp_path, capsys):
    """The library's messages name Python arguments (`layer=`); the command says its flags.
    An output not named .h5ad and --max-epochs below 1 are refused before any work."""
    path = tmp_path / "in.h5ad"
    kang[:100].copy().write_h5ad(path)
    out = str(tmp_path / "o.h5ad")
    assert main(["annotate", str(path), "--layer", "nolayer", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "Leave out `--layer` to use adata.X" in err and "layer=" not in err
    assert main(["integrate", str(path), "--batch-key", "sampel", "-o", out]) == 2
    captured = capsys.readouterr()
    assert "Did you mean 'sample'" in captured.err and "training" not in captured.out
    assert main(["annotate", str(path), "-o", str(tmp_path / "o.csv")]) == 2
    assert "ending in .h5ad" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["integrate", str(path), "--max-epochs", "0", "-o", out])
    assert e.value.code == 2 and "--max-epochs: must be an integer >= 1" in capsys.readouterr().err
    for flags, said in (
        (["integrate", "--n-latent", "0"], "--n-latent: must be an integer >= 1"),
        (["annotate", "--min-gene-overlap", "2"], "--min-gene-overlap: must be a fraction"),
        (["integrate", "--seed", "-1"], "--seed: must be an integer from 0 to 2**32 - 1"),
    ):
        with pytest.raises(SystemExit) as e:
            main([flags[0], str(path), *flags[1:], "-o", out])
        assert e.value.code == 2 and said in capsys.readouterr().err
    # scanpy's log-normalised X with the counts in .raw: the fix is said as flags
    lognorm = kang[:100].copy()
    lognorm.raw = lognorm
    lognorm.X = lognorm.X.astype(np.float32) * 0.5
    lognorm.write_h5ad(tmp_path / "ln.h5ad")
    assert main(["integrate", str(tmp_path / "ln.h5ad"), "-o", out]) == 2
    captured = capsys.readouterr()
    assert "`--layer counts`" in captured.err and "layer='counts'" not in captured.err
    assert "training" not in captured.out  # refused before "training ..." is printed
    assert main(["integrate", str(path), "--layer", "nolayer", "-o", out]) == 2
    assert "training" not in capsys.readouterr().out
    # a batch column with missing values, a file without cells, one without counts: said
    # first, in flags
    holes = kang[:100].copy()
    holes.obs["sample"] = holes.obs["sample"].astype(object)
    holes.obs.iloc[:3, holes.obs.columns.get_loc("sample")] = None
    holes.write_h5ad(tmp_path / "holes.h5ad")
    holes_args = ["integrate", str(tmp_path / "holes.h5ad"), "--batch-key", "sample"]
    assert main([*holes_args, "-o", out]) == 2
    captured = capsys.readouterr()
    assert "as `--batch-key`" in captured.err and "training" not in captured.out
    empty = kang[:0].copy()
    empty.write_h5ad(tmp_path / "empty.h5ad")
    zeros = kang[:100].copy()
    zeros.X = zeros.X * 0
    zeros.write_h5ad(tmp_path / "zeros.h5ad")
    for name, said in (("empty", "holds 0 cells"), ("zeros", "holds no counts")):
        assert main(["integrate", str(tmp_path / f"{name}.h5ad"), "-o", out]) == 2
        captured = capsys.readouterr()
        assert said in captured.err and "training" not in captured.out
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "o.csv").exists()


def test_annotate_quiet_and_warnings_as_the_commands_lines(tmp_path, capsys):
    """`scdl annotate -q` prints nothing on success, as `integrate -q`; a warning reads as the
    command's own line, not Python's "path:line:" form with its source line."""
    import scdl

    cells = scdl.datasets.kang_pbmc_heldout()[:200].copy()  # enough for the Unknown call
    cells.write_h5ad(tmp_path / "in.h5ad")
    assert main(["annotate", str(tmp_path / "in.h5ad"), "-q", "-o", str(tmp_path / "o.h5ad")]) == 0
    assert capsys.readouterr().out == ""
    cells[:, ::-1][:, :1500].copy().write_h5ad(tmp_path / "fewer.h5ad")  # 75% of the genes
    args = ["annotate", str(tmp_path / "fewer.h5ad"), "-q", "-o", str(tmp_path / "f.h5ad")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "scdl annotate: warning:" in err and "sys.exit" not in err and ".py:" not in err


def test_scanpy_layouts_are_read_through_layer_raw(kang, tmp_path, capsys):
    """scanpy leaves counts or every gene in .raw and log values in X: `--layer raw` reads .raw
    (the messages named only Python code), as the Python recipe they give does."""
    import scanpy as sc

    import scdl

    counts = kang[::8].copy()
    sc.pp.filter_genes(counts, min_cells=3)
    counts.raw = counts.copy()
    sc.pp.normalize_total(counts, target_sum=1e4)
    sc.pp.log1p(counts)
    counts.write_h5ad(tmp_path / "counts_in_raw.h5ad")
    base = ["integrate", str(tmp_path / "counts_in_raw.h5ad"), "--max-epochs", "1", "-q"]
    assert main([*base, "-o", str(tmp_path / "no.h5ad")]) == 2
    assert "`--layer raw` reads .raw" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "i.h5ad"), "--layer", "raw"]) == 0
    out = ad.read_h5ad(tmp_path / "i.h5ad")
    assert out.obsm["X_scdl"].shape[0] == counts.n_obs and "raw" not in out.layers
    assert out.raw is not None and out.uns["X_scdl"]["params"]["layer"] == "raw"

    cells = scdl.datasets.kang_pbmc_heldout()[:200].copy()
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    cells.raw = cells  # every gene, log-normalised; X then keeps variable genes only
    sc.pp.highly_variable_genes(cells, n_top_genes=500, subset=True)
    stale = cells.copy()
    stale.obs["scdl_cell_type_majority_voting"] = "B"  # an earlier run's vote: removed
    stale.write_h5ad(tmp_path / "hvg.h5ad")
    args = ["annotate", str(tmp_path / "hvg.h5ad"), "-q", "--layer", "raw"]
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "a.h5ad")]) == 0
    # what it says of the values names where they came from (it said "adata.X")
    assert "adata.layers['raw'] is not raw counts but log1p" in capsys.readouterr().err
    out = ad.read_h5ad(tmp_path / "a.h5ad")
    expected = scdl.tl.annotate(cells.raw.to_adata(), copy=True)
    assert out.n_vars == 500 and out.uns["scdl_cell_type"]["params"]["layer"] == "raw"
    assert "scdl_cell_type_majority_voting" not in out.obs
    assert (
        out.obs["scdl_cell_type"].astype(str) == expected.obs["scdl_cell_type"].astype(str)
    ).all()
    np.testing.assert_array_equal(
        out.obsm["scdl_cell_type_probabilities"].to_numpy(),
        expected.obsm["scdl_cell_type_probabilities"].to_numpy(),
    )


def test_a_cell_ranger_h5_is_read_and_an_empty_file_refused(kang, tmp_path, capsys):
    """A Cell Ranger .h5 (often a lab's first file) failed with anndata's internal TypeError;
    annotating a file without counts exited 0 with every cell Unknown."""
    import h5py
    from scipy import sparse

    import scdl

    cells = kang[:120].copy()
    x = sparse.csr_matrix(cells.X).astype(np.int32)  # cells x genes CSR: 10x's genes x cells CSC
    with h5py.File(tmp_path / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = x.data, x.indices, x.indptr
        g["shape"] = np.array([cells.n_vars, cells.n_obs])
        g["barcodes"] = np.array(cells.obs_names, dtype="S")
        features = g.create_group("features")
        names = np.array(cells.var_names, dtype=object)
        names[1] = names[0]  # Cell Ranger repeats a few symbols (GRCh38: TBCE, MATR3, ...)
        features["name"] = np.array(names, dtype="S")
        features["id"] = np.array(cells.var_names, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * cells.n_vars, dtype="S")
        features["genome"] = np.array(["GRCh38"] * cells.n_vars, dtype="S")
    args = ["integrate", str(tmp_path / "filtered_feature_bc_matrix.h5"), "--max-epochs", "1"]
    assert main([*args, "-o", str(tmp_path / "i.h5ad")]) == 0
    assert "read with scanpy.read_10x_h5; repeated gene names made unique" in (
        capsys.readouterr().out
    )
    assert ad.read_h5ad(tmp_path / "i.h5ad").obsm["X_scdl"].shape[0] == 120

    empty = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    empty.layers["zeros"] = sparse.csr_matrix(empty.shape, dtype=np.float32)
    empty.write_h5ad(tmp_path / "e.h5ad")
    args = ["annotate", str(tmp_path / "e.h5ad"), "--layer", "zeros", "-q"]
    assert main([*args, "-o", str(tmp_path / "a.h5ad")]) == 2
    assert "holds no counts" in capsys.readouterr().err
    assert not (tmp_path / "a.h5ad").exists()
    import scanpy as sc

    scaled = scdl.datasets.kang_pbmc_heldout()[:105].copy()
    sc.pp.normalize_total(scaled)
    sc.pp.log1p(scaled)
    sc.pp.scale(scaled)  # sums to ~0 without being empty: said as scaled, not as no counts
    scaled.write_h5ad(tmp_path / "s.h5ad")
    assert main(["annotate", str(tmp_path / "s.h5ad"), "-q", "-o", str(tmp_path / "s2.h5ad")]) == 2
    assert "values are negative (scaled data?)" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="No cell of the query has a count in the model's genes"):
        scdl.tl.annotate(empty, layer="zeros")
    assert (empty.obs["scdl_cell_type"] == "Unknown").all()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux's /proc")
def test_an_unwritable_model_folder_is_refused_before_training(kang, tmp_path, capsys):
    """/proc takes no new file, for root too (a read-only folder does not bind root)."""
    kang[:60].copy().write_h5ad(tmp_path / "in.h5ad")
    args = ["integrate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "o.h5ad")]
    assert main([*args, "--save-model", "/proc/scdl_model", "-q"]) == 2
    assert "cannot write --save-model" in capsys.readouterr().err
    assert not (tmp_path / "o.h5ad").exists()  # refused before training and writing
