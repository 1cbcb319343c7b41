"""Shared machines, clusters, containers and other operating systems: files others read,
links, batch jobs, archives and tables made on Windows."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import signal
import stat
import sys
import zipfile

import anndata as ad
import numpy as np
import pytest
from conftest import DATA
from scipy import sparse
from test_datasets import http_root  # noqa: F401  (the local web server fixture)
from test_pretrained import _archive

import scdl
from scdl.datasets import fetch_file


@pytest.fixture()
def umask_002():
    old = os.umask(0o002)
    yield 0o002
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_entries_follow_the_umask(umask_002, tmp_path, monkeypatch, http_root):  # noqa: F811
    """An unpacked model folder was 0700 and a download 0600 whatever the umask: a second
    user of a shared $SCDL_CACHE got "Directory not empty" or a permission error."""
    monkeypatch.setenv("SCDL_CACHE", str(tmp_path / "cache"))
    scdl.pretrained.load(_archive("zip", tmp_path))
    (entry,) = (tmp_path / "cache" / "models").iterdir()
    assert _mode(entry) == 0o775, oct(_mode(entry))
    assert all(_mode(f) == 0o664 for f in entry.iterdir())
    root, url = http_root
    (root / "d.bin").write_bytes(b"bytes")
    got = fetch_file("d.bin", sha256=hashlib.sha256(b"bytes").hexdigest(), url=f"{url}/d.bin")
    assert _mode(got) == 0o664, oct(_mode(got))
    os.chmod(got, 0o600)  # another job's umask: a file already cached is left as it is
    fetch_file("d.bin", sha256=hashlib.sha256(b"bytes").hexdigest(), url=f"{url}/d.bin")
    assert _mode(got) == 0o600


def test_an_output_written_through_a_link_keeps_the_link(umask_002, tmp_path):
    """Results linked into a scratch folder: the link was replaced by a file beside it and
    the scratch file left stale. The file also follows the umask (mkstemp's is 0600)."""
    scratch, results = tmp_path / "scratch", tmp_path / "results"
    scratch.mkdir(), results.mkdir()
    target, link = scratch / "x.h5ad", results / "x.h5ad"
    ad.AnnData(sparse.csr_matrix(np.ones((3, 2)))).write_h5ad(target)
    link.symlink_to(target)
    scdl.data.write_h5ad_atomic(ad.AnnData(sparse.csr_matrix(np.ones((5, 2)))), link)
    assert link.is_symlink() and ad.read_h5ad(target).n_obs == 5
    assert _mode(target) == 0o664, oct(_mode(target))
    assert not [p for p in (*scratch.iterdir(), *results.iterdir()) if "partial" in p.name]


def test_no_home_folder_says_where_to_cache(monkeypatch):
    """A container's bare user id (no passwd entry, no HOME): platformdirs' RuntimeError came
    out of archive loads, and gdsc() lost its how-to-get-the-files message."""
    import pooch

    def no_home(*args, **kwargs):
        raise RuntimeError("could not determine the home directory")

    monkeypatch.delenv("SCDL_CACHE", raising=False)
    monkeypatch.delenv("SCDL_GDSC_DIR", raising=False)
    monkeypatch.delenv("SCDL_GDSC_URL", raising=False)
    monkeypatch.setattr(pooch, "os_cache", no_home)
    with pytest.raises(OSError, match=r"Set \$SCDL_CACHE"):
        scdl.datasets.cache_dir()
    with pytest.raises(FileNotFoundError, match="not bundled"):
        scdl.datasets.gdsc()


def test_a_home_relative_gdsc_folder_is_read_as_home(tmp_path, monkeypatch):
    """`~/gdsc` (a notebook's or a quoted sbatch line's) was read as a folder named "~", and
    the error said no location was configured."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gdsc")):
        scdl.datasets.gdsc(path="~/gdsc")
    monkeypatch.setenv("SCDL_GDSC_DIR", "~/gdsc")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gdsc")):
        scdl.datasets.gdsc()


def test_batch_job_output_and_termination(monkeypatch):
    """Under nohup or Slurm: stdout flushed line by line, a name a Latin-1 locale cannot
    encode written escaped (the command failed after writing its output), SIGTERM exits
    through the cleanup; the session's stream and handler are restored after."""
    from scdl.cli import _batch_job_io

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", out)
    before = signal.getsignal(signal.SIGTERM)
    with _batch_job_io("annotate"):
        print("CD4\u207a T: 12")
        assert raw.getvalue() == b"CD4\\u207a T: 12\n"  # written at the line's end
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.code == 128 + signal.SIGTERM
    assert out.errors == "strict" and not out.line_buffering
    assert signal.getsignal(signal.SIGTERM) is before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a parent's `trap '' TERM` stays in force
    try:
        with _batch_job_io("annotate"):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_output_check_reads_home_as_the_write_does(tmp_path, monkeypatch):
    """`--output=~/x.h5ad` (bash leaves ~ after `=`): the write went to $HOME/x.h5ad while the
    check looked at ./~/x.h5ad, so an existing file was replaced without --overwrite."""
    from scdl._cli_files import check_output

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x.h5ad").write_bytes(b"")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output("~/x.h5ad", overwrite=False)


def test_a_slurm_task_of_rank_above_zero_integrates(kang, monkeypatch):
    """`srun` with several tasks makes each process a rank; scvi-tools leaves
    `model.history` None on ranks above 0, and tl.integrate failed reading it."""
    for key, value in {
        "SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "job", "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "1", "SLURM_PROCID": "2",
        "SLURM_LOCALID": "2", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 2)  # read from the variables at import
    adata = kang[::5].copy()  # every sample
    scdl.tl.integrate(adata, batch_key="sample", max_epochs=1, progress_bar=False, n_top_genes=200)
    assert adata.obsm["X_scdl"].shape == (adata.n_obs, 10)
    assert adata.uns["X_scdl"]["params"]["max_epochs"] == 1


def test_a_zip_made_on_windows_loads(tmp_path, monkeypatch, heldout_cells):
    """PowerShell 5.1's Compress-Archive separates folders with backslashes: the annotator's
    files were not found in the archive ("not a pretrained scdl annotator")."""
    monkeypatch.setenv("SCDL_CACHE", str(tmp_path / "cache"))
    posix = _archive("zip", tmp_path)
    windows = tmp_path / "windows.zip"
    with zipfile.ZipFile(posix) as one, zipfile.ZipFile(windows, "w") as z:
        for info in one.infolist():
            z.writestr(info.filename.replace("/", "\\"), one.read(info))
    model = scdl.pretrained.load(windows)
    shipped = scdl.pretrained.load("pbmc_kang2018")
    np.testing.assert_array_equal(model.predict(heldout_cells), shipped.predict(heldout_cells))


@pytest.fixture()
def heldout_cells():
    return scdl.datasets.kang_pbmc_heldout()[:120].copy()


def test_writing_over_the_file_a_backed_anndata_reads_is_refused(tmp_path):
    """Windows refuses to replace an open file (a bare PermissionError); elsewhere the object
    went on reading the deleted copy. The file stays as it was."""
    path = tmp_path / "a.h5ad"
    ad.AnnData(sparse.csr_matrix(np.ones((4, 3)))).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"backed by .*to_memory\(\)"):
        scdl.data.write_h5ad_atomic(backed, path)
    assert path.read_bytes() == before
    backed.file.close()


def test_a_response_table_saved_by_excel_is_named_as_another_encoding(tmp_path):
    """A complete table in cp1252 was blamed on a partial download."""
    if not (DATA / "gdsc_bulk_expression.h5ad").is_file():
        pytest.skip("needs ../shared/data")
    (tmp_path / "gdsc_bulk_expression.h5ad").symlink_to(DATA / "gdsc_bulk_expression.h5ad")
    table = "cell_line_key,drug,dataset,metric,value\nA549,Caf\u00e9ine,GDSC2,ln_ic50,1.0\n"
    (tmp_path / "drug_response_long.csv.gz").write_bytes(gzip.compress(table.encode("cp1252")))
    with pytest.warns(UserWarning, match="not the version scdl was tested with"):
        with pytest.raises(ValueError, match="is not UTF-8 text"):
            scdl.datasets.gdsc(path=tmp_path)


def test_the_mode_of_a_cache_entry_is_read_without_touching_the_umask(
    umask_002, tmp_path, monkeypatch
):
    """The mode a new file gets is read off a probe entry beside it: the umask, which every
    thread of the session shares, was set to 0 to be read (another thread's files made
    meanwhile were world-writable)."""
    from scdl._paths import as_user_created

    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    target = tmp_path / "weights.bin"
    target.write_bytes(b"x")
    os.chmod(target, 0o600)
    folder = tmp_path / "unpacked"
    folder.mkdir(mode=0o700)
    as_user_created(target)
    as_user_created(folder)
    assert calls == []
    assert target.stat().st_mode & 0o777 == 0o664
    assert folder.stat().st_mode & 0o777 == 0o775
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unpacked", "weights.bin"]
