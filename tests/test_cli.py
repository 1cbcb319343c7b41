from __future__ import annotations

import subprocess
import sys

import anndata as ad

from scdl.cli import main


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "scdl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "demo" in out.stdout and "integrate" in out.stdout


def test_integrate_command(kang, tmp_path, capsys):
    small = kang[::4].copy()
    small.write_h5ad(tmp_path / "in.h5ad")
    rc = main(
        [
            "integrate",
            str(tmp_path / "in.h5ad"),
            "--batch-key",
            "sample",
            "-o",
            str(tmp_path / "out.h5ad"),
            "--max-epochs",
            "2",
            "-q",
        ]
    )
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm["X_scdl"].shape == (small.n_obs, 10)


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


def test_unreadable_input_and_missing_output_folder(tmp_path, capsys):
    bad = tmp_path / "table.h5ad"
    bad.write_text("cell,gene\n")
    assert main(["annotate", str(bad), "-o", str(tmp_path / "o.h5ad")]) == 2
    assert "could not read" in capsys.readouterr().err
    # the output folder is checked before any work is done
    assert main(["annotate", str(bad), "-o", str(tmp_path / "no" / "o.h5ad")]) == 2
    assert "output folder" in capsys.readouterr().err


def test_annotate_command(tmp_path, capsys):
    import scdl

    scdl.datasets.kang_pbmc_heldout()[:60].copy().write_h5ad(tmp_path / "in.h5ad")
    rc = main(
        [
            "annotate",
            str(tmp_path / "in.h5ad"),
            "--model",
            "pbmc_kang2018",
            "-o",
            str(tmp_path / "out.h5ad"),
        ]
    )
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obs["scdl_cell_type"].notna().all()
    assert out.obsm["scdl_cell_type_probabilities"].shape[0] == 60
    assert "wrote obs['scdl_cell_type']" in capsys.readouterr().out


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
