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
    rc = main(["integrate", str(tmp_path / "in.h5ad"), "--batch-key", "sample", "-o",
               str(tmp_path / "out.h5ad"), "--max-epochs", "2", "-q"])
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm["X_scdl"].shape == (small.n_obs, 10)


def test_integrate_command_reports_bad_key(kang, tmp_path, capsys):
    kang[:100].copy().write_h5ad(tmp_path / "in.h5ad")
    rc = main(["integrate", str(tmp_path / "in.h5ad"), "--batch-key", "donor", "-o",
               str(tmp_path / "o.h5ad")])
    assert rc == 2
    assert "not a column of adata.obs" in capsys.readouterr().err
