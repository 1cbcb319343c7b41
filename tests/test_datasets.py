from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from scdl.datasets import fetch_file


def test_kang_bundled(kang):
    assert kang.shape == (1556, 1267)
    assert set(kang.obs["sample"].unique()) == {"ctrl101", "stim101", "ctrl107", "stim107"}
    assert kang.obs["cell_type"].nunique() == 5
    x = kang.X.data
    assert np.all(x == np.round(x)) and x.min() >= 0  # raw counts
    assert "Kang" in kang.uns["provenance"]["study"]


def test_fetch_checks_sha256(tmp_path):
    (tmp_path / "f.txt").write_text("hello")
    good = hashlib.sha256(b"hello").hexdigest()
    assert fetch_file("f.txt", sha256=good, path=tmp_path) == tmp_path / "f.txt"
    with pytest.raises(ValueError, match="Checksum mismatch"):
        fetch_file("f.txt", sha256="0" * 64, path=tmp_path)
    with pytest.raises(FileNotFoundError, match="no download location"):
        fetch_file("absent.h5ad", sha256=good)


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_through_pooch_verifies_hash(http_root, tmp_path, monkeypatch):
    root, url = http_root
    monkeypatch.setenv("SCDL_CACHE", str(tmp_path / "cache"))
    payload = b"real bytes"
    (root / "d.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    got = fetch_file("d.bin", sha256=sha, url=f"{url}/d.bin")
    assert got.read_bytes() == payload and got.parent == tmp_path / "cache"
    (root / "e.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match the known hash"):
        fetch_file("e.bin", sha256=sha, url=f"{url}/e.bin")
    assert not (tmp_path / "cache" / "e.bin").exists()
    # offline later: the cached file is found without the URL
    assert fetch_file("d.bin", sha256=sha) == got
    # a failed download says how to pass the file locally
    with pytest.raises(OSError, match="pass `path=`"):
        fetch_file("absent.bin", sha256=sha, url=f"{url}/absent.bin")


def test_cache_folder_expands_home_and_ignores_an_empty_variable(monkeypatch, tmp_path):
    """``$SCDL_CACHE`` as pooch reads its own variables: ``~`` is the home folder (not a
    folder named "~" in the working one) and an empty value means unset (not the working
    folder)."""
    import pooch

    from scdl.datasets import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SCDL_CACHE", "~/scdl_cache")
    assert cache_dir() == tmp_path / "scdl_cache"
    monkeypatch.setenv("SCDL_CACHE", "")
    assert cache_dir() == Path(pooch.os_cache("scdl"))
