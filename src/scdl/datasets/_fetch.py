"""Find a data file locally or download it, always checking its sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BUNDLED = Path(__file__).parent / "data"


def cache_dir() -> Path:
    """Where downloads go: ``$SCDL_CACHE``, else pooch's per-user cache folder for scdl."""
    import pooch

    return Path(os.environ.get("SCDL_CACHE", pooch.os_cache("scdl")))


def sha256sum(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as lowercase hex (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_file(
    filename: str,
    *,
    sha256: str,
    url: str | None = None,
    path: str | os.PathLike | None = None,
) -> Path:
    """Return a verified local copy of ``filename``.

    Looked up, in order: in the folder ``path`` if given; among the files bundled with
    scdl; in the download cache, downloading from ``url`` with pooch if absent (without a
    ``url``, a file already in the cache is used). The file's sha256 must equal ``sha256``
    wherever it comes from.

    Raises
    ------
    FileNotFoundError
        The file is nowhere local and there is no ``url`` to download it from.
    OSError
        The download failed (no network, a wrong URL); the message says how to pass the
        file locally.
    ValueError
        The file's checksum does not match (corrupt or different file).
    """
    if path is not None:
        candidate = Path(path) / filename
        if not candidate.is_file():
            raise FileNotFoundError(f"{filename!r} not found in {str(path)!r}.")
    elif (_BUNDLED / filename).is_file():
        candidate = _BUNDLED / filename
    elif url is not None:
        return download(
            url,
            sha256=sha256,
            folder=cache_dir(),
            fname=filename,
            offline=f"get {filename!r} elsewhere and pass `path=` naming the folder that holds it",
        )
    elif (cache_dir() / filename).is_file():  # downloaded before
        candidate = cache_dir() / filename
    else:
        raise FileNotFoundError(
            f"{filename!r} is not bundled with scdl and has no download location; pass "
            "`path=` naming a folder that holds it."
        )
    digest = sha256sum(candidate)
    if digest != sha256:
        raise ValueError(
            f"Checksum mismatch for {candidate}: sha256 {digest}, expected {sha256}. The file "
            "is corrupt or a different version; replace it."
        )
    return candidate


def download(
    url: str, *, sha256: str, folder: Path, fname: str | None = None, offline: str
) -> Path:
    """Download ``url`` into ``folder`` with pooch, which checks its sha256 (a mismatching
    download is deleted: ValueError); a failed download (no network, a wrong URL, a server
    error) is an OSError that says what to do instead (``offline``)."""
    import pooch

    try:
        return Path(
            pooch.retrieve(
                url, known_hash=f"sha256:{sha256}", fname=fname, path=folder, progressbar=False
            )
        )
    except ValueError:  # checksum mismatch: pooch's message names both hashes
        raise
    except Exception as e:
        raise OSError(
            f"Could not download {url} ({type(e).__name__}: {e}). Without network, {offline}."
        ) from e
