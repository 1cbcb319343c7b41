"""Find a data file locally or download it, always checking its sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from scdl._paths import as_user_created, user_path

_BUNDLED = Path(__file__).parent / "data"


def cache_dir() -> Path:
    """Where downloads go: ``$SCDL_CACHE`` (``~`` expanded), else pooch's per-user cache
    folder for scdl; an empty ``$SCDL_CACHE`` counts as unset, as pooch reads its own."""
    import pooch

    folder = os.environ.get("SCDL_CACHE", "").strip()
    if folder:
        return Path(folder).expanduser()
    try:
        return Path(pooch.os_cache("scdl"))
    except RuntimeError as e:  # platformdirs: no home folder (a container's bare user id)
        raise OSError(
            f"No home folder to keep downloads in ({e}). Set $SCDL_CACHE to a writable "
            "folder (or give a local copy of the file instead of downloading it)."
        ) from e


def sha256sum(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as lowercase hex (read in 1 MiB blocks).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    The 64-character hex digest, as ``sha256sum`` prints it.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def as_sha256(value: str) -> str:
    """A SHA-256 checksum as :func:`~scdl.datasets.sha256sum` prints it: lowercase hex.

    Tools print it in either case (PowerShell's ``Get-FileHash`` and ``certutil`` in
    uppercase); anything but 64 hexadecimal characters is refused.
    """
    digest = str(value).strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(
            f"sha256 must be 64 hexadecimal characters (as `sha256sum FILE` prints), got {value!r}."
        )
    return digest


def fetch_file(
    filename: str,
    *,
    sha256: str,
    url: str | None = None,
    path: str | os.PathLike | None = None,
    mismatch_in_path: str = "raise",
) -> Path:
    """Return a verified local copy of ``filename``.

    Looked up, in order: in the folder ``path`` if given; among the files bundled with
    scdl; in the download cache, downloading from ``url`` with pooch if absent (without a
    ``url``, a file already in the cache is used). The file's sha256 must equal ``sha256``
    wherever it comes from.

    Parameters
    ----------
    filename
        The file's name (in ``path``, among the bundled files, in the cache, and the name it
        is downloaded under).
    sha256
        Its expected SHA-256 (hex, see :func:`sha256sum`; either case).
    url
        Where to download it from when it is not local; ``None``: no download.
    path
        A folder holding the file (e.g. a copy made on a machine with network): it is read
        from there only.
    mismatch_in_path
        What a checksum mismatch of a file in ``path`` does: ``"raise"`` (a ``ValueError``) or
        ``"warn"`` (a ``UserWarning``; the file is read as given, for data tables a user
        built or updated themselves). Bundled, cached and downloaded files always raise.

    Returns
    -------
    The path of the verified file.

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
    if mismatch_in_path not in ("raise", "warn"):
        raise ValueError(f"mismatch_in_path must be 'raise' or 'warn', got {mismatch_in_path!r}.")
    if path is not None:
        candidate = user_path(path) / filename
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
    if digest != as_sha256(sha256) and path is not None and mismatch_in_path == "warn":
        import warnings

        warnings.warn(
            f"{candidate} is not the version scdl was tested with (sha256 {digest}, expected "
            f"{sha256}): read as given (a table you rebuilt, re-compressed or updated; results "
            "may differ from scdl's benchmarks). If it is a partial download, replace it.",
            UserWarning,
            stacklevel=3,
        )
        return candidate
    if digest != as_sha256(sha256):
        raise ValueError(
            f"Checksum mismatch for {candidate}: sha256 {digest}, expected {sha256}. The file "
            "is corrupt or a different version; replace it."
        )
    return candidate


def download(
    url: str, *, sha256: str, folder: Path, fname: str | None = None, offline: str
) -> Path:
    """Download ``url`` into ``folder`` with pooch, which checks its sha256.

    Parameters
    ----------
    url
        The file's address.
    sha256
        Its expected SHA-256 (hex, either case).
    folder
        Where to store it; a file already there with that checksum is not downloaded again.
    fname
        The stored file's name; ``None``: pooch's name from the URL and checksum.
    offline
        What to do without network, said in the error (e.g. "pass the file's folder as
        `path=`").

    Returns
    -------
    The path of the downloaded (or already present) file.

    Raises
    ------
    ValueError
        The download's checksum does not match (the file is deleted), or the URL is not one
        pooch downloads (``http(s)://``, ``ftp://``, ``doi:``).
    OSError
        The download failed (no network, a wrong URL, a server error) or ``folder`` cannot
        be written; the message ends with ``offline``.
    """
    import pooch

    try:
        before = set(folder.iterdir()) if folder.is_dir() else set()
        stored = Path(
            pooch.retrieve(
                url,
                known_hash=f"sha256:{as_sha256(sha256)}",
                fname=fname,
                path=folder,
                progressbar=False,
            )
        )
        if stored not in before:  # pooch's downloads are 0600: unreadable by a shared
            as_user_created(stored)  # cache's group; a file already there is left as it is
        return stored
    except ValueError:  # checksum mismatch: pooch's message names both hashes
        raise
    except (PermissionError, NotADirectoryError, FileExistsError) as e:
        # the cache folder cannot be written: no network would not help
        raise OSError(
            f"Could not store the download of {url} in {folder} ({type(e).__name__}: {e}). "
            "Set $SCDL_CACHE to a writable folder, or " + offline + "."
        ) from e
    except Exception as e:
        raise OSError(
            f"Could not download {url} ({type(e).__name__}: {e}). Without network, {offline}."
        ) from e
